"""Unlearnable examples: PGD bounds, crafting on 8 devices = 1 device, kill-and-resume,
poison files (checked loading, exports), and the effect of EM noise on real data."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import killed_and_whole_crafts, load_script, synthetic_host
from jaxprotect import config as config_lib, data, models, parallel, unlearnable
from jaxprotect.cli import main as cli_main
from jaxprotect.data.augment import AugmentConfig, augment_batch
from jaxprotect.unlearnable import crafting, pgd, poison_io, victims

REPO = pathlib.Path(__file__).resolve().parents[1]
EM = str(REPO / "experiments" / "em.py")


def test_pgd_steps_stay_in_the_eps_ball_and_the_pixel_range():
  """Property test over random images (with saturated pixels), gradients, eps and steps."""
  rng = np.random.default_rng(0)
  step = jax.jit(pgd.sign_descent)
  init = jax.jit(pgd.init_delta, static_argnums=(1,))
  shapes = [(3, 5, 4, 1), (2, 6, 6, 3), (1, 3, 5, 2)]
  for trial in range(60):
    shape = shapes[trial % 3]
    x_u8 = rng.choice([0, 255, 128], size=shape) if trial % 4 == 0 else rng.integers(0, 256, shape)
    x_u8 = jnp.asarray(x_u8, jnp.uint8)
    x = x_u8.astype(jnp.float32) / 255.0
    eps = np.float32(rng.choice([1 / 255, 4 / 255, 8 / 255, 16 / 255, 0.5]))
    alpha = np.float32(rng.uniform(0.1, 2.0) * eps)
    d = init(jax.random.PRNGKey(trial), shape, eps, x_u8)
    for _ in range(3):
      assert float(jnp.max(jnp.abs(d))) <= eps
      assert float(jnp.min(x + d)) >= -1e-6 and float(jnp.max(x + d)) <= 1 + 1e-6
      g = jnp.asarray(rng.normal(size=shape) * (rng.uniform(size=shape) > 0.2), jnp.float32)
      d = step(d, g, x, eps, alpha)
  # the step descends: a gradient of +1 moves delta down by alpha where the box allows
  x = jnp.full((1, 2, 2, 1), 0.5)
  d = pgd.sign_descent(jnp.zeros_like(x), jnp.ones_like(x), x, 0.1, 0.03)
  np.testing.assert_allclose(d, -0.03, rtol=1e-6)


def test_pass_rows_cover_every_example_once():
  pos, mask = pgd.pass_rows(10, 4)
  assert pos.shape == (3, 4)
  assert sorted(np.asarray(pos)[np.asarray(mask)].tolist()) == list(range(10))
  pos, mask = pgd.pass_rows(8, 4)
  assert pos.shape == (2, 4) and bool(jnp.all(mask))


@pytest.fixture(scope="module")
def host():
  return synthetic_host((8, 8, 1), std=40.0, test_size=16, first_id=100)


def test_clean_augment_moves_the_image_under_a_fixed_perturbation(host):
  """MI-UE's post-augmentation crafting: batches and PGD passes see augment(x) + delta.
  Checked against the formula built from the public pieces; host and scan passes agree;
  the stored perturbation stays valid for the unaugmented images."""
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  flip = AugmentConfig.parse("flip")
  eps = np.float32(0.2)
  delta = pgd.init_delta(jax.random.PRNGKey(1), (ds.train.size, *ds.train.image_shape), eps, ds.train.images)
  split = ds.train.replace(delta=delta, delta_mode="sample", clean_augment=flip)
  x = ds.train.images.astype(jnp.float32) / 255.0
  # A batch: the clean images are flipped under the perturbation, then the victim's augmentation (none here).
  idx = jnp.arange(16)
  key = jax.random.PRNGKey(2)
  batch = data.batch_from(split, key, idx, AugmentConfig())
  x_aug = augment_batch(jax.random.split(key)[1], x[idx], flip)
  np.testing.assert_array_equal(batch["image"], jnp.clip(x_aug + delta[idx], 0.0, 1.0))
  flipped = np.asarray(jnp.any(x_aug != x[idx], axis=(1, 2, 3)))
  assert 0 < flipped.sum() < 16  # some images moved, some did not
  # The PGD pass, against a loop over its batches written out here.
  model = models.get("mlp", ds.num_classes, hidden=(16,))
  variables = models.init_variables(model, jax.random.PRNGKey(3), ds.example)
  objective = pgd.error_minimizing_objective()
  alpha, pkey = np.float32(0.05), jax.random.PRNGKey(4)
  host_pass = pgd.make_samplewise_pass(model, objective, mesh, 16, 3, loop="host")
  scan_pass = pgd.make_samplewise_pass(model, objective, mesh, 16, 3, loop="scan")
  got = host_pass(variables, split, eps, alpha, pkey)
  np.testing.assert_allclose(scan_pass(variables, split, eps, alpha, pkey), got, rtol=0, atol=1e-6)
  batch_pgd = pgd.make_batch_pgd(model, objective, 3)
  want = delta
  for r, pos in enumerate(np.asarray(pgd.pass_rows(ds.train.size, 16)[0])):
    xb = x[pos]
    xb_aug = augment_batch(jax.random.fold_in(pkey, r), xb, flip)
    want = want.at[pos].set(batch_pgd(variables, xb_aug, ds.train.labels[pos], want[pos], eps, alpha, x_also=xb))
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
  plain = host_pass(variables, split.replace(clean_augment=AugmentConfig()), eps, alpha)
  assert float(jnp.mean(jnp.abs(plain - got) > 1e-3)) > 0.05  # the augmentation changed the noise
  assert float(jnp.max(jnp.abs(got))) <= eps
  assert float(jnp.min(x + got)) >= -1e-6 and float(jnp.max(x + got)) <= 1 + 1e-6
  with pytest.raises(ValueError, match="needs a key"):
    host_pass(variables, split, eps, alpha)


def _tiny_config(method="em", mode="sample"):
  c = crafting.unlearnable_config()
  s, k = c.surrogate, c.craft
  k.method, k.mode = method, mode
  s.model, s.model_kwargs.hidden = "mlp", (16,)
  s.batch_size, s.eval_batch_size = 16, 16
  k.pgd.batch_size, k.pgd.steps = 16, 2
  k.train_steps, k.max_iterations, k.stop_error = 3, 2, 0.0
  k.class_subset = 0.5
  c.runtime.progress, c.runtime.tensorboard = False, False
  c.export.preview = False
  c.runtime.checkpoint.async_save = False
  s.loop = "host"
  return c


@pytest.mark.parametrize("mode", ["sample", "class"])
def test_random_method_writes_uniform_noise_without_crafting(host, tmp_path, mode):
  """``method="random"``, the papers' control: the initial uniform noise, no surrogate
  steps, within eps (and the pixel range, sample-wise), the same for the same seed."""
  c = _tiny_config("random", mode)
  c.craft.eps = 0.25
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  r = [crafting.craft(c, tmp_path / f"r{i}", mesh, ds) for i in range(2)]
  assert r[0]["iterations"] == 0 and r[0]["perturbed_train_accuracy"] is None
  d = [poison_io.load_poison(x["poison"]).delta for x in r]
  np.testing.assert_array_equal(d[0], d[1])
  assert d[0].shape == ((64 if mode == "sample" else 4), 8, 8, 1)
  assert np.abs(d[0]).max() <= np.float32(c.craft.eps) and np.abs(d[0]).mean() > 0.3 * c.craft.eps
  if mode == "sample":
    x = np.asarray(jax.device_get(ds.train.images), np.float32) / 255.0
    assert (x + d[0]).min() >= -1e-6 and (x + d[0]).max() <= 1 + 1e-6
  # No surrogate: nothing trained, checkpointed or logged.
  assert r[0]["surrogate_params_sha256"] is None and r[0]["clean_train_accuracy"] is None
  assert not any((tmp_path / "r0" / f).exists() for f in ("metrics.jsonl", "checkpoints"))


@pytest.mark.parametrize("method,mode,layout,loop", [
    ("em", "sample", "sharded", "scan"), ("em", "class", "replicated", "host"),
    ("mi_ue", "sample", "replicated", "host"), ("mi_ue", "sample", "sharded", "scan"),
])
def test_crafting_on_8_devices_equals_1_device(host, tmp_path, method, mode, layout, loop):
  c = _tiny_config(method, mode)
  c.craft.pgd.loop = loop
  c.data.layout = layout
  if method == "mi_ue":  # the reference's post-augmentation crafting, from a zero perturbation
    c.craft.clean_augment, c.craft.delta_init = "flip", "zeros"
    c.craft.pgd.step_size = 2 / 255  # 2 iterations x 2 steps can reach eps from zero
  deltas, results = [], []
  for n in (1, 8):
    mesh = parallel.make_mesh(n)
    r = crafting.craft(c, tmp_path / f"d{n}", mesh, data.to_device(host, mesh, layout))
    deltas.append(poison_io.load_poison(r["poison"]).delta)
    results.append(r)
  want = (64 if mode == "sample" else 4, 8, 8, 1)
  assert deltas[0].shape == want
  assert np.abs(deltas[0]).max() <= np.float32(c.craft.eps)
  assert np.abs(deltas[0]).max() > 0.5 * c.craft.eps  # PGD moved the noise
  # Sign steps amplify float noise only where a gradient is ~0: demand near-total agreement.
  close = np.isclose(deltas[0], deltas[1], rtol=0, atol=1e-6)
  assert close.mean() > 0.999, close.mean()
  assert results[0]["iterations"] == results[1]["iterations"] == 2


def test_bad_crafting_configs_are_refused(host, tmp_path):
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  for field, value, match in (("method", "tap", r"craft\.method: unknown unlearnable method 'tap'"),
                              ("mode", "pixel", r"craft\.mode: unknown perturbation mode"),
                              ("eps", 0.0, r"craft\.eps must be in \(0, 1\]"),
                              ("max_iterations", 0, r"craft\.max_iterations must be >= 1")):
    c = _tiny_config()
    c.craft[field] = value
    with pytest.raises(ValueError, match=match):
      crafting.craft(c, tmp_path / field, mesh, ds)
  c = _tiny_config("mi_ue", "class")
  with pytest.raises(ValueError, match=r"MI-UE crafts sample-wise perturbations \(craft\.mode='sample'\)"):
    crafting.craft(c, tmp_path / "miue", mesh, ds)
  c = _tiny_config("em", "class")
  c.craft.clean_augment = "flip"
  with pytest.raises(ValueError, match=r"craft\.clean_augment needs sample-wise"):
    crafting.craft(c, tmp_path / "clean_augment", mesh, ds)
  c = _tiny_config()
  c.craft.delta_init = "gaussian"
  with pytest.raises(ValueError, match="unknown delta_init"):
    crafting.craft(c, tmp_path / "init", mesh, ds)
  c = _tiny_config()
  c.surrogate.batch_size = 128
  with pytest.raises(ValueError, match=r"surrogate\.batch_size=128 exceeds the 64 training examples"):
    crafting.craft(c, tmp_path / "batch", mesh, ds)
  # A field of the old flat schema is named with the nearest field of the new one.
  loose = ml_collections.ConfigDict(_tiny_config().to_dict())
  loose.craft.epss = 0.1
  with pytest.raises(ValueError, match=r"unknown config field config\.craft\.epss; did you mean config\.craft\.eps"):
    crafting.craft(loose, tmp_path / "loose", mesh, ds)
  assert not any((tmp_path / d).exists() for d in ("method", "mode", "eps", "miue", "batch", "loose"))


def test_poison_files_are_checked_and_exported(host, tmp_path):
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  delta = np.asarray(pgd.init_delta(jax.random.PRNGKey(0), (64, 8, 8, 1), 8 / 255, ds.train.images))
  c = _tiny_config()
  c.surrogate.seed = 7
  manifest = poison_io.save_poison(tmp_path / "p", delta, "sample", ds, config=c)
  assert manifest["dataset"]["fingerprint"] == ds.fingerprint and manifest["eps"] == c.craft.eps
  assert (manifest["method"], manifest["mode"], manifest["seed"]) == ("em", "sample", 7)
  p = poison_io.load_poison(tmp_path / "p", ds)
  np.testing.assert_array_equal(p.delta, delta)
  np.testing.assert_array_equal(p.ids, host.train.ids)

  # exports: the npz loads as a dataset whose images are the rounded poisoned images
  path = poison_io.export_npz(tmp_path / "poisoned.npz", ds, p)
  loaded = data.load_arrays(str(path))
  want = np.round(np.clip(host.train.images / 255.0 + delta, 0, 1) * 255).astype(np.uint8)
  assert np.abs(loaded.train.images.astype(int) - want.astype(int)).max() <= 1
  # exactly the images a victim trains on, rounded: the device's float32 gather of the split
  split = ds.train.replace(delta=jnp.asarray(delta), delta_mode="sample")
  on_device, _ = jax.jit(lambda s: s.gather(jnp.arange(s.size)))(split)
  np.testing.assert_array_equal(loaded.train.images, np.asarray(jnp.round(on_device * 255.0), np.uint8))
  np.testing.assert_array_equal(loaded.train.ids, host.train.ids)
  png = poison_io.export_png(tmp_path / "png", ds, p)
  assert len(list(png.glob("*/*.png"))) == 64 and sorted(q.name for q in png.iterdir()) == ["0", "1", "2", "3"]

  # partial poisoning: only the chosen fraction is perturbed, class noise is expanded per example
  half = poison_io.apply(ds, p, fraction=0.25, seed=1)
  rows = np.abs(np.asarray(half.train.delta)).reshape(64, -1).max(1) > 0
  assert rows.sum() == 16 and half.fingerprint != ds.fingerprint
  cls = poison_io.save_poison(tmp_path / "c", delta[:4], "class", ds, config=c)
  assert cls["mode"] == "class"
  cp = poison_io.apply(ds, poison_io.load_poison(tmp_path / "c", ds), fraction=0.5)
  assert cp.train.delta_mode == "sample" and cp.train.delta.shape == (64, 8, 8, 1)
  np.testing.assert_array_equal(poison_io.poisoned_images(ds, poison_io.load_poison(tmp_path / "c", ds)),
                                poison_io.quantized_images(host.train.images, delta[:4][host.train.labels], "round"))

  # refusals: another dataset, a modified file, a missing poison
  other = data.to_device(data.subset(host, 32), mesh)
  with pytest.raises(ValueError, match="crafted on"):
    poison_io.load_poison(tmp_path / "p", other)
  raw = (tmp_path / "p" / "delta.npy").read_bytes()
  (tmp_path / "p" / "delta.npy").write_bytes(raw[:-8])
  with pytest.raises(ValueError, match="SHA-256"):
    poison_io.load_poison(tmp_path / "p")
  with pytest.raises(ValueError, match="no poison"):
    poison_io.load_poison(tmp_path / "nowhere")


def _hash_after(overrides, phase="craft"):
  c = config_lib.apply_overrides(crafting.unlearnable_config(), overrides)
  return crafting.crafting_hash(c) if phase == "craft" else config_lib.phase_hash(c, victims.VICTIM_SECTIONS)


def test_each_phase_hashes_only_its_own_sections():
  """Crafting hashes data, surrogate and craft (and a user's module); a victim data and
  victim. Neither hashes runtime or data.dir: a resumed run may change them."""
  craft0, victim0 = _hash_after([]), _hash_after([], "victim")
  assert craft0 != victim0
  not_crafting = ["victim.epochs=3", "victim.model=mlp", "victim.seed=1", "evaluate.poison=/p", "evaluate.seed=5",
                  "evaluate.poison_fraction=0.5", "evaluate.clean=false", "evaluate.clean_workdir=/c",
                  "export.png=true", "export.preview=false", "runtime.num_devices=1", "runtime.progress=false",
                  "runtime.tensorboard=false", "runtime.checkpoint.every_iterations=5", "runtime.checkpoint.keep=1",
                  "data.dir=/elsewhere"]
  crafting_fields = ["craft.eps=0.1", "surrogate.seed=1", "surrogate.model=mlp", "surrogate.optimizer.lr=0.01",
                     "surrogate.model_kwargs.width=8", "craft.pgd.steps=3", "craft.method=mi_ue",
                     "craft.mi_ue.temperature=0.5", "data.train_subset=100", "data.name=cifar10"]
  for o in not_crafting:
    assert _hash_after([o]) == craft0, o
  for o in crafting_fields:
    assert _hash_after([o]) != craft0, o
  not_victim = [o for o in not_crafting if not o.startswith("victim.")] + [
      o for o in crafting_fields if not o.startswith("data.")]
  for o in not_victim:
    assert _hash_after([o], "victim") == victim0, o
  for o in ("victim.epochs=3", "victim.seed=1", "victim.optimizer.lr=0.01", "data.train_subset=100"):
    assert _hash_after([o], "victim") != victim0, o
  # A user's surrogate module enters the crafting hash by its repr (bare or wrapped alike).
  c = crafting.unlearnable_config()
  module = models.get("mlp", 4, hidden=(16,))
  assert crafting.crafting_hash(c, module) == crafting.crafting_hash(c, models.as_model(module)) != craft0
  assert crafting.crafting_hash(c, module) != crafting.crafting_hash(c, models.get("mlp", 4, hidden=(8,)))


def test_craft_resumes_under_new_victim_settings_and_refuses_new_crafting_settings(host, tmp_path):
  """The checkpoints of a finished craft record the crafting hash: a config whose victim,
  evaluate, export or runtime sections changed reuses them (nothing crafted again, the
  same perturbations); one whose craft.eps or surrogate.seed changed is refused before
  anything is written."""
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  c = _tiny_config()
  first = crafting.craft(c, tmp_path / "run", mesh, ds)
  assert first["config_hash"] == crafting.crafting_hash(c)
  log = (tmp_path / "run" / "metrics.jsonl").read_text()
  assert [json.loads(line)["step"] for line in log.splitlines()] == [1, 2]
  d = _tiny_config()
  d.victim.epochs, d.evaluate.poison_fraction, d.evaluate.seed = 1, 0.5, 3
  d.runtime.checkpoint.every_iterations, d.runtime.tensorboard = 7, True
  again = crafting.craft(d, tmp_path / "run", mesh, ds)
  assert again["delta_sha256"] == first["delta_sha256"]
  assert again["surrogate_params_sha256"] == first["surrogate_params_sha256"]
  assert (tmp_path / "run" / "metrics.jsonl").read_text() == log  # resumed at the end: nothing re-crafted
  manifest = json.loads((tmp_path / "run" / "poison" / "manifest.json").read_text())
  assert set(manifest["config"]) == set(crafting.CRAFTING_SECTIONS) and manifest["seed"] == 0
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  for field, value in (("eps", 0.1), ("seed", 5)):
    e = _tiny_config()
    (e.craft if field == "eps" else e.surrogate)[field] = value
    with pytest.raises(ValueError, match="config hash"):
      crafting.craft(e, tmp_path / "run", mesh, ds)
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == saved  # the refused run wrote nothing


CRAFT_ARGS = [
    "--config", EM + ":fashion_mnist_mini", "--config.data.train_subset=256", "--config.surrogate.model=mlp",
    "--config.surrogate.batch_size=64", "--config.craft.pgd.batch_size=64",
    "--config.craft.pgd.steps=2", "--config.craft.train_steps=3", "--config.craft.max_iterations=4",
    "--config.craft.stop_error=0.0", "--config.runtime.progress=False", "--config.runtime.num_devices=1",
    "--config.surrogate.eval_batch_size=256",
]


@pytest.mark.slow
def test_killed_craft_resumes_to_identical_perturbations(tmp_path):
  (a, b), (ra, rb) = killed_and_whole_crafts(CRAFT_ARGS, tmp_path)
  np.testing.assert_array_equal(a.delta, b.delta)
  assert ra["surrogate_params_sha256"] == rb["surrogate_params_sha256"]
  logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert logged == [1, 2, 3, 4]


@pytest.mark.slow
def test_em_noise_is_error_minimizing_on_real_data_and_victims_are_evaluated(tmp_path):
  """On 1,000 real Fashion-MNIST images: crafting reaches the stop rule (surrogate error
  on the perturbed set < 1%) and the noise carries what the surrogate relies on (its
  accuracy drops by >= 5 points when the same images are shown clean); ``poison
  --export=npz`` and ``evaluate`` run end to end and report both victims.

  (Victims trained on this poison are *not* asserted to fail: on Fashion-MNIST, at eps
  8/255, we measured no drop for small CNN and MLP victims -- see the issue notes.)
  """
  common = ["--config", EM + ":fashion_mnist_mini", "--config.data.train_subset=1000",
            "--config.runtime.num_devices=1", "--config.runtime.progress=False", "--config.surrogate.model=mlp",
            "--config.surrogate.batch_size=32", "--config.craft.train_steps=5", "--config.craft.pgd.batch_size=250",
            "--config.craft.pgd.steps=10", "--config.craft.max_iterations=60", "--config.victim.model=mlp",
            "--config.victim.epochs=3", "--config.victim.batch_size=100"]
  assert cli_main(["poison", *common, "--workdir", str(tmp_path / "craft"), "--export=npz"]) == 0
  craft = json.loads((tmp_path / "craft" / "results.json").read_text())
  assert craft["stopped_early"] and craft["perturbed_train_accuracy"] > 0.99, craft
  assert craft["perturbed_train_accuracy"] - craft["clean_train_accuracy"] >= 0.05, craft
  assert (tmp_path / "craft" / "poison" / "preview.png").exists()
  assert (tmp_path / "craft" / "poisoned_train.npz").exists()
  poison = f"--config.evaluate.poison={tmp_path / 'craft'}"
  assert cli_main(["evaluate", *common, poison, "--workdir", str(tmp_path / "eval")]) == 0
  res = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert set(res["test_accuracy"]) == {"poisoned", "clean"} and res["poison_fraction"] == 1.0
  assert len(res["curves"]["poisoned"]) == 3 and res["test_accuracy"]["clean"] > 0.4
  assert (tmp_path / "eval" / "curves.png").exists() and "Drop caused" in (tmp_path / "eval" / "report.md").read_text()

  # A second evaluation under the same victim recipe restores the finished clean victim
  # through clean_workdir instead of training it again; another recipe is refused up front.
  clean_dir = tmp_path / "eval" / "clean"
  clean_log = (clean_dir / "metrics.jsonl").read_text()
  share = [f"--config.evaluate.poison={tmp_path / 'craft'}", f"--config.evaluate.clean_workdir={clean_dir}"]
  half = ["--config.evaluate.poison_fraction=0.5", "--workdir", str(tmp_path / "half")]
  assert cli_main(["evaluate", *common, *share, *half]) == 0
  half = json.loads((tmp_path / "half" / "results.json").read_text())
  assert half["test_accuracy"]["clean"] == res["test_accuracy"]["clean"] and half["poison_fraction"] == 0.5
  assert half["runs"]["clean"] == str(clean_dir) and not (tmp_path / "half" / "clean").exists()
  assert (clean_dir / "metrics.jsonl").read_text() == clean_log and len(half["curves"]["clean"]) == 3
  # Settings of the crafting sections are not the victim's: the clean victim is still reused.
  assert cli_main(["evaluate", *common, *share, "--config.craft.eps=0.1", "--config.surrogate.seed=3",
                   "--workdir", str(tmp_path / "craft_changed")]) == 0
  assert (clean_dir / "metrics.jsonl").read_text() == clean_log
  assert cli_main(["evaluate", *common, *share, "--config.victim.epochs=2", "--workdir", str(tmp_path / "other")]) == 1
  assert not (tmp_path / "other" / "poisoned").exists()


@pytest.mark.slow
def test_em_poison_costs_a_victim_40_points_and_random_noise_almost_nothing_on_real_data(tmp_path):
  """The victim effect on the 10,000 real Fashion-MNIST images of the embedded slice. At
  eps 8/255 Fashion-MNIST's classes are too far apart in pixel space for the noise to win
  (docs/results/unlearnable.md, "How large must eps be"), so this uses eps 0.3, the radius availability attacks
  use on MNIST-type data. EM sample-wise noise from a small-CNN surrogate, crafted for 8
  outer iterations with the stop rule off (the surrogate passes 99% after 2; crafting on
  makes the noise cost more), costs a small-CNN victim (10 epochs, crop and flip) at least
  40 points of clean-test accuracy: measured 89.60% -> 46.80% (-42.8) here; outside the
  test session (one device) 89.30% -> 44.80%, and crafting seeds 1 and 2 gave -41.2 and
  -39.7 (docs/results/unlearnable.md). Uniform random noise of the same radius costs at most 8 points (3.8
  measured)."""
  sweep = load_script("experiments/em_eps_sweep.py")
  size, eps, surrogate, augment, mode = sweep.ROWS["J"]  # 10k images, eps 0.3, small-CNN surrogate, crop2,flip
  longer = ["craft.stop_error=0", "craft.max_iterations=8", "victim.epochs=10"]
  c = sweep.row_config(size, eps, surrogate, augment, mode, longer)
  craft = unlearnable.craft(c, tmp_path / "em")
  assert craft["iterations"] == 8 and not craft["stopped_early"], craft  # stop_error=0: never stops early
  c.evaluate.poison = str(tmp_path / "em")
  victim = victims.evaluate(c, tmp_path / "em_victim")
  assert victim["victim"]["epochs"] == 10, victim["victim"]
  em = victim["test_accuracy"]

  r = sweep.row_config(size, eps, "random", augment, mode, [*longer, f"evaluate.poison={tmp_path / 'random'}",
                                                             "evaluate.clean=False"])
  unlearnable.craft(r, tmp_path / "random")
  rand = victims.evaluate(r, tmp_path / "random_victim")["test_accuracy"]
  print(f"clean {em['clean']:.4f}, EM {em['poisoned']:.4f}, random {rand['poisoned']:.4f}")
  assert em["clean"] > 0.85, em
  assert em["clean"] - em["poisoned"] >= 0.40, em
  assert em["clean"] - rand["poisoned"] <= 0.08, (em, rand)
