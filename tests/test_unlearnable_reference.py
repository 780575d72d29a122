"""The authors' recipes (``experiments/em.py:<dataset>,reference``, ``mi_ue.py:...,reference``)
and what the library gained for them: the class-wise stop rule on the fitted subset
(``craft.stop_on``) and poisoned images stored as uint8 for the victims
(``evaluate.quantize``, ``evaluate.drop_negative``)."""

import hashlib
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import synthetic_host
from jaxprotect import config as config_lib, data, parallel
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import crafting, pgd, poison_io

REPO = pathlib.Path(__file__).resolve().parents[1]
EXP = REPO / "experiments"


def _cfg(spec):
  return config_lib.from_file(EXP / spec)


@pytest.mark.parametrize("dataset", ["cifar10", "fashion_mnist_mini"])
def test_em_reference_variants_have_the_reference_values(dataset):
  for mode in ("sample", "class"):
    opt = ",classwise" if mode == "class" else ""
    ref, today = _cfg(f"em.py:{dataset}{opt},reference"), _cfg(f"em.py:{dataset}{opt}")
    assert ref.craft.mode == mode and ref.craft.method == "em"
    assert ref.surrogate.batch_size == 512 and today.surrogate.batch_size == 128
    assert ref.surrogate.augment == "" and ref.surrogate.optimizer.schedule == "constant"
    assert (ref.surrogate.optimizer.lr, ref.surrogate.optimizer.weight_decay, ref.surrogate.optimizer.grad_clip) == (
        0.1, 5e-4, 5.0)
    assert ref.craft.pgd.batch_size == 512 and ref.craft.pgd.step_size == pytest.approx(0.8 / 255)
    assert ref.craft.eps == pytest.approx(8 / 255) and ref.craft.train_steps == 10 and ref.craft.stop_error == 0.01
    assert ref.craft.delta_init == "zeros" and today.craft.delta_init == "uniform"  # --random_start off
    if mode == "class":
      assert ref.craft.pgd.steps == 1 and today.craft.pgd.steps == 20
      assert ref.craft.stop_on == "subset" and ref.craft.class_subset == 0.2 and ref.craft.reshuffle == "always"
    else:
      assert ref.craft.pgd.steps == 20 and ref.craft.stop_on == "all" and ref.craft.reshuffle == "never"
    assert today.craft.stop_on == "all" and today.craft.reshuffle == "auto"
    v = ref.victim
    assert v.optimizer.grad_clip == 5.0 and today.victim.optimizer.grad_clip == 0.0
    assert (v.epochs, v.batch_size, v.optimizer.lr, v.optimizer.weight_decay, v.optimizer.schedule, v.augment) == (
        60, 128, 0.1, 5e-4, "cosine", "crop4,flip")
    assert ref.evaluate.quantize == "floor" and ref.evaluate.drop_negative  # uint8 storage as PoisonCIFAR10's
    assert today.evaluate.quantize == "" and not today.evaluate.drop_negative
    # the models stay the variant's (small CNNs on the CPU variants)
    assert (ref.surrogate.model, ref.victim.model) == (today.surrogate.model, today.victim.model)
    crafting.validate(ref)


def test_em_reference_per_dataset_values_and_the_random_control():
  c100, svhn = _cfg("em.py:cifar100,reference"), _cfg("em.py:svhn_cropped,classwise,reference")
  assert (c100.victim.epochs, c100.victim.optimizer.weight_decay, c100.surrogate.optimizer.weight_decay) == (
      100, 5e-5, 5e-5)
  assert c100.craft.train_steps == 20
  assert (svhn.victim.epochs, svhn.victim.augment, svhn.craft.train_steps) == (30, "none", 10)
  r = _cfg("em.py:cifar10,random,reference")
  assert r.craft.method == "random" and r.evaluate.quantize == "floor"
  with pytest.raises(ValueError, match="unknown option"):
    _cfg("em.py:cifar10,refrence")


