"""Defenses in experiments: the engine's state hook (8 devices equal 1), runner.fit under a
defense (and unchanged without one), the victim's defense option, and the surrogate-free
baselines written by the poison command."""

import json

import chex
import jax
import ml_collections
import numpy as np
import pytest

from conftest import synthetic_host
from jaxprotect import config as config_lib, data, defenses, models, parallel, runner, train
from jaxprotect.cli import main as cli_main
from jaxprotect.defenses import iss
from jaxprotect.unlearnable import crafting, poison_io

K = 4


@pytest.fixture(scope="module")
def host():
  return synthetic_host(image_shape=(8, 8, 3), n=64, num_classes=K)


def _sgd():
  opt = ml_collections.ConfigDict(dict(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine"))
  return train.make_optimizer(opt, steps_per_epoch=4, epochs=1)


@pytest.mark.parametrize("name", ["at", "cutmix"])
def test_defended_chunk_on_8_devices_equals_1_device(host, name):
  """The state hook inside make_train_chunk (host loop, 1 device; scan loop, 8 devices):
  the same adversarial / mixed batches from the hook key, the same training within the
  engine's tolerance for sharded steps (rtol 1e-5: the gradient all-reduce sums in another
  order, so not bitwise); and the defense changed the training."""
  model = models.get("small_cnn", K, width=4)
  tx = _sgd()
  defense = defenses.from_config({"name": name, "steps": 2})
  loss_fn = defense.loss_fn(None)
  finals = []
  for n, loop in ((1, "host"), (8, "scan")):
    mesh = parallel.make_mesh(n)
    ds = data.to_device(host, mesh)
    hook = defense.batch_fn(model, K)
    assert hook is defense.batch_fn(model, K)  # one function per setting: programs are reused
    chunk = train.make_train_chunk(model, loss_fn, tx, mesh, batch_size=16, loop=loop, batch_fn=hook)
    state = train.init_state(model, tx, ds.example, jax.random.PRNGKey(1), mesh)
    state, m = chunk(state, ds.train, 2)
    assert np.all(np.isfinite(np.asarray(m["loss"])))
    finals.append(jax.device_get(state))
  chex.assert_trees_all_close(finals[0].params, finals[1].params, rtol=1e-5, atol=1e-6)
  mesh = parallel.make_mesh(1)
  plain = train.make_train_chunk(model, train.ce_loss(), tx, mesh, batch_size=16, loop="host")
  state = train.init_state(model, tx, data.to_device(host, mesh).example, jax.random.PRNGKey(1), mesh)
  undefended, _ = plain(state, data.to_device(host, mesh).train, 2)
  assert runner.params_digest(undefended.params) != runner.params_digest(finals[0].params)


def test_chained_hooks_run_in_order_with_the_hook_key():
  """A plain hook then a state hook: the state hook gets the step's hook key (as alone)."""
  seen = {}

  def plain(aux, batch):
    return {**batch, "offset": aux}

  @train.with_state
  def stateful(aux, batch, state, key):
    seen["key"] = key
    return {**batch, "step_seen": state.step + batch["offset"]}

  chained = train.chain_batch_fns(plain, None, stateful)
  assert chained is train.chain_batch_fns(plain, stateful) and chained.uses_state
  assert train.chain_batch_fns(None, stateful) is stateful and train.chain_batch_fns() is None
  state = train.TrainState(step=np.int32(3), params={}, batch_stats={}, opt_state=(), rng=jax.random.PRNGKey(7))
  out = train._apply_batch_fn(chained, 2, {"image": 0}, state)
  assert int(out["step_seen"]) == 5
  want = jax.random.fold_in(jax.random.fold_in(state.rng, train.BATCH_HOOK_STREAM), 3)
  np.testing.assert_array_equal(seen["key"], want)
  with pytest.raises(ValueError, match="batch_fns"):
    train.chain_batch_fns(plain, 3)


def _fit_config(**victim):
  c = config_lib.train_config()
  c.data.train_subset = 128
  t = c.train
  t.model_kwargs.width, t.epochs, t.batch_size, t.eval_batch_size, t.loop = 4, 1, 32, 256, "host"
  for k, v in victim.items():
    setattr(t, k, v)
  c.runtime.num_devices, c.runtime.progress, c.runtime.tensorboard = 1, False, False
  c.runtime.checkpoint.async_save = False
  return c


def test_fit_without_defense_is_unchanged_and_a_defense_enters_hash_and_results(tmp_path):
  c = _fit_config()
  base = runner.fit(c, tmp_path / "plain")
  none = runner.fit(c, tmp_path / "none", defense="none")
  assert none["params_sha256"] == base["params_sha256"] and none["config_hash"] == base["config_hash"]
  assert base["config_hash"] == runner.fit_hash(c) and "defense" not in base
  mixed = runner.fit(c, tmp_path / "mixup", defense={"name": "mixup", "alpha": 0.5, "eps": 0.3})
  assert mixed["defense"] == {"name": "mixup", "alpha": 0.5}  # only the fields mixup reads
  assert mixed["config_hash"] == runner.fit_hash(c, defense={"name": "mixup", "alpha": 0.5}) != base["config_hash"]
  assert mixed["params_sha256"] != base["params_sha256"]
  saved = json.loads((tmp_path / "mixup" / "config.json").read_text())
  assert saved["defense"] == mixed["defense"]
  # resuming the finished run under another defense setting is refused
  with pytest.raises(ValueError, match="config"):
    runner.fit(c, tmp_path / "mixup", defense={"name": "mixup", "alpha": 2.0})


def test_bad_defenses_are_refused_naming_the_field(tmp_path):
  for section, field in [({"name": "at", "eps": 0.0}, "defense.eps"), ({"name": "at", "eps": -0.1}, "defense.eps"),
                         ({"name": "at", "steps": 0}, "defense.steps"), ({"name": "jpeg", "quality": 0},
                                                                         "defense.quality"),
                         ({"name": "blur", "blur_kernel": 2}, "defense.blur_kernel"),
                         ({"name": "ueraser", "copies": 0}, "defense.copies"), ({"nam": "at"}, "unknown field")]:
    with pytest.raises(ValueError, match=field):
      defenses.from_config(section)
  with pytest.raises(ValueError, match="defense.name: unknown defense 'tta'; use one of none, at, cutout, cutmix"):
    defenses.from_config("tta")
  # grayscale on one-channel data: refused before anything is trained or written
  c = _fit_config()
  with pytest.raises(ValueError, match="defense.name: the grayscale defense needs colour"):
    runner.fit(c, tmp_path / "gray", defense="grayscale")
  assert not (tmp_path / "gray" / "checkpoints").exists()
  with pytest.raises(ValueError, match="loss_fn"):
    runner.fit(c, tmp_path / "mix", defense="cutmix", loss_fn=train.ce_loss(0.1))


def _poison_args(method, workdir, *more):
  return ["poison", "--config", "experiments/em.py:fashion_mnist_mini", f"--config.craft.method={method}",
          "--config.data.train_subset=200", "--config.export.preview=false", "--config.runtime.progress=false",
          *more, "--workdir", str(workdir)]


@pytest.mark.parametrize("method,mode", [("ops", "sample"), ("ar", "sample"), ("lsp", "class")])
def test_poison_command_writes_the_baselines(tmp_path, capsys, method, mode):
  assert cli_main(_poison_args(method, tmp_path / method, f"--config.craft.mode={mode}")) == 0
  assert "surrogate-free baseline" in capsys.readouterr().out
  results = json.loads((tmp_path / method / "results.json").read_text())
  c = config_lib.apply_overrides(config_lib.from_file("experiments/em.py:fashion_mnist_mini"),
                                 [f"craft.method={method}", "data.train_subset=200", f"craft.mode={mode}"])
  assert results["config_hash"] == crafting.crafting_hash(c)
  ds = data.from_config(c, parallel.make_mesh(1))
  poison = poison_io.load_poison(tmp_path / method, ds)
  assert poison.mode == mode and poison.manifest["method"] == method
  assert poison.manifest["seed"] == c.surrogate.seed and "data" in poison.manifest["config"]
  assert poison.delta.shape == ((200 if mode == "sample" else 10), 28, 28, 1)
  if method == "ops":
    assert results["eps"] is None and results["norm"] == "l0"
    assert np.all(np.any(poison.delta != 0, axis=-1).sum(axis=(1, 2)) <= 1)
  else:
    assert results["norm"] == "l2"
    l2 = np.sqrt(np.sum(poison.delta.astype(np.float64) ** 2, axis=(1, 2, 3)))
    assert np.all(l2 <= results["eps"] * (1 + 1e-5)) and l2.max() > 0.5 * results["eps"]
  assert poison_io.apply(ds, poison).fingerprint != ds.fingerprint


def test_baseline_settings_are_checked_and_existing_hashes_kept():
  c = crafting.unlearnable_config()
  em = crafting.crafting_hash(c)
  c.baseline.ar.eps = 2.0  # not hashed for EM
  assert crafting.crafting_hash(c) == em
  c.craft.method = "ops"
  with pytest.raises(ValueError, match="craft.mode"):
    c.craft.mode = "class"
    crafting.validate(c)
  c.craft.mode, c.craft.method = "sample", "ar"
  ar = crafting.crafting_hash(c)
  c.baseline.ar.eps = 1.0
  assert crafting.crafting_hash(c) != ar  # hashed for AR
  assert crafting.baseline_kwargs(c) == {"eps": 1.0, "crop": 4, "max_rms": 1.5}


def test_victim_under_jpeg_trains_on_squeezed_images(tmp_path, capsys):
  """``jaxprotect evaluate`` on an OPS poison with ``defense.name=jpeg``: the poisoned victim
  trains on the JPEG-squeezed poisoned images (its dataset fingerprint is the squeezed
  one), the clean victim stays undefended, and both files record the defense."""
  assert cli_main(_poison_args("ops", tmp_path / "ops")) == 0
  victim = ["--config.victim.epochs=1", "--config.victim.batch_size=50", "--config.victim.eval_batch_size=500",
            "--config.victim.model_kwargs.width=4", "--config.victim.loop=host",
            "--config.evaluate.feature_mi_examples=0", "--config.runtime.num_devices=1",
            "--config.data.train_subset=200", "--config.runtime.progress=false"]
  args = ["evaluate", "--config", "experiments/em.py:fashion_mnist_mini",
          f"--config.evaluate.poison={tmp_path / 'ops'}", "--config.defense.name=jpeg", *victim,
          "--workdir", str(tmp_path / "eval")]
  assert cli_main(args) == 0
  out = capsys.readouterr().out
  assert "Defense: jpeg (quality 10, squeeze_test False), applied to the poisoned victim." in out
  assert "one pixel" in out
  results = json.loads((tmp_path / "eval" / "results.json").read_text())
  assert results["defense"] == {"name": "jpeg", "quality": 10, "squeeze_test": False, "runs": ["poisoned"]}
  c = config_lib.apply_overrides(config_lib.from_file("experiments/em.py:fashion_mnist_mini"),
                                 ["data.train_subset=200"])
  ds = data.from_config(c, parallel.make_mesh(1))
  poisoned = poison_io.apply(ds, poison_io.load_poison(tmp_path / "ops", ds))
  fp = results["dataset_fingerprint"]
  assert fp["poisoned"] == iss.squeeze_dataset(poisoned, "jpeg", quality=10).fingerprint != poisoned.fingerprint
  assert fp["clean"] == ds.fingerprint
  clean_run = json.loads((tmp_path / "eval" / "clean" / "results.json").read_text())
  assert "defense" not in clean_run
  poisoned_run = json.loads((tmp_path / "eval" / "poisoned" / "results.json").read_text())
  assert poisoned_run["defense"] == {"name": "jpeg", "quality": 10, "squeeze_test": False}
