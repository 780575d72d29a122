"""Shadow models trained together: the vmapped training equals the engine training each
model alone on its IN examples, chunks and 8 devices equal one program on 1 device, the
scan and host loops agree, the query logits (and their mirror) are each model's, and a
small end-to-end LiRA finds the members of overfitted shadow models."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import synthetic_host
from jaxprotect import data, models, parallel, train
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.privacy import mia, shadow

N, M, BATCH, EPOCHS = 32, 4, 8, 2
AUGMENT = "crop2,flip"


@pytest.fixture(scope="module")
def host():
  return synthetic_host(image_shape=(8, 8, 3), n=N, test_size=8)


@pytest.fixture(scope="module")
def cnn():
  return models.get("small_cnn", 4, width=4, hidden=16)


# One optimizer object for every test: programs are shared by calls with the same one.
TX = optax.sgd(optax.cosine_decay_schedule(0.05, 8), momentum=0.9)


def _host_subset(host, rows):
  split = data.ArraySplit(images=host.train.images[rows], labels=host.train.labels[rows], ids=host.train.ids[rows])
  return data.HostDataset(name="in", train=split, test=host.test, num_classes=host.num_classes,
                          fingerprint=data.fingerprint(split, host.test))


def test_vmapped_training_equals_the_engine_one_model_at_a_time(host, cnn):
  """Model m of the vmapped program is the engine's run on the split of its IN examples:
  same initial state (fold_in(key, m)), same batches, same augmentation keys."""
  mesh = parallel.make_mesh(1)
  keep = mia.keep_masks(M, N, 0)
  key = jax.random.PRNGKey(7)
  tx = TX
  states, metrics = shadow.train_shadow_models(cnn, data.to_device(host, mesh).train, keep, key, tx, mesh,
                                               epochs=EPOCHS, batch_size=BATCH, augment=AUGMENT, loop="host")
  assert metrics["loss"].shape == (EPOCHS * (N // 2 // BATCH), M)
  assert np.all(np.asarray(states.step) == EPOCHS * (N // 2 // BATCH))
  idx, counts = shadow.in_indices(keep)
  assert np.all(counts == N // 2)
  chunk = train.make_train_chunk(cnn, train.ce_loss(), tx, mesh, BATCH, augment=AugmentConfig.parse(AUGMENT),
                                 loop="host")
  for m in range(M):
    ds = data.to_device(_host_subset(host, idx[m]), mesh)
    state = train.init_state(cnn, tx, ds.example, jax.random.fold_in(key, m), mesh)
    for _ in range(EPOCHS):
      state, _ = chunk(state, ds.train, N // 2 // BATCH)
    mine = jax.tree.map(lambda a: np.asarray(a)[m], states)
    chex.assert_trees_all_close(mine.params, jax.device_get(state.params), rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(mine.opt_state, jax.device_get(state.opt_state), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(mine.rng, np.asarray(state.rng))


def test_chunks_and_8_devices_equal_one_program_on_1_device(host, cnn):
  keep = mia.keep_masks(M, N, 1)
  key = jax.random.PRNGKey(3)
  kwargs = dict(epochs=EPOCHS, batch_size=BATCH, augment=AUGMENT, loop="host", eval_batch_size=16)
  runs = {}
  for devices, per in ((1, 0), (8, 3)):  # 8 devices: chunks of 3 and 1 models, each padded to 8
    mesh = parallel.make_mesh(devices)
    ds = data.to_device(host, mesh)
    chunks = list(shadow.shadow_chunks(cnn, ds.train, keep, key, TX, mesh, models_per_chunk=per, **kwargs))
    runs[devices] = chunks
  assert [(c.start, c.stop) for c in runs[1]] == [(0, M)]
  assert [(c.start, c.stop) for c in runs[8]] == [(0, 3), (3, M)]
  whole = runs[1][0]
  assert whole.logits.shape == (M, 2, N, host.num_classes) and whole.logits.dtype == np.float32
  np.testing.assert_allclose(np.concatenate([c.logits for c in runs[8]]), whole.logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.concatenate([c.loss for c in runs[8]]), whole.loss, rtol=1e-5, atol=1e-6)
  assert whole.loss.shape == whole.accuracy.shape == (M,)
  # resuming at model 3 gives what the whole run gave for it
  mesh = parallel.make_mesh(8)
  rest = list(shadow.shadow_chunks(cnn, data.to_device(host, mesh).train, keep, key, TX, mesh, start=3, **kwargs))
  assert [(c.start, c.stop) for c in rest] == [(3, M)]
  np.testing.assert_allclose(rest[0].logits, whole.logits[3:], rtol=1e-5, atol=1e-5)


def test_queries_are_each_models_logits_and_their_mirror(host, cnn):
  mesh = parallel.make_mesh(8)
  ds = data.to_device(host, mesh)
  keep = mia.keep_masks(2, N, 2)
  states, _ = shadow.train_shadow_models(cnn, ds.train, keep, jax.random.PRNGKey(0), TX, mesh, epochs=1,
                                         batch_size=BATCH, loop="host", start=1)
  assert jax.tree.leaves(states.params)[0].shape[0] == 1
  logits = shadow.shadow_logits(cnn, states, ds.test, mesh, batch_size=5)  # 8 queries: a padded last batch
  assert logits.shape == (1, 2, 8, host.num_classes)
  x = jnp.asarray(host.test.images, jnp.float32) / 255.0
  variables = train.variables_of(jax.tree.map(lambda a: jnp.asarray(a)[0], states))
  for q, images in enumerate((x, x[:, :, ::-1, :])):
    want = cnn.apply(variables, images, train=False)[0]
    np.testing.assert_allclose(np.asarray(logits)[0, q], np.asarray(want), rtol=1e-5, atol=1e-5)
  unflipped = shadow.shadow_logits(cnn, states, ds.test, mesh, batch_size=5, flip=False)
  np.testing.assert_allclose(np.asarray(unflipped)[:, 0], np.asarray(logits)[:, 0], rtol=1e-6, atol=1e-6)
  stats = shadow.shadow_statistics(logits, host.test.labels)
  assert stats.shape == (1, 8, 2) and stats.dtype == np.float64
  np.testing.assert_allclose(stats[0].T, np.asarray(mia.lira_statistic(np.asarray(logits)[0], host.test.labels)),
                             rtol=1e-6)


def test_scan_loop_equals_host_loop(host):
  mlp = models.get("mlp", 4, hidden=(16,))
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  keep = mia.keep_masks(M, N, 4)
  out = {}
  for loop in ("scan", "host"):
    out[loop] = shadow.train_shadow_models(mlp, ds.train, keep, jax.random.PRNGKey(5), TX, mesh, epochs=EPOCHS,
                                           batch_size=BATCH, augment="flip", loop=loop)
  chex.assert_trees_all_close(jax.device_get(out["scan"]), jax.device_get(out["host"]), rtol=1e-5, atol=1e-6)


def test_models_with_different_in_counts_draw_only_their_own_examples():
  rng = jax.random.PRNGKey(0)
  for count in (9, 12):  # 12 = the width: the engine's own epoch
    rows = np.asarray(shadow._positions(rng, jnp.int32(3), jnp.int32(count), 12, 2, 4))
    assert rows.shape == (2, 4) and len(set(rows.ravel())) == 8 and rows.max() < count
  np.testing.assert_array_equal(np.asarray(shadow._positions(rng, jnp.int32(3), jnp.int32(12), 12, 3, 4)),
                                np.asarray(train.epoch_indices(rng, jnp.int32(3), 12, 4)))
  idx, counts = shadow.in_indices(np.array([[1, 0, 1, 1], [0, 1, 0, 0]], bool))
  np.testing.assert_array_equal(idx, [[0, 2, 3], [1, 1, 1]])
  np.testing.assert_array_equal(counts, [3, 1])


def test_lira_finds_the_members_of_overfitted_shadow_models():
  """Random labels: a model can only memorise them, so its members are confident and
  its non-members are not; leave-one-out LiRA over 8 shadow models sees it."""
  host = synthetic_host(image_shape=(6, 6, 1), n=64, test_size=8)
  labels = np.random.default_rng(0).integers(0, 4, 64).astype(np.int32)
  host = data.HostDataset(name="random-labels", train=data.ArraySplit(host.train.images, labels, host.train.ids),
                          test=host.test, num_classes=4, fingerprint="random-labels")
  mesh = parallel.make_mesh(8)
  ds = data.to_device(host, mesh)
  keep = mia.keep_masks(8, 64, 0)
  mlp = models.get("mlp", 4, hidden=(64,))
  (chunk,) = shadow.shadow_chunks(mlp, ds.train, keep, jax.random.PRNGKey(0), optax.adam(0.01), mesh, epochs=40,
                                  batch_size=16, loop="scan", eval_batch_size=64)
  assert np.mean(chunk.accuracy) > 0.8  # mostly memorised
  stats = shadow.shadow_statistics(chunk.logits, labels)
  for attack, low in (("online", 0.85), ("offline", 0.8)):
    scores, members = mia.lira_leave_one_out(stats, keep, attack, fixed_variance=True)
    assert mia.auc(scores, members) > low, attack


def test_input_checks(host, cnn):
  mesh = parallel.make_mesh(1)
  split = data.to_device(host, mesh).train
  keep = mia.keep_masks(M, N, 0)
  run = lambda keep=keep, **kw: shadow.train_shadow_models(  # noqa: E731
      cnn, split, keep, jax.random.PRNGKey(0), TX, mesh, **{"epochs": 1, "batch_size": BATCH, **kw})
  with pytest.raises(ValueError, match=r"keep_MxN: expected one column per example of the split \(32\), "
                                       r"got shape \(4, 31\)"):
    run(keep[:, :31])
  with pytest.raises(ValueError, match="batch_size=17 exceeds the 16 IN examples of model"):
    run(batch_size=17)
  with pytest.raises(ValueError, match=r"start, stop: expected 0 <= start < stop <= 4"):
    run(start=2, stop=2)
  with pytest.raises(ValueError, match="model 1 has no IN example"):
    run(np.array([[True] * N, [False] * N]))
  with pytest.raises(ValueError, match="split: expected a data.DeviceSplit"):
    shadow.train_shadow_models(cnn, host.train, keep, jax.random.PRNGKey(0), TX, mesh, epochs=1, batch_size=BATCH)
  with pytest.raises(ValueError, match="optimizer: expected an optax GradientTransformation"):
    shadow.train_shadow_models(cnn, split, keep, jax.random.PRNGKey(0), "sgd", mesh, epochs=1, batch_size=BATCH)
