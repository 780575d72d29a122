"""The command line and the README's two commands."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args, **kw):
  return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, **kw)


def test_help_lists_commands_and_flags():
  out = _run(sys.executable, "-m", "jaxprotect.cli", "--help")
  assert out.returncode == 0
  for cmd in ("train", "demo", "devices"):
    assert re.search(rf"^\s+{cmd}\s", out.stdout, re.M)
  out = _run(sys.executable, "-m", "jaxprotect.cli", "train", "--help")
  assert out.returncode == 0 and "--workdir" in out.stdout and "--config" in out.stdout
  out = _run(sys.executable, "-m", "jaxprotect.cli", "frobnicate")
  assert out.returncode == 2 and "frobnicate" in out.stderr


def test_bad_dataset_is_a_clear_error(tmp_path):
  out = _run(sys.executable, "-m", "jaxprotect.cli", "train", "--config", "experiments/train.py",
             "--config.data.name=no_such_dataset_xyz", "--workdir", str(tmp_path))
  assert out.returncode == 1
  assert "no_such_dataset_xyz" in out.stderr and "Traceback" not in out.stderr


def test_config_overrides(capsys):
  """``--config.<section>.<field>=<value>`` is read as the field's type; ``model_kwargs``
  may gain keys (Python literals or strings); the result is locked; a bad path or value
  exits 2 naming the field."""
  from jaxprotect.flags import define_config_flags, parse_flags

  train = str(REPO / "experiments" / "train.py")
  fv = parse_flags(["train", "--config", f"{train}:cifar10", "--config.train.model_kwargs.width=16",
                    "--config.train.model_kwargs.hidden=(16, 8)", "--config.train.model_kwargs.act=gelu",
                    "--config.train.epochs", "3", "--config.train.optimizer.lr=1", "--config.runtime.progress=false",
                    "--config.train.optimizer.milestones=2,4", "--config.data.dir=/d", "--workdir", "w"],
                   define_config_flags)
  c = fv.config
  assert c.train.model_kwargs.to_dict() == {"width": 16, "hidden": (16, 8), "act": "gelu"}
  assert c.train.epochs == 3 and c.train.optimizer.lr == 1.0 and isinstance(c.train.optimizer.lr, float)
  assert c.runtime.progress is False and c.train.optimizer.milestones == (2, 4) and c.data.dir == "/d"
  assert c.data.name == "cifar10" and fv.workdir == "w"
  with pytest.raises(AttributeError):  # locked
    c.train.no_such_field = 1
  for bad, says in (("--config.nothing.model_kwargs.width=3", "config.nothing"),
                    ("--config.train.epoch=3", "did you mean config.train.epochs"),
                    ("--config.train.epochs=three", "config.train.epochs: cannot read 'three' as int"),
                    ("--config.train=1", "config.train is a section")):
    with pytest.raises(SystemExit) as e:
      parse_flags(["train", "--config", train, bad], define_config_flags)
    assert e.value.code == 2 and says in capsys.readouterr().err, bad
  with pytest.raises(SystemExit) as e:
    parse_flags(["train", "--config", f"{train}:nope"], define_config_flags)
  assert e.value.code == 2 and "unknown variant 'nope' of experiments/train.py" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:  # a command without --config
    parse_flags(["devices", "--config.train.epochs=1"], lambda fv, flags: None)
  assert e.value.code == 2 and "takes no --config" in capsys.readouterr().err


def test_parse_variant_and_config_files(tmp_path):
  from jaxprotect import config as config_lib

  assert config_lib.parse_variant(None, ("a", "b"), ("x", "y")) == ("a", ())
  assert config_lib.parse_variant("b,y,x", ("a", "b"), ("x", "y")) == ("b", ("y", "x"))
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['z'\] of f.py"):
    config_lib.parse_variant("a,z", ("a",), ("x",), where="f.py")
  base = tmp_path / "base.py"
  base.write_text("from jaxprotect import config\n"
                  "def get_config(arg=None):\n  c = config.train_config()\n  c.train.epochs = int(arg or 2)\n"
                  "  return c\n")
  ext = tmp_path / "ext.py"  # a file extending another
  ext.write_text("import pathlib\nfrom jaxprotect import config\n"
                 "def get_config(arg=None):\n"
                 "  c = config.from_file(f\"{pathlib.Path(__file__).with_name('base.py')}:{arg}\")\n"
                 "  c.train.seed = 7\n  return c\n")
  c = config_lib.from_file(f"{ext}:5")
  assert (c.train.epochs, c.train.seed) == (5, 7)
  assert config_lib.from_file(base).train.epochs == 2
  with pytest.raises(ValueError, match="does not exist"):
    config_lib.from_file(tmp_path / "none.py")


def test_phase_hash_covers_only_its_sections():
  from jaxprotect import config as config_lib

  c = config_lib.train_config()
  h = config_lib.phase_hash(c, ("data", "train"))
  assert h == config_lib.config_hash(c)
  config_lib.apply_overrides(c, ["runtime.num_devices=2", "runtime.progress=false", "data.dir=/elsewhere",
                                 "runtime.checkpoint.keep=1"])
  assert config_lib.phase_hash(c, ("data", "train")) == h  # where the data live and how the run runs
  for change in ("train.seed=1", "data.train_subset=5", "train.optimizer.lr=0.2", "train.model_kwargs.width=8"):
    d = config_lib.train_config()
    config_lib.apply_overrides(d, [change])
    assert config_lib.phase_hash(d, ("data", "train")) != h, change
  assert config_lib.phase_hash(c, ("data", "train"), attack="kd") != h
  with pytest.raises(ValueError, match="no section 'victim'"):
    config_lib.phase_hash(c, ("victim",))


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
  readme = (REPO / "README.md").read_text()
  blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
  first = [ln.strip() for ln in blocks[0].splitlines() if ln.strip() and not ln.startswith("#")]
  assert first == ["make demo", "make test"]
  assert "make test" in (REPO / ".ci" / "run").read_text()
  makefile = (REPO / "Makefile").read_text()
  assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


@pytest.mark.slow
def test_make_demo_runs_offline(tmp_path):
  """The README's first command, in a short setting (the package is already installed)."""
  out = _run("make", "demo", f"DEMO_ARGS=--epochs 1 --train_subset 2048 --workdir {tmp_path}")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["dataset"]["name"] == "fashion_mnist_mini"
  assert results["test_accuracy"] > 0.4  # a smoke test of the command (16 steps); chance is 0.1
  assert "test accuracy" in out.stdout