def test_mi_ue_reference_variant_has_the_reference_values():
  ref, today = _cfg("mi_ue.py:cifar10,reference"), _cfg("mi_ue.py:cifar10")
  s, k, v = ref.surrogate, ref.craft, ref.victim
  assert (k.method, k.mode, k.delta_init, k.clean_augment) == ("mi_ue", "sample", "zeros", "flip")
  assert k.reshuffle == "always"
  assert (s.model, s.batch_size, s.augment) == ("resnet18", 128, "")
  assert (s.optimizer.lr, s.optimizer.momentum, s.optimizer.weight_decay, s.optimizer.schedule,
          s.optimizer.grad_clip) == (0.1, 0.9, 1e-4, "cosine", 0.0)
  assert (k.pgd.steps, k.pgd.batch_size, k.train_steps, k.max_iterations, k.stop_error) == (10, 512, 0, 100, 0.0)
  assert k.pgd.step_size == pytest.approx(0.2 / 255) and k.pgd.step_size_end == pytest.approx(0.398 / 255)
  # gen_miue.py:340-341 evaluated at epochs 1..100 is the linear schedule of craft.step_size
  for epoch in (1, 2, 50, 100):
    want = (100 - epoch + 1) / 100 * (0.2 / 255 - 4 / (255 * 10)) + 4 / (255 * 10)
    assert crafting.step_size(ref, epoch - 1) == pytest.approx(want, rel=1e-9)
  assert (k.mi_ue.temperature, k.mi_ue.exclude_self, k.mi_ue.zeta, k.eps) == (0.1, False, 0.0, pytest.approx(8 / 255))
  assert (v.model, v.epochs, v.batch_size, v.optimizer.lr, v.optimizer.weight_decay, v.optimizer.grad_clip,
          v.augment) == ("resnet18", 200, 128, 0.5, 1e-4, 0.0, "crop4,flip")
  assert ref.evaluate.quantize == "floor" and not ref.evaluate.drop_negative
  # today's MI-UE settings stay the default variant
  assert (today.victim.epochs, today.victim.optimizer.lr, today.evaluate.quantize, today.craft.reshuffle) == (
      60, 0.1, "", "auto")
  assert s.model_kwargs.input_norm == "imagenet" and "input_norm" not in today.surrogate.model_kwargs
  fm = _cfg("mi_ue.py:fashion_mnist_mini,reference")  # one channel: no ImageNet statistics
  assert fm.craft.max_iterations == 100 and "input_norm" not in fm.surrogate.model_kwargs
  for bad in ("cifar10,classwise", "cifar10,reference,random"):
    with pytest.raises(ValueError, match="unknown option"):
      _cfg(f"mi_ue.py:{bad}")


@pytest.fixture(scope="module")
def host():
  return synthetic_host((8, 8, 1), std=70.0, test_size=16, first_id=100, n=128)


def _tiny_class(stop_error, stop_on):
  c = crafting.unlearnable_config()
  s, k = c.surrogate, c.craft
  k.mode, k.stop_on, k.stop_error = "class", stop_on, stop_error
  s.model, s.model_kwargs.hidden = "mlp", (8,)
  s.batch_size, s.eval_batch_size, s.loop = 16, 16, "host"
  s.optimizer.lr = 0.01
  k.pgd.batch_size, k.pgd.steps, k.train_steps, k.max_iterations, k.class_subset = 16, 1, 2, 2, 0.25
  k.eps = 0.05
  c.runtime.progress, c.runtime.tensorboard, c.runtime.checkpoint.async_save = False, False, False
  c.export.preview = False
  return c


