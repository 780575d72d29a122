"""The sample-wise PGD pass on a multi-device mesh: the perturbation is donated (the result
reuses its buffer), held in pass order split along ``data`` during the pass, and a batch
moves no perturbation between devices -- read from the compiled program on simulated CPU
devices -- with the same results whether donated or not."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import scale
from conftest import synthetic_host
from jaxprotect import data, models, parallel
from jaxprotect.data.augment import AugmentConfig
from jaxprotect.unlearnable import pgd

IMAGE = (8, 8, 1)
FEATURES = int(np.prod(IMAGE))
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_CALLED = re.compile(r"\b(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)")
_CALLED_LISTS = re.compile(r"\b(?:branch_computations|called_computations)=\{([^}]*)\}")


def _computations(hlo: str) -> dict[str, list[str]]:
  comps, name = {}, None
  for line in hlo.splitlines():
    m = _HEADER.match(line)
    if m:
      name = m.group(1)
      comps[name] = []
    elif line.startswith("}"):
      name = None
    elif name is not None:
      comps[name].append(line)
  return comps


def _loop_lines(hlo: str) -> tuple[list[str], list[str]]:
  """The instructions of the program's while loops (bodies and conditions, with every
  computation they call), and the while instructions themselves."""
  comps = _computations(hlo)
  whiles = [line for lines in comps.values() for line in lines if re.search(r"\swhile\(", line)]
  todo = [c for line in whiles for c in _CALLED.findall(line)]
  seen: set[str] = set()
  while todo:
    c = todo.pop()
    if c in seen or c not in comps:
      continue
    seen.add(c)
    for line in comps[c]:
      todo += _CALLED.findall(line)
      for group in _CALLED_LISTS.findall(line):
        todo += [s.strip().lstrip("%") for s in group.split(",") if s.strip()]
  return [line for c in seen for line in comps[c]], whiles


def _model():
  return models.get("mlp", 4, hidden=(16,))


def _compile(mesh, layout: str, n: int, batch: int, objective=None):
  model = _model()
  variables = models.init_variables(model, jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE), jnp.float32))
  split = data.abstract_split(n, IMAGE, mesh, layout=layout, delta_mode="sample")
  run = pgd.make_samplewise_pass(model, objective or pgd.error_minimizing_objective(), mesh, batch, 2, loop="scan",
                                 donate=True)
  scalar = jax.ShapeDtypeStruct((), jnp.float32)
  return run.lower(variables, split, scalar, scalar).compile(), split


def _loop_bytes(compiled) -> int:
  lines, _ = _loop_lines(compiled.as_text())
  return sum(c["bytes"] for c in scale.collectives("\n".join(lines)).values())


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_the_scan_pass_donates_the_perturbation_and_keeps_it_along_data_in_the_loop(layout):
  """88 examples in batches of 24 on 8 devices (a partial last batch): the program aliases
  the perturbation's buffer to its result and returns it laid out as it came. A replicated
  perturbation is looped over as 4 x 24 slots of which each device holds 4 x 3, and no
  collective of the loop moves the global batch's perturbation; one split along ``data``
  stays so (11 examples per device)."""
  mesh = parallel.make_mesh(8)
  n, batch = 88, 24
  compiled, split = _compile(mesh, layout, n, batch)
  per_device = n * FEATURES * 4 // (8 if layout == "sharded" else 1)
  mem = compiled.memory_analysis()
  if mem is not None:
    assert mem.alias_size_in_bytes >= per_device, mem.alias_size_in_bytes
  assert re.search(r"input_output_alias=\{\s*\{\}:\s*\(\d+,", compiled.as_text())  # the result is a parameter's buffer
  assert compiled.output_shardings.is_equivalent_to(split.delta.sharding, 4)
  lines, whiles = _loop_lines(compiled.as_text())
  assert whiles
  if layout == "sharded":
    assert any(f"f32[{n // 8},{','.join(map(str, IMAGE))}]" in w for w in whiles), whiles  # its own rows
    return
  rows = -(-n // batch)
  assert any(f"f32[{rows},{batch // 8},{FEATURES}]" in w for w in whiles), whiles  # the slots, split along data
  in_loop = scale.collectives("\n".join(lines))
  batch_bytes = batch * FEATURES * 4
  for op, c in in_loop.items():
    assert c["largest"]["bytes"] < batch_bytes, (op, c)


def test_the_loop_moves_no_more_than_a_device_batch_whatever_the_mesh():
  """Three images per device and batch, on 2 devices (batches of 6) and on 8 (batches of
  24): the collectives of the loop carry at most one device's batch of perturbation (the
  last, partial batch's context, from the devices that updated it), not the global batch."""
  sizes = {d: _loop_bytes(_compile(parallel.make_mesh(d), "replicated", 88, 3 * d)[0]) for d in (2, 8)}
  assert max(sizes.values()) <= 3 * FEATURES * 4, sizes


