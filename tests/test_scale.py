"""The bf16 ResNet-18 training step compiled for a TPU v5e 2x2 topology without a TPU
(``benchmarks.scale``): it fits a chip, donation aliases the state, and the gradients are
summed across chips in one bfloat16 all-reduce."""

import pytest

pytest.importorskip("libtpu", reason="libtpu not installed (pip install -e '.[aot]')")

import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402

from benchmarks import scale  # noqa: E402
from jaxprotect import parallel  # noqa: E402

PER_CHIP_BATCH = 2


def _compile_step(grad_sum_dtype: str = "compute"):
  topo = scale.get_topology("v5e:2x2")
  mesh = parallel.make_mesh(devices=topo.devices)
  programs = scale.Programs(mesh, scale.Setting(per_chip_batch=PER_CHIP_BATCH, grad_sum_dtype=grad_sum_dtype))
  step, args, _ = programs.build("train_step")
  # A compile-only client cannot read an executable back from the persistent cache (conftest enables it).
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return programs, step.lower(*args).compile()
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)


@pytest.fixture(scope="module")
def compiled_step():
  return _compile_step()


def _all_reduces(compiled) -> list[list[tuple[str, int]]]:
  out = []
  for line in compiled.as_text().splitlines():
    m = scale._COLLECTIVE_RE.search(line)
    if m and m.group("op") == "all-reduce":
      out.append(scale._arrays(m.group("shape")))
  return out


def test_topology_is_compile_only_and_not_the_local_backend():
  topo = scale.get_topology("v5e:2x2")
  assert len(topo.devices) == 4
  assert topo.devices[0].platform == "tpu" and "v5" in topo.devices[0].device_kind
  assert isinstance(topo, topologies.TopologyDescription)
  assert jax.default_backend() == "cpu"


def test_bf16_train_step_fits_a_v5e_chip_with_the_state_donated(compiled_step):
  programs, compiled = compiled_step
  info = scale.analyse(compiled, scale.chip_of("v5e:2x2"))
  assert info["hbm_bytes"] == 16 * 2**30
  assert 0 < info["total_bytes"] <= info["hbm_bytes"] and info["fits"]
  # the replicated float32 state (params, batch stats, momentum) is donated: its buffers are reused
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(programs.state))
  assert info["donation_aliased"]
  assert info["alias_bytes"] >= 0.99 * state_bytes
  assert info["flops_per_chip"] > 0


def test_gradients_are_summed_in_one_bfloat16_all_reduce(compiled_step):
  """flax casts the float32 kernels to bfloat16 before the convolutions, so each kernel's
  gradient comes out of its transposed convolution in bfloat16 and is summed across chips
  so: one combined all-reduce of every conv / dense parameter's gradient at 2 bytes per
  element. The float32 ones carry BatchNorm's batch statistics and its parameters' gradients."""
  programs, compiled = compiled_step
  params = programs.state.params
  leaves = jax.tree_util.tree_leaves_with_path(params)
  is_bn = lambda path: any("bn" in str(getattr(k, "key", "")).lower() or "norm" in str(getattr(k, "key", "")).lower()
                           for k in path)
  dense = [x for path, x in leaves if not is_bn(path)]
  assert len(dense) == 22  # 20 convolution kernels, the classifier's kernel and bias
  dense_elements = sum(x.size for x in dense)
  assert dense_elements > 11_000_000

  all_reduces = _all_reduces(compiled)
  bf16 = [a for a in all_reduces if any(d == "bf16" for d, _ in a)]
  assert len(bf16) == 1, [[d for d, _ in a] for a in bf16]
  (grad,) = bf16
  assert all(d == "bf16" for d, _ in grad) and len(grad) == len(dense)
  assert sum(b for _, b in grad) == 2 * dense_elements
  others = [a for a in all_reduces if a is not grad]
  assert others and all(d == "f32" for a in others for d, _ in a)
  assert sum(b for a in others for _, b in a) < 1e6  # BatchNorm vectors only
  summary = scale.collectives(compiled.as_text())["all-reduce"]
  assert summary["count"] == len(all_reduces) and summary["largest"]["dtypes"] == ["bf16"]


def test_grad_sum_dtype_float32_sums_every_gradient_in_float32_on_tpu(compiled_step):
  """``grad_sum_dtype="float32"``: no bfloat16 all-reduce is left, and the gradients of the
  conv / dense parameters cross the chips at 4 bytes per element (twice the default's)."""
  programs, compiled = _compile_step("float32")
  all_reduces = _all_reduces(compiled)
  assert all_reduces and not [a for a in all_reduces if any(d == "bf16" for d, _ in a)]
  default_bytes = sum(b for a in _all_reduces(compiled_step[1]) for _, b in a)
  kernel_elements = sum(x.size for x in jax.tree.leaves(programs.state.params) if x.ndim > 1)
  # each kernel gradient element: 2 bytes (bf16) by default, 4 (f32) with the option
  assert sum(b for a in all_reduces for _, b in a) >= default_bytes + 2 * kernel_elements