def _log(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_stop_on_subset_measures_the_stop_rule_on_the_class_wise_subset(host, tmp_path):
  """With the stop rule off, each iteration logs the surrogate's accuracy on the perturbed
  subset beside the whole set's; a stop threshold between the two stops the "subset" run
  after the first iteration and not the "all" run."""
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  crafting.craft(_tiny_class(0.0, "subset"), tmp_path / "probe", mesh, ds)
  first = _log(tmp_path / "probe")[0]
  sub, full = first["subset_accuracy"], first["perturbed_train_accuracy"]
  assert sub != full, first  # a precondition of this test: the two sets must disagree
  threshold = 1 - (sub + full) / 2  # error of one is below it, of the other above
  runs = {}
  for stop_on in ("subset", "all"):
    runs[stop_on] = crafting.craft(_tiny_class(threshold, stop_on), tmp_path / stop_on, mesh, ds)
    assert ("subset_accuracy" in _log(tmp_path / stop_on)[0]) == (stop_on == "subset")
  stopper, other = ("subset", "all") if sub > full else ("all", "subset")
  assert runs[stopper]["iterations"] == 1 and runs[stopper]["stopped_early"], (runs, sub, full)
  assert runs[other]["iterations"] == 2, (runs, sub, full)  # not stopped by the first iteration's accuracy
  c = _tiny_class(0.01, "subset")
  c.craft.mode = "sample"
  with pytest.raises(ValueError, match=r"craft\.stop_on='subset' needs class-wise"):
    crafting.craft(c, tmp_path / "bad", mesh, ds)
  c.craft.stop_on = "half"
  with pytest.raises(ValueError, match=r"craft\.stop_on: unknown value 'half'"):
    crafting.validate(c)


def test_quantized_poisons_are_uint8_images_and_change_the_fingerprint(host, tmp_path):
  """``quantize="round"``: the victim's training images are exactly k/255 with k the
  nearest grey level of x + delta; ``"floor"``: the reference's truncation (one level
  below where rounding goes up); ``drop_negative``: only brightening. Each setting has its
  own fingerprint; a plain float poison keeps the old one."""
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  eps = 0.1
  u = np.asarray(host.train.images)
  delta = np.asarray(pgd.init_delta(jax.random.PRNGKey(0), u.shape, eps, ds.train.images))
  c = crafting.unlearnable_config()
  poison_io.save_poison(tmp_path / "p", delta, "sample", ds, config=c)
  p = poison_io.load_poison(tmp_path / "p", ds)

  plain = poison_io.apply(ds, p)
  legacy = hashlib.sha256(f"{ds.fingerprint}|{p.digest}|1.0|0".encode()).hexdigest()
  assert plain.fingerprint == legacy and plain.train.delta_mode == "sample"

  x = u.astype(np.float32) / np.float32(255)
  want = {"round": np.round(np.clip(x + delta, 0, 1) * 255).astype(np.uint8),
          "floor": np.clip(u.astype(np.float32) + delta * np.float32(255), 0, 255).astype(np.uint8)}
  fps = {plain.fingerprint}
  idx = jnp.arange(ds.train.size)
  for q in ("round", "floor"):
    out = poison_io.apply(ds, p, quantize=q)
    assert out.train.delta is None and out.train.delta_mode == "none"
    images = np.asarray(out.train.images)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, want[q])
    # what a victim's training batch holds: the stored grey levels k over 255 (to float32's last bit)
    batch = np.asarray(data.batch_from(out.train, jax.random.PRNGKey(0), idx, AugmentConfig())["image"])
    np.testing.assert_array_equal(np.round(batch * 255), want[q])
    assert np.abs(batch * 255 - want[q]).max() < 1e-4
    float_batch = np.asarray(data.batch_from(plain.train, jax.random.PRNGKey(0), idx, AugmentConfig())["image"])
    assert np.abs(float_batch * 255 - np.round(float_batch * 255)).max() > 0.1  # unlike the float poison's
    assert np.array_equal(out.train.labels, ds.train.labels) and np.array_equal(out.test.images, ds.test.images)
    fps.add(out.fingerprint)
  diff = want["round"].astype(int) - want["floor"].astype(int)
  assert set(np.unique(diff)) <= {0, 1} and diff.mean() > 0.2  # floor: up to one level below the rounding
  # drop_negative: the noise only brightens; with rounding, the images never go below the clean ones
  pos = poison_io.apply(ds, p, quantize="round", drop_negative=True)
  stored = np.asarray(pos.train.images).astype(int)
  assert (stored >= u).all() and (stored > u).mean() > 0.2
  fps.add(pos.fingerprint)
  fps.add(poison_io.apply(ds, p, drop_negative=True).fingerprint)
  assert len(fps) == 5
  # class-wise poisons and partial poisoning are stored per example as well
  cls = poison_io.save_poison(tmp_path / "c", delta[:4], "class", ds, config=c)
  assert cls["mode"] == "class"
  cp = poison_io.apply(ds, poison_io.load_poison(tmp_path / "c", ds), fraction=0.5, quantize="round")
  stored = np.asarray(cp.train.images)
  changed = (stored != u).reshape(len(u), -1).any(1)
  assert 0 < changed.sum() <= 64
  labels = np.asarray(host.train.labels)
  rows = np.flatnonzero(changed)
  np.testing.assert_array_equal(stored[rows], np.round(np.clip(x[rows] + delta[:4][labels[rows]], 0, 1) * 255))
  with pytest.raises(ValueError, match="quantize: unknown value 'ceil'"):
    poison_io.apply(ds, p, quantize="ceil")