def test_compilation_cache_location(tmp_path, monkeypatch):
  import jax  # noqa: PLC0415

  from jaxprotect import parallel  # noqa: PLC0415

  saved = jax.config.jax_compilation_cache_dir
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(parallel.COMPILATION_CACHE_ENV, "0")
    assert parallel.enable_compilation_cache() is None and not jax.config.jax_compilation_cache_dir
    monkeypatch.delenv(parallel.COMPILATION_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parallel.enable_compilation_cache() == tmp_path / "xdg" / "jaxprotect" / "xla"
    monkeypatch.setenv(parallel.COMPILATION_CACHE_ENV, str(tmp_path / "other"))
    assert parallel.enable_compilation_cache() == tmp_path / "xdg" / "jaxprotect" / "xla"  # already set: kept
    jax.config.update("jax_compilation_cache_dir", None)
    assert parallel.enable_compilation_cache() == tmp_path / "other"
  finally:
    jax.config.update("jax_compilation_cache_dir", saved)


@pytest.mark.slow
def test_rerun_reads_compiled_programs_and_trains_the_same_model(tmp_path):
  """Two CLI runs sharing a compilation cache: the first fills it, the second reads it
  back and trains bitwise the same model."""
  env = {**os.environ, "JAXPROTECT_COMPILATION_CACHE": str(tmp_path / "cache"), "JAX_COMPILATION_CACHE_DIR": ""}
  params = []
  for run in ("a", "b"):
    out = _run(sys.executable, "-m", "jaxprotect.cli", "demo", "--epochs", "1", "--train_subset", "512",
               "--workdir", str(tmp_path / run), env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    params.append(json.loads((tmp_path / run / "results.json").read_text())["params_sha256"])
    if run == "a":
      assert any((tmp_path / "cache").iterdir()), "the first run stored no compiled program"
  assert params[0] == params[1]


def test_cpu_xla_flags_applied_by_the_command_not_on_import():
  """``import jaxprotect`` leaves XLA_FLAGS alone; the ``jaxprotect`` command adds the
  measured XLA:CPU flags (jaxprotect.platform) unless XLA_FLAGS sets them or they are off."""
  from jaxprotect import platform  # noqa: PLC0415

  flags = platform.cpu_xla_flags()
  show = ("import os, jaxprotect, jaxprotect.train; print(os.environ.get('XLA_FLAGS', '')); "
          "from jaxprotect import cli; assert cli.main(['devices']) == 0; print(os.environ.get('XLA_FLAGS', ''))")

  def xla_flags(**env):  # (after import, after the command)
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", platform.CPU_DEFAULTS_ENV)}
    out = _run(sys.executable, "-c", show, env={**base, "JAX_PLATFORMS": "cpu", **env})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    return lines[0], lines[-1]

  count = "--xla_force_host_platform_device_count=2"
  assert xla_flags(XLA_FLAGS=count) == (count, " ".join([count, *flags]))
  ynn = "--xla_cpu_experimental_ynn_fusion_type=dot"
  assert xla_flags(XLA_FLAGS=ynn) == (ynn, ynn)
  assert xla_flags(JAXPROTECT_XLA_CPU_DEFAULTS="0") == ("", "")


def test_missing_extra_is_a_clear_error(tmp_path):
  """A dataset that only TFDS could read, without tensorflow-datasets: exit 1 and the extra
  to install, no traceback."""
  code = ("import sys; sys.modules['tensorflow_datasets'] = None; from jaxprotect import cli; "
          "sys.exit(cli.main(sys.argv[1:]))")
  out = _run(sys.executable, "-c", code, "train", "--config", "experiments/train.py", "--config.data.name=cifar10",
             f"--config.data.dir={tmp_path}", "--workdir", str(tmp_path / "run"))
  assert out.returncode == 1, out.stderr[-3000:]
  assert "jaxprotect train: error: reading dataset 'cifar10' through TFDS needs tensorflow-datasets: " \
         "pip install 'jaxprotect[tfds]'" in out.stderr
  assert "Traceback" not in out.stderr