@pytest.fixture(scope="module")
def host():
  return synthetic_host(IMAGE, std=40.0, test_size=16, first_id=100, n=72)


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_donated_passes_equal_undonated_ones_and_consume_their_input(host, layout):
  """On 8 devices, scan and host forms, EM in the fixed order and MI-UE reordered with its
  flip: a donating pass returns bitwise the perturbation of a non-donating one, laid out as
  its input, and deletes its input; scan and host agree, and both equal a loop over the
  batches written out here."""
  mesh = parallel.make_mesh(8)
  ds = data.to_device(host, mesh, layout)
  model = _model()
  variables = models.init_variables(model, jax.random.PRNGKey(3), ds.example)
  eps, alpha = np.float32(0.2), np.float32(0.05)
  start = np.asarray(pgd.init_delta(jax.random.PRNGKey(1), (ds.train.size, *IMAGE), eps, ds.train.images))
  x = ds.train.images.astype(jnp.float32) / 255.0
  for name, objective, augment, order in (("em", pgd.error_minimizing_objective(), "", None),
                                          ("mi_ue", pgd.mi_ue_objective(), "flip", jax.random.PRNGKey(7))):
    results = {}
    for loop in ("scan", "host"):
      for donate in (False, True):
        delta = jax.device_put(start, ds.train.images.sharding)
        split = ds.train.replace(delta=delta, delta_mode="sample", clean_augment=AugmentConfig.parse(augment))
        run = pgd.make_samplewise_pass(model, objective, mesh, 16, 2, loop=loop, donate=donate)
        out = run(variables, split, eps, alpha, jax.random.PRNGKey(4), order_key=order)
        assert out.sharding.is_equivalent_to(ds.train.images.sharding, 4), (name, loop, out.sharding)
        assert delta.is_deleted() is donate, (name, loop, donate)
        results[loop, donate] = np.asarray(out)
      assert results[loop, True].tobytes() == results[loop, False].tobytes(), (name, loop)
    np.testing.assert_allclose(results["scan", False], results["host", False], rtol=0, atol=1e-6)
    if name == "em":  # the batches written out (fixed order, no augmentation)
      batch_pgd = pgd.make_batch_pgd(model, objective, 2)
      want = jnp.asarray(start)
      pos_rows, mask_rows = pgd.pass_rows(ds.train.size, 16)
      for pos, mask in zip(np.asarray(pos_rows), np.asarray(mask_rows)):
        new = pgd.project_u8(batch_pgd(variables, x[pos], ds.train.labels[pos], want[pos], eps, alpha),
                             ds.train.images[pos], eps)
        want = want.at[pos[mask]].set(new[mask])
      np.testing.assert_allclose(results["scan", False], want, rtol=0, atol=1e-6)


def test_pass_arguments_are_checked(host):
  mesh = parallel.make_mesh(1)
  ds = data.to_device(host, mesh)
  model = _model()
  with pytest.raises(ValueError, match="donate: expected True or False"):
    pgd.make_samplewise_pass(model, pgd.error_minimizing_objective(), mesh, 16, 2, donate="yes")
  variables = models.init_variables(model, jax.random.PRNGKey(3), ds.example)
  for loop in ("scan", "host"):
    run = pgd.make_samplewise_pass(model, pgd.error_minimizing_objective(), mesh, 16, 2, loop=loop)
    with pytest.raises(ValueError, match="split.delta: the sample-wise pass needs a perturbation"):
      run(variables, ds.train.replace(delta_mode="sample"), np.float32(0.1), np.float32(0.01))
    bad = jnp.zeros((ds.train.size, 4, 4, 1), jnp.float32)
    with pytest.raises(ValueError, match=r"split\.delta: expected shape \(72, 8, 8, 1\)"):
      run(variables, ds.train.replace(delta=bad, delta_mode="sample"), np.float32(0.1), np.float32(0.01))


def test_8_devices_return_the_1_device_perturbation_bit_for_bit_in_either_layout(host):
  """MI-UE, reordered, with its flip, from a start holding -0.0 entries: the pass on 8
  devices returns the bits of the 1-device pass (the signs of zeros included, which a
  cross-device sum would turn to +0.0), split along ``data`` or replicated."""
  start = np.asarray(pgd.init_delta(jax.random.PRNGKey(1), (host.train.images.shape[0], *IMAGE), 0.2,
                                    jnp.asarray(host.train.images)))
  start = np.where(np.arange(start.size).reshape(start.shape) % 17 == 0, np.float32(-0.0), start)
  model = _model()
  got = {}
  for devices, layout in ((1, "replicated"), (8, "replicated"), (8, "sharded")):
    mesh = parallel.make_mesh(devices)
    ds = data.to_device(host, mesh, layout)
    variables = models.init_variables(model, jax.random.PRNGKey(3), ds.example)
    split = ds.train.replace(delta=jax.device_put(start, ds.train.images.sharding), delta_mode="sample",
                             clean_augment=AugmentConfig.parse("flip"))
    for loop in ("scan", "host"):
      run = pgd.make_samplewise_pass(model, pgd.mi_ue_objective(), mesh, 16, 2, loop=loop)
      got[devices, layout, loop] = np.asarray(run(variables, split, np.float32(0.2), np.float32(0.05),
                                                  jax.random.PRNGKey(4), order_key=jax.random.PRNGKey(5)))
  want = got[1, "replicated", "scan"]
  assert np.any((want == 0) & np.signbit(want))  # the case in point: negative zeros in the result
  for k, v in got.items():
    assert v.tobytes() == want.tobytes(), k
