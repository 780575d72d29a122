"""The package as installed and imported: no side effects on import, every public
submodule reachable from ``jaxprotect``, a lean core install, and optional extras that
name themselves when missing."""

import json
import logging
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import tomllib
import types

import pytest

import jaxprotect
from jaxprotect import platform

REPO = pathlib.Path(__file__).resolve().parents[1]
EXTRA_MODULES = ("matplotlib", "PIL", "tensorflow_datasets", "torch")  # imported by no core module


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
  """``code`` in a fresh interpreter, without XLA_FLAGS or JAXPROTECT_XLA_CPU_DEFAULTS."""
  base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", platform.CPU_DEFAULTS_ENV)}
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, **env}, capture_output=True, text=True,
                        timeout=300)


_ENV_DIFF = """
import json, os
before = dict(os.environ)
{imports}
after = dict(os.environ)
print(json.dumps({{k: [before.get(k), after.get(k)] for k in before.keys() | after.keys()
                  if before.get(k) != after.get(k)}}))
"""


@pytest.mark.parametrize("imports", [
    "import jaxprotect; import jaxprotect.train, jaxprotect.losses, jaxprotect.models",
    "import jaxprotect\nfor name in jaxprotect.__all__: getattr(jaxprotect, name)",
], ids=["core", "all"])
def test_import_changes_no_environment_variable(imports):
  out = _python(_ENV_DIFF.format(imports=imports))
  assert out.returncode == 0, out.stderr[-3000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {}


def test_every_public_submodule_is_listed_and_resolves():
  on_disk = {m.name for m in pkgutil.iter_modules(jaxprotect.__path__) if not m.name.startswith("_")}
  assert set(jaxprotect.__all__) == on_disk
  assert {"distill", "platform", "unlearnable"} <= set(jaxprotect.__all__)
  listed = dir(jaxprotect)
  assert set(jaxprotect.__all__) <= set(listed) and "__version__" in listed
  for name in jaxprotect.__all__:
    module = getattr(jaxprotect, name)
    assert isinstance(module, types.ModuleType) and module.__name__ == f"jaxprotect.{name}", name
  with pytest.raises(AttributeError, match="no_such_thing"):
    jaxprotect.no_such_thing  # noqa: B018


def test_core_dependencies_are_lean_and_extras_cover_the_tests():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  names = lambda reqs: {re.match(r"[\w.-]+", r).group().lower() for r in reqs}  # noqa: E731
  # chex comes with optax; the tests use it directly (the dev extra)
  assert names(project["dependencies"]) == {"jax", "flax", "optax", "orbax-checkpoint", "ml_collections", "numpy",
                                            "tqdm"}
  extras = project["optional-dependencies"]
  assert names(extras["tfds"]) == {"tensorflow-datasets"}
  assert names(extras["plot"]) == {"matplotlib", "pillow"}
  assert names(extras["bench"]) == {"torch"}
  assert "jaxprotect[tfds,plot]" in extras["dev"] and "chex" in names(extras["dev"])


def test_every_module_imports_without_the_extras():
  block = "".join(f"sys.modules[{m!r}] = None; " for m in EXTRA_MODULES)
  code = (f"import importlib, pkgutil, sys; {block}import jaxprotect\n"
          "for m in pkgutil.walk_packages(jaxprotect.__path__, 'jaxprotect.'):\n"
          "  if not m.name.endswith('__main__'):\n"
          "    importlib.import_module(m.name)\n"
          "print('ok')")
  out = _python(code, JAX_PLATFORMS="cpu")
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


# ---------------------------------------------------------------- XLA:CPU flags


def test_cpu_xla_flags_by_jaxlib_version():
  assert platform.cpu_xla_flags("0.10.2") == ("--xla_cpu_experimental_ynn_fusion_type=",)
  assert platform.cpu_xla_flags("0.4.38") == ()


def test_apply_cpu_xla_flags_adds_the_missing_flags_once(monkeypatch):
  monkeypatch.setattr(platform, "cpu_xla_flags", lambda: ("--xla_a=", "--xla_b=1"))
  monkeypatch.delenv(platform.CPU_DEFAULTS_ENV, raising=False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 --xla_b=0")
  assert platform.apply_cpu_xla_flags() == ("--xla_a=",)  # the user's --xla_b is kept
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 --xla_b=0 --xla_a="
  assert platform.apply_cpu_xla_flags() == ()
  monkeypatch.delenv("XLA_FLAGS")
  assert platform.apply_cpu_xla_flags() == ("--xla_a=", "--xla_b=1")
  assert os.environ["XLA_FLAGS"] == "--xla_a= --xla_b=1"
  monkeypatch.delenv("XLA_FLAGS")
  monkeypatch.setenv(platform.CPU_DEFAULTS_ENV, "0")
  assert platform.apply_cpu_xla_flags() == () and "XLA_FLAGS" not in os.environ
  assert not platform.cpu_defaults_enabled()


# ---------------------------------------------------------------- optional extras


def test_require_names_the_extra(monkeypatch, tmp_path):
  assert platform.require("json", "none") is json
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with pytest.raises(ModuleNotFoundError, match=r"^plotting needs matplotlib: pip install 'jaxprotect\[plot\]'$"):
    platform.require("matplotlib", "plot", "plotting")
  monkeypatch.setitem(sys.modules, "PIL.Image", None)
  with pytest.raises(platform.MissingExtraError, match=r"PNG export needs pillow: .*jaxprotect\[plot\]") as e:
    platform.require("PIL.Image", "plot", "PNG export")
  assert e.value.name == "PIL.Image"
  (tmp_path / "jaxprotect_broken_extra.py").write_text("import jaxprotect_no_such_dependency\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ModuleNotFoundError) as e:  # installed, but broken inside: not reported as a missing extra
    platform.require("jaxprotect_broken_extra", "x")
  assert e.value.name == "jaxprotect_no_such_dependency" and not isinstance(e.value, platform.MissingExtraError)


def test_missing_tfds_names_the_tfds_extra(monkeypatch, tmp_path):
  from jaxprotect.data import sources  # noqa: PLC0415

  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ModuleNotFoundError, match=r"reading dataset 'cifar10' through TFDS needs tensorflow-datasets: "
                                                r"pip install 'jaxprotect\[tfds\]' \(Accepted inputs"):
    sources.load_arrays("cifar10", tmp_path)
  assert sources.load_arrays("fashion_mnist_mini").num_classes == 10  # the local formats need no TFDS


def test_missing_matplotlib_skips_plots_with_a_warning(monkeypatch, tmp_path, caplog):
  """A finished run keeps its results when a PNG cannot be drawn; the warning names the extra."""
  from jaxprotect.distill import curve  # noqa: PLC0415
  from jaxprotect.unlearnable import poison_io, victims  # noqa: PLC0415

  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with caplog.at_level(logging.WARNING, logger="jaxprotect"):
    assert poison_io.save_preview(tmp_path / "preview.png", None, None, "sample", 0.03) is False
    victims._plot_curves(tmp_path / "curves.png", {"clean": []})  # pylint: disable=protected-access
    curve.plot_cmi_curves({}, tmp_path / "cmi_curves.png")
  assert not list(tmp_path.iterdir())
  messages = [r.getMessage() for r in caplog.records if r.name == "jaxprotect"]
  assert len(messages) == 3 and all("pip install 'jaxprotect[plot]'" in m for m in messages), messages
  assert "preview.png" in messages[0] and "curves.png" in messages[1] and "cmi_curves.png" in messages[2]


def test_png_export_without_pillow_names_the_plot_extra(monkeypatch, tmp_path):
  from jaxprotect.unlearnable import poison_io  # noqa: PLC0415

  monkeypatch.setitem(sys.modules, "PIL.Image", None)
  with pytest.raises(platform.MissingExtraError, match=r"pillow: pip install 'jaxprotect\[plot\]'"):
    poison_io.export_png(tmp_path / "png", None, None)
