"""How large must eps be for EM noise to hurt a victim on Fashion-MNIST? A sweep over
eps, surrogate, victim augmentation and training-set size on the embedded slice, with a
uniform-random-noise control.

  python experiments/em_eps_sweep.py --workdir runs/em_eps [--rows B,C,R] [--config.<section>.<field>=<value> ...]

Every row (``row_config``) crafts with ``jaxprotect.unlearnable.craft``
(``experiments/em.py:fashion_mnist_mini``, surrogate batch 32, 5 surrogate steps + 10 PGD
steps of eps/10 per outer iteration, stop rule 1%) and trains small-CNN victims for 5
epochs (batch 100) with ``victims.evaluate`` -- what ``jaxprotect poison`` and
``jaxprotect evaluate`` run. The control row's noise is ``em.py:...,random`` (uniform in
[-eps, eps]). Extra ``--config.*`` arguments override every row's config. Writes
``table.md`` and ``table.json``; rerunning resumes finished runs instead of redoing them.
With row L (the class-wise poison on 10k images) it also prints how far apart the
classes and the class-wise patterns are, and what a linear classifier trained on that
poison scores on the clean test set.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
# The surrogate of a row, as config overrides.
SURROGATES = {"mlp": ["surrogate.model=mlp"], "small_cnn": ["surrogate.model_kwargs.width=16"]}
LABELS = {"mlp": "MLP (32-32)", "small_cnn": "small-CNN (width 16)"}
# name: (training images, eps, surrogate or "random", victim augmentation, mode)
ROWS = {
    "A": (2000, 8 / 255, "mlp", "crop2,flip", "sample"),
    "B": (2000, 8 / 255, "small_cnn", "none", "sample"),
    "C": (2000, 0.3, "mlp", "crop2,flip", "sample"),
    "D": (2000, 0.3, "mlp", "none", "sample"),
    "E": (2000, 0.3, "small_cnn", "crop2,flip", "sample"),
    "F": (2000, 0.3, "small_cnn", "none", "sample"),
    "R": (2000, 0.3, "random", "crop2,flip", "sample"),
    "G": (2000, 0.3, "mlp", "crop2,flip", "class"),
    "H": (10000, 32 / 255, "small_cnn", "crop2,flip", "sample"),
    "I": (10000, 0.3, "mlp", "crop2,flip", "sample"),
    "J": (10000, 0.3, "small_cnn", "crop2,flip", "sample"),
    "K": (10000, 0.3, "small_cnn", "none", "sample"),
    "L": (10000, 0.3, "mlp", "crop2,flip", "class"),
}


def row_config(size, eps, surrogate, augment, mode, overrides=()):
  """The crafting + victim config of a row (``experiments/em.py:fashion_mnist_mini`` with
  the row's settings), then ``overrides`` (``"section.field=value"``; the test suite's
  victim-effect test extends row J this way)."""
  from jaxprotect import config as config_lib

  variant = ("fashion_mnist_mini" + (",classwise" if mode == "class" else "")
             + (",random" if surrogate == "random" else ""))
  c = config_lib.from_file(f"{REPO / 'experiments' / 'em.py'}:{variant}")
  c.data.train_subset = size
  c.runtime.num_devices = 1
  c.runtime.progress = False
  c.craft.eps = eps
  c.craft.pgd.step_size = eps / 10
  c.craft.train_steps = 5
  c.craft.pgd.batch_size = 250
  c.craft.pgd.steps = 10
  c.craft.max_iterations = 60
  c.surrogate.batch_size = 32
  c.victim.epochs = 5
  c.victim.batch_size = 100
  c.victim.augment = augment
  return config_lib.apply_overrides(c, [*SURROGATES.get(surrogate, []), *overrides])


def linear_probe(poison_dir: pathlib.Path, size: int) -> dict:
  """Class-mean and class-pattern L2 distances (pixel units), and the clean-test accuracy
  of a softmax regression (full-batch SGD, 300 steps) trained on clean and on the
  class-wise poisoned images."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from jaxprotect import data
  from jaxprotect.unlearnable import poison_io

  host = data.subset(data.load_arrays("fashion_mnist_mini"), size)
  x, y = host.train.images.reshape(size, -1) / 255.0, host.train.labels
  xt, yt = host.test.images.reshape(len(host.test.labels), -1) / 255.0, host.test.labels
  pattern = poison_io.load_poison(poison_dir).delta.reshape(10, -1)
  means = np.stack([x[y == k].mean(0) for k in range(10)])
  pairs = lambda a: np.linalg.norm(a[:, None] - a[None], axis=-1)[np.triu_indices(10, 1)]  # noqa: E731

  def fit(train_x):
    opt = optax.sgd(0.5, 0.9)
    loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(train_x @ p[0] + p[1], y).mean()  # noqa: E731

    @jax.jit
    def step(p, s):
      u, s = opt.update(jax.grad(loss)(p), s)
      return optax.apply_updates(p, u), s

    p = (jnp.zeros((x.shape[1], 10)), jnp.zeros(10))
    s = opt.init(p)
    for _ in range(300):
      p, s = step(p, s)
    acc = lambda a, b: float(np.mean(np.argmax(a @ p[0] + p[1], 1) == b))  # noqa: E731
    return {"train": acc(train_x, y), "clean_test": acc(xt, yt)}

  return {"class_mean_distance": [float(pairs(means).min()), float(pairs(means).max())],
          "pattern_distance": [float(pairs(pattern).min()), float(pairs(pattern).max())],
          "linear_clean": fit(x), "linear_poisoned": fit(np.clip(x + pattern[y], 0.0, 1.0))}


