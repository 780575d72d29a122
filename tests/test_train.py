"""The training engine: sharded steps equal single-device steps, epochs on device, eval."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import synthetic_host
from jaxprotect import data, losses, models, parallel, train
from jaxprotect.data.augment import AugmentConfig


@pytest.fixture(scope="module")
def host():
  return synthetic_host()


MESH1 = lambda: parallel.make_mesh(1)  # noqa: E731
MESH8 = lambda: parallel.make_mesh(8)  # noqa: E731


def _sgd():
  opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine"))
  return train.make_optimizer(opt, steps_per_epoch=4, epochs=2)


@pytest.mark.parametrize("name,kwargs", [("resnet18", dict(width=4, stage_sizes=(1, 1))),
                                         ("convnet", dict(width=8, depth=2))])
def test_sharded_step_equals_single_device(host, name, kwargs):
  """BatchNorm statistics are over the global batch, so 8 devices compute what 1 does
  (a two-stage ResNet keeps the CPU compile short; the blocks are ResNet-18's)."""
  model = models.get(name, host.num_classes, **kwargs)
  tx = _sgd()
  x = jnp.asarray(host.train.images[:16], jnp.float32) / 255.0
  batch = {"image": x, "label": jnp.asarray(host.train.labels[:16])}
  results = []
  for mesh in (MESH1(), MESH8()):
    state = train.init_state(model, tx, x[:1], jax.random.PRNGKey(0), mesh)
    step = train.make_train_step(model, train.ce_loss(), tx, mesh)
    for _ in range(2):
      state, metrics = step(state, batch)
    results.append((jax.device_get(state), jax.device_get(metrics)))
    assert state.params is not None and len(state.params) > 0
  (s1, m1), (s8, m8) = results
  chex.assert_trees_all_close(s1.params, s8.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.batch_stats, s8.batch_stats, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(m1, m8, rtol=1e-5, atol=1e-6)
  if name == "resnet18":
    assert jax.tree.leaves(s1.batch_stats), "BatchNorm statistics were not updated"
  assert int(s8.step) == 2


def test_epoch_chunks_on_8_devices_equal_1_device_and_compile_once(host):
  """Scan and host loops, replicated and sharded data, 1 and 8 devices: the same training."""
  model = models.get("small_cnn", host.num_classes, width=4)
  tx = _sgd()
  aug = AugmentConfig.parse("crop2,flip")
  finals = []
  cases = ((MESH1(), "replicated", "host"), (MESH8(), "sharded", "host"), (MESH8(), "replicated", "scan"))
  for mesh, layout, loop in cases:
    ds = data.to_device(host, mesh, layout)
    state = train.init_state(model, tx, ds.example, jax.random.PRNGKey(1), mesh)
    # The loss is traced once per trace of the step: more than one would be a recompile.
    chex.clear_trace_counter()
    loss_fn = chex.assert_max_traces(train.ce_loss(), n=1)
    chunk = train.make_train_chunk(model, loss_fn, tx, mesh, batch_size=16, augment=aug, loop=loop)
    for _ in range(4):  # two epochs of two chunks of two steps
      state, m = chunk(state, ds.train, 2)
    assert chunk._cache_size() == 1  # no recompilation across chunks and epochs
    assert m["loss"].shape == (2,)
    finals.append(jax.device_get(state))
  assert int(finals[0].step) == 8
  chex.assert_trees_all_close(finals[0].params, finals[1].params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(finals[0].params, finals[2].params, rtol=1e-5, atol=1e-6)


def test_epoch_visits_every_example_once(host):
  idx = np.asarray(train.epoch_indices(jax.random.PRNGKey(3), jnp.int32(5), 64, 16))
  assert idx.shape == (4, 16)
  assert sorted(idx.ravel().tolist()) == list(range(64))
  other = np.asarray(train.epoch_indices(jax.random.PRNGKey(3), jnp.int32(6), 64, 16))
  assert not np.array_equal(idx, other)  # a new order every epoch


def test_eval_matches_direct_computation_with_padded_last_batch(host):
  mesh = MESH8()
  ds = data.to_device(host, mesh)
  model = models.get("mlp", host.num_classes)
  state = train.init_state(model, optax.sgd(0.1), ds.example, jax.random.PRNGKey(2), mesh)
  metrics = jax.device_get(train.make_eval_fn(model, mesh, batch_size=8, num_classes=host.num_classes)(state, ds.test))
  x = jnp.asarray(host.test.images, jnp.float32) / 255.0
  logits, _ = model.apply({"params": state.params}, x, train=False)
  y = host.test.labels
  np.testing.assert_allclose(metrics["loss"], np.mean(losses.cross_entropy(logits, y)), rtol=1e-5)
  pred = np.asarray(jnp.argmax(logits, -1))
  np.testing.assert_allclose(metrics["accuracy"], np.mean(pred == y), rtol=1e-6)
  for k in range(host.num_classes):
    np.testing.assert_allclose(metrics["class_accuracy"][k], np.mean(pred[y == k] == k), rtol=1e-6)


def test_schedules_and_bad_names():
  opt = ml_collections.ConfigDict(dict(lr=1.0, schedule="multistep", milestones=(1, 2), gamma=0.1, warmup_epochs=0))
  sched = train.make_schedule(opt, steps_per_epoch=10, epochs=3)
  np.testing.assert_allclose([sched(0), sched(9), sched(10), sched(20)], [1.0, 1.0, 0.1, 0.01], rtol=1e-6)
  opt = ml_collections.ConfigDict(dict(lr=1.0, schedule="cosine", warmup_epochs=1))
  sched = train.make_schedule(opt, steps_per_epoch=10, epochs=3)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(30)], [0.0, 0.5, 1.0, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="poly"):
    train.make_schedule(ml_collections.ConfigDict(dict(lr=1.0, schedule="poly")), 10, 3)
  with pytest.raises(ValueError, match="lamb"):
    train.make_optimizer(ml_collections.ConfigDict(dict(name="lamb", lr=1.0, schedule="constant")), 10, 3)


def test_label_smoothing_matches_formula():
  logits = jnp.asarray([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  y = jnp.asarray([0, 1])
  eps = 0.2
  logp = np.asarray(jax.nn.log_softmax(logits))
  target = (1 - eps) * np.eye(3)[[0, 1]] + eps / 3
  np.testing.assert_allclose(losses.cross_entropy(logits, y, eps), -(target * logp).sum(-1), rtol=1e-6)
  np.testing.assert_allclose(losses.cross_entropy(logits, y), -logp[[0, 1], [0, 1]], rtol=1e-6)


def test_stateful_loss_and_batch_hook_on_8_devices_equal_1_device(host):
  """``extra`` is updated from the global batch and ``aux`` reaches the batch hook: the
  state after two chunks is the same on 1 and 8 devices, and ``extra`` equals its
  definition (a running sum of per-class mean logits plus the hook's offset)."""
  model = models.get("mlp", host.num_classes, hidden=(16,))
  tx = _sgd()
  k = host.num_classes

  @train.stateful
  def loss_fn(outputs, batch, extra):
    logits, _ = outputs
    onehot = jax.nn.one_hot(batch["label"], k)
    class_mean = (onehot.T @ logits) / jnp.maximum(onehot.sum(0), 1.0)[:, None]
    new = {"sums": extra["sums"] + class_mean + batch["offset"], "steps": extra["steps"] + 1}
    return losses.cross_entropy(logits, batch["label"]), new

  def batch_fn(aux, batch):
    return {**batch, "offset": aux["offset"]}

  finals = []
  for mesh in (MESH1(), MESH8()):
    ds = data.to_device(host, mesh)
    extra = {"sums": jnp.zeros((k, k)), "steps": jnp.zeros((), jnp.int32)}
    state = train.init_state(model, tx, ds.example, jax.random.PRNGKey(4), mesh, extra=extra)
    chunk = train.make_train_chunk(model, loss_fn, tx, mesh, batch_size=16, loop="host", batch_fn=batch_fn)
    for _ in range(2):
      state, _ = chunk(state, ds.train, 2, {"offset": jnp.float32(0.5)})
    finals.append(jax.device_get(state))
  assert int(finals[0].extra["steps"]) == 4
  chex.assert_trees_all_close(finals[0].extra, finals[1].extra, rtol=1e-5, atol=1e-5)
  chex.assert_trees_all_close(finals[0].params, finals[1].params, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(finals[0].extra["sums"]) != 0.0)
