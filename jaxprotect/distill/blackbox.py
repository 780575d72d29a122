"""A black-box teacher: a pytree whose call maps images to output vectors, nothing else.

Knock-off students may only *query* the teacher. ``BlackBoxTeacher`` is passed to the
training engine as the call-time ``aux`` of the batch hook (``teacher_hook``), so the
student's loss receives ``batch["teacher_logits"]`` and never the teacher's weights.

Being a pytree (so that it can enter ``jit`` as an argument instead of being baked into
the compiled program as constants), it must carry the weights as leaves. They are
*sealed*: all parameters and BatchNorm statistics are flattened into one float32 vector
whose bits are XOR-ed with a random key stream; the leaves are that ``uint32`` blob and
the (raw ``uint32[2]``) sealing key, and unsealing happens inside ``__call__`` only. No
public attribute and no pytree path yields a parameter array. This is an API boundary
that keeps attack code honest, not cryptographic protection against code running in the
same process.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxprotect import parallel

__all__ = [
    "BlackBoxTeacher", "OUTPUTS", "PROB_FLOOR", "teacher_hook", "teacher_outputs_as_logits",
]

OUTPUTS = ("logits", "probs")
# probabilities below this are clipped before the log when a probability API is distilled
PROB_FLOOR = 1e-30


@dataclasses.dataclass(frozen=True, eq=False)
class _Spec:
  """Static (non-leaf) description of the sealed model; compared by identity."""

  model: nn.Module
  treedef: Any
  shapes: tuple[tuple[int, ...], ...]
  output: str


@jax.tree_util.register_pytree_node_class
class BlackBoxTeacher:
  """Query-only access to a trained classifier.

  ``teacher(images_BxHxWxC) -> outputs_BxK``: logits (``output="logits"``) or
  probabilities (``"probs"``) of the model in evaluation mode. Images are float in [0, 1].

  Attributes:
    output: ``"logits"`` or ``"probs"``.
    num_classes: K.
  """

  __slots__ = ("_sealed", "_key", "_spec")

  def __init__(self, model: nn.Module, variables: dict[str, Any], output: str = "logits", mesh: Mesh | None = None,
               seed: int | None = None):
    """Seals ``variables`` (``{"params": ..., ["batch_stats": ...]}``, float32 leaves).

    Args:
      model: the teacher module (``__call__(x, train) -> (logits, feats)``).
      variables: its trained variables.
      output: what a query returns, ``"logits"`` or ``"probs"``.
      mesh: if given, the sealed blob is replicated on it.
      seed: sealing-key seed (default: fresh randomness from the OS).
    """
    if output not in OUTPUTS:
      raise ValueError(f"black-box output must be one of {OUTPUTS}, got {output!r}")
    variables = {k: v for k, v in dict(variables).items() if k in ("params", "batch_stats") and v}
    leaves, treedef = jax.tree.flatten(variables)
    for leaf in leaves:
      if np.asarray(leaf).dtype != np.float32:
        raise ValueError(f"black-box teacher expects float32 variables, got {np.asarray(leaf).dtype}")
    shapes = tuple(tuple(np.shape(leaf)) for leaf in leaves)
    flat = np.concatenate([np.asarray(leaf, np.float32).ravel() for leaf in leaves])
    if seed is None:
      seed = int.from_bytes(os.urandom(4), "little")
    key = np.asarray(jax.random.key_data(jax.random.key(seed, impl="threefry2x32")), np.uint32)
    sealed = _xor_stream(jnp.asarray(flat.view(np.uint32)), jnp.asarray(key))
    if mesh is not None:
      sealed, key = jax.device_put((sealed, jnp.asarray(key)), parallel.replicated(mesh))
    self._sealed = sealed
    self._key = jnp.asarray(key)
    self._spec = _Spec(model=model, treedef=treedef, shapes=shapes, output=output)

  @property
  def output(self) -> str:
    return self._spec.output

  @property
  def num_classes(self) -> int:
    return int(self._spec.model.num_classes)

  def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
    """Output vectors ``B x K`` (float32) for a batch of images; usable inside ``jit``."""
    logits_BxK, _ = self._spec.model.apply(self._unseal(), images_BxHxWxC, train=False)
    logits_BxK = jax.lax.stop_gradient(logits_BxK.astype(jnp.float32))
    return jax.nn.softmax(logits_BxK, axis=-1) if self._spec.output == "probs" else logits_BxK

  def _unseal(self) -> dict[str, Any]:
    flat = jax.lax.bitcast_convert_type(_xor_stream(self._sealed, self._key), jnp.float32)
    leaves, offset = [], 0
    for shape in self._spec.shapes:
      size = int(np.prod(shape, dtype=np.int64))
      leaves.append(flat[offset:offset + size].reshape(shape))
      offset += size
    return jax.tree.unflatten(self._spec.treedef, leaves)

  def __repr__(self) -> str:
    return f"BlackBoxTeacher(output={self.output!r}, num_classes={self.num_classes})"

  def tree_flatten(self):
    return (self._sealed, self._key), self._spec

  @classmethod
  def tree_unflatten(cls, spec: _Spec, children):
    obj = object.__new__(cls)
    obj._sealed, obj._key = children
    obj._spec = spec
    return obj


@jax.jit
def _xor_stream(words_N: jax.Array, key: jax.Array) -> jax.Array:
  """``words ^ bits(key)``: seals and unseals (an involution)."""
  return jnp.bitwise_xor(words_N, jax.random.bits(jax.random.wrap_key_data(key, impl="threefry2x32"),
                                                  words_N.shape, jnp.uint32))


def teacher_outputs_as_logits(outputs_BxK: jax.Array, output: str) -> jax.Array:
  """What the attacker distils from: logits as given, or ``log p`` for a probability API."""
  if output == "probs":
    return jnp.log(jnp.maximum(outputs_BxK, PROB_FLOOR))
  return outputs_BxK


def teacher_hook(output: str = "logits", key: str = "teacher_logits"):
  """The batch hook ``batch_fn(teacher, batch)``: queries the black box on the (augmented)
  batch the student sees and adds the output vectors as ``batch[key]`` (no gradient)."""

  def batch_fn(teacher: BlackBoxTeacher, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    out = teacher_outputs_as_logits(teacher(batch["image"]), output)
    return {**batch, key: jax.lax.stop_gradient(out)}

  return batch_fn