def main(argv=None) -> int:
  from jaxprotect import flags, platform

  argv, spec, overrides = flags.split_config_args(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", default="runs/em_eps")
  p.add_argument("--rows", default=",".join(ROWS))
  a = p.parse_args(argv)
  if spec is not None:
    p.error("--config: the rows' config is experiments/em.py; override fields with --config.<section>.<field>=<value>")
  platform.apply_cpu_xla_flags()  # as the jaxprotect command does, before JAX starts
  from jaxprotect import parallel
  from jaxprotect.unlearnable import craft, victims

  parallel.enable_compilation_cache()
  parallel.maybe_initialize_distributed()
  work, rows, names = pathlib.Path(a.workdir), [], a.rows.split(",")
  unknown = [n for n in names if n not in ROWS]
  if unknown:
    p.error(f"--rows: unknown row(s) {unknown}; use {','.join(ROWS)}")
  try:
    for name in names:
      size, eps, surrogate, augment, mode = ROWS[name]
      c = row_config(size, eps, surrogate, augment, mode, overrides)
      craft(c, work / name)
      c.evaluate.poison = str(work / name)
      acc = victims.evaluate(c, work / f"{name}_victim")["test_accuracy"]
      # What ran (extra --config.* arguments may have changed the row's settings).
      rows.append({"row": name, "train_images": c.data.train_subset, "eps": c.craft.eps, "surrogate": surrogate,
                   "mode": c.craft.mode, "victim_augment": c.victim.augment, "clean": acc["clean"],
                   "poisoned": acc["poisoned"]})
  except (ValueError, platform.MissingExtraError) as e:
    print(f"em_eps_sweep: error: {e}", file=sys.stderr)
    return 1
  lines = ["| training images | eps | noise | victim augmentation | clean victim | poisoned victim | drop |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    noise = ("uniform random" if r["surrogate"] == "random"
             else f"EM {r['mode']}-wise, {LABELS[r['surrogate']]} surrogate")
    eps = f"{r['eps']:.2g}" if r["eps"] >= 0.2 else f"{round(255 * r['eps'])}/255"
    lines.append(f"| {r['train_images']:,} | {eps} | {noise} | {r['victim_augment']} | {100 * r['clean']:.2f}% | "
                 f"{100 * r['poisoned']:.2f}% | {100 * (r['clean'] - r['poisoned']):.1f} |")
  if "L" in names:
    probe = linear_probe(work / "L", next(r["train_images"] for r in rows if r["row"] == "L"))
    (work / "linear_probe.json").write_text(json.dumps(probe, indent=2))
    lines += ["", f"linear probe (row L): {json.dumps(probe)}"]
  (work / "table.md").write_text("\n".join(lines) + "\n")
  (work / "table.json").write_text(json.dumps(rows, indent=2))
  print("\n".join(lines))
  return 0


if __name__ == "__main__":
  sys.exit(main())
