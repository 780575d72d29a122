"""The order of the PGD passes: batch-coupled objectives (MI-UE) visit the training set in
a new permutation every outer iteration, sample-separable ones (EM) in the fixed order;
every order updates each example exactly once; a killed MI-UE craft resumes to the same
perturbation."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import killed_and_whole_crafts, synthetic_host
from jaxprotect import data, models, parallel
from jaxprotect.unlearnable import crafting, pgd, poison_io

REPO = pathlib.Path(__file__).resolve().parents[1]
MI_UE = str(REPO / "experiments" / "mi_ue.py")


def _check_visits(pos, mask, n):
  """Each example updated exactly once (the masked entries), and every unmasked entry of a
  row an example an earlier row already updated (context only)."""
  pos, mask = np.asarray(pos), np.asarray(mask)
  assert sorted(pos[mask].tolist()) == list(range(n))
  seen = set()
  for row, m in zip(pos, mask):
    assert not seen & set(row[m].tolist())
    assert set(row[~m].tolist()) <= seen
    seen |= set(row[m].tolist())


@pytest.mark.parametrize("n,b", [(10, 4), (8, 4), (64, 16), (203, 64)])
def test_permuted_pass_rows_cover_every_example_once_with_the_first_visit_mask(n, b):
  fixed_pos, fixed_mask = pgd.pass_rows(n, b)
  _check_visits(fixed_pos, fixed_mask, n)
  orders = []
  for it in range(3):
    pos, mask = pgd.pass_rows(n, b, crafting.order_key(0, it))
    assert pos.shape == fixed_pos.shape and pos.dtype == jnp.int32
    np.testing.assert_array_equal(mask, fixed_mask)  # the mask is a property of the slots, not of the order
    _check_visits(pos, mask, n)
    orders.append(np.asarray(pos))
  assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
  assert not np.array_equal(orders[0], np.asarray(fixed_pos))
  # the same key, the same order (what resuming after a kill relies on)
  np.testing.assert_array_equal(pgd.pass_rows(n, b, crafting.order_key(0, 1))[0], orders[1])
  assert not np.array_equal(pgd.pass_rows(n, b, crafting.order_key(1, 1))[0], orders[1])  # the seed enters


def test_objectives_say_whether_they_couple_the_batch_and_reshuffle_follows():
  assert pgd.per_example(pgd.error_minimizing_objective())
  assert not pgd.per_example(pgd.mi_ue_objective())
  assert not pgd.per_example(lambda outputs, batch: 0.0)  # unknown: treated as batch-coupled
  c = crafting.unlearnable_config()
  assert c.craft.reshuffle == "auto"
  for method, mode, want in (("em", "sample", False), ("em", "class", False), ("mi_ue", "sample", True)):
    c.craft.method, c.craft.mode = method, mode
    assert crafting.reshuffles(c) is want, (method, mode)
    for setting, forced in (("always", True), ("never", False)):
      c.craft.reshuffle = setting
      assert crafting.reshuffles(c) is forced
    c.craft.reshuffle = "auto"
  c.craft.reshuffle = "sometimes"
  with pytest.raises(ValueError, match=r"craft\.reshuffle: unknown value 'sometimes'"):
    crafting.validate(c)


@pytest.fixture(scope="module")
def host():
  return synthetic_host((8, 8, 1), std=40.0, test_size=16, first_id=100, n=72)


def test_the_sample_wise_pass_visits_the_rows_of_its_order_key(host):
  """Host and scan passes with an order key equal a loop written out over
  ``pass_rows(N, B, key)`` (72 examples, batches of 16: a partial last batch); the MI-UE
  result depends on the order, EM's (sample-separable) does not, and without a key the
  pass is the fixed-order one."""
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  model = models.get("mlp", ds.num_classes, hidden=(16,))
  variables = models.init_variables(model, jax.random.PRNGKey(3), ds.example)
  x = ds.train.images.astype(jnp.float32) / 255.0
  eps, alpha = np.float32(0.2), np.float32(0.05)
  delta = pgd.init_delta(jax.random.PRNGKey(1), (ds.train.size, *ds.train.image_shape), eps, ds.train.images)
  split = ds.train.replace(delta=delta, delta_mode="sample")
  k1, k2 = crafting.order_key(0, 0), crafting.order_key(0, 1)
  results = {}
  for name, objective in (("mi_ue", pgd.mi_ue_objective()), ("em", pgd.error_minimizing_objective())):
    host_pass = pgd.make_samplewise_pass(model, objective, mesh, 16, 2, loop="host")
    scan_pass = pgd.make_samplewise_pass(model, objective, mesh, 16, 2, loop="scan")
    got = {key_name: host_pass(variables, split, eps, alpha, order_key=k) for key_name, k in
           (("fixed", None), ("k1", k1), ("k2", k2))}
    np.testing.assert_allclose(scan_pass(variables, split, eps, alpha, order_key=k1), got["k1"], rtol=0, atol=1e-6)
    batch_pgd = pgd.make_batch_pgd(model, objective, 2)
    for key_name, k in (("fixed", None), ("k1", k1)):
      pos_rows, mask_rows = pgd.pass_rows(ds.train.size, 16, k)
      want = delta
      for pos, mask in zip(np.asarray(pos_rows), np.asarray(mask_rows)):
        new = pgd.project_u8(batch_pgd(variables, x[pos], ds.train.labels[pos], want[pos], eps, alpha),
                             ds.train.images[pos], eps)
        want = want.at[pos[mask]].set(new[mask])
      np.testing.assert_allclose(got[key_name], want, rtol=0, atol=1e-6)
    results[name] = got
  moved = lambda a, b: float(jnp.mean(jnp.abs(a - b) > 1e-3))  # noqa: E731
  assert moved(results["mi_ue"]["k1"], results["mi_ue"]["k2"]) > 0.05  # the batch-mates matter to MI-UE
  assert moved(results["mi_ue"]["k1"], results["mi_ue"]["fixed"]) > 0.05
  for other in ("k1", "k2"):  # ... not to EM: each example's update is its own
    np.testing.assert_allclose(results["em"][other], results["em"]["fixed"], rtol=0, atol=1e-6)


def _tiny(method="mi_ue", mode="sample"):
  c = crafting.unlearnable_config()
  s, k = c.surrogate, c.craft
  k.method, k.mode = method, mode
  s.model, s.model_kwargs.hidden = "mlp", (16,)
  s.batch_size, s.eval_batch_size, s.loop = 16, 16, "host"
  k.pgd.batch_size, k.pgd.steps, k.pgd.step_size = 16, 2, 2 / 255
  k.train_steps, k.max_iterations, k.stop_error = 3, 3, 0.0
  k.class_subset = 0.5
  c.runtime.progress, c.runtime.tensorboard, c.runtime.checkpoint.async_save = False, False, False
  c.export.preview = False
  return c


def test_em_crafts_in_the_fixed_order_and_mi_ue_reshuffles_unless_told_never(host, tmp_path):
  """EM under "auto" crafts bitwise what "never" crafts; MI-UE under "auto" crafts what
  "always" crafts and something else than "never" (the fixed order of earlier runs)."""
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)

  def delta(method, reshuffle):
    c = _tiny(method)
    c.craft.reshuffle = reshuffle
    r = crafting.craft(c, tmp_path / f"{method}_{reshuffle}", mesh, ds)
    return poison_io.load_poison(r["poison"]).delta

  np.testing.assert_array_equal(delta("em", "auto"), delta("em", "never"))
  auto = delta("mi_ue", "auto")
  np.testing.assert_array_equal(auto, delta("mi_ue", "always"))
  assert np.mean(np.abs(auto - delta("mi_ue", "never")) > 1e-3) > 0.05


MI_UE_ARGS = [
    "--config", MI_UE + ":fashion_mnist_mini", "--config.data.train_subset=200", "--config.surrogate.model=mlp",
    "--config.surrogate.batch_size=64", "--config.surrogate.eval_batch_size=200", "--config.craft.pgd.batch_size=64",
    "--config.craft.pgd.steps=2", "--config.craft.max_iterations=4", "--config.runtime.progress=False",
    "--config.runtime.num_devices=1", "--config.export.preview=False",
]


@pytest.mark.slow
def test_killed_mi_ue_craft_resumes_to_identical_perturbations(tmp_path):
  """MI-UE with its reshuffled passes (200 examples in PGD batches of 64: a partial last
  batch), killed after outer iteration 2 and resumed, crafts bitwise the perturbation and
  surrogate of an uninterrupted run: the pass orders come from the seed and the iteration."""
  (a, b), (ra, rb) = killed_and_whole_crafts(MI_UE_ARGS, tmp_path)
  assert a.manifest["config"]["craft"]["reshuffle"] == "auto" and a.manifest["method"] == "mi_ue"
  np.testing.assert_array_equal(a.delta, b.delta)
  assert np.abs(a.delta).max() > 0  # crafted
  assert ra["surrogate_params_sha256"] == rb["surrogate_params_sha256"]
  logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert logged == [1, 2, 3, 4]
