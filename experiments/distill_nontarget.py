"""What DKD's non-target term sees in each teacher: the teachers' non-target output distributions
on the test split, compared with the first (CE) teacher's.

  python experiments/distill_nontarget.py [--temperature 4] [--out FILE.md] CE_TEACHER_DIR TEACHER_DIR...

For every example ``x`` of class ``y``, ``q(x)`` is the teacher's non-target distribution at
temperature ``T``: ``softmax(z(x) / T)`` over the classes ``j != y``, renormalised -- the
distribution DKD's NCKD term makes the student match (Zhao et al., CVPR 2022). ``Q_k`` is its
class mean over the test examples of class ``k`` (the class-level non-target distribution).
Columns, per teacher (TV = total variation distance, in [0, 1]):

* ``CMI(T)`` -- the CMI of the full output distribution at ``T``: mean ``KL(p(x) || P_y)`` with
  ``P_y`` the class mean of ``p(x) = softmax(z(x) / T)`` (what the CMIM penalty lowers);
* ``p_target`` -- mean ``p_y(x)`` at ``T`` (what DKD's TCKD term sees);
* ``non-target entropy`` -- mean ``H(q(x)) / log(K - 1)``: 1 for a uniform non-target
  distribution;
* ``within-class TV`` -- mean ``TV(q(x), Q_y)``: how much the non-target distribution varies
  around its class mean;
* ``class TV vs CE`` -- mean over classes of ``TV(Q_k, Q_k^CE)``: how far the class-level
  non-target distribution is from the CE teacher's;
* ``example TV vs CE`` -- mean ``TV(q(x), q^CE(x))``, example by example;
* ``top non-target = CE`` -- the fraction of classes whose most likely non-target class
  (``argmax Q_k``) is the CE teacher's.

A second CE teacher (another seed) among the teachers gives the noise floor of the ``vs CE``
columns. Prints a Markdown table (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from jaxprotect import data, losses  # noqa: E402
from jaxprotect.distill import teacher as teacher_lib  # noqa: E402


def test_logits(teacher_dir: str, batch: int = 500) -> tuple[np.ndarray, np.ndarray, dict]:
  """The teacher's logits on its dataset's test split, the labels, and its manifest."""
  model, variables, manifest = teacher_lib.load_teacher(teacher_dir)
  ds = manifest["dataset"]
  host = data.load_arrays(ds["name"], ds.get("dir"))
  images, labels = host.test.images, np.asarray(host.test.labels)
  apply = jax.jit(lambda x: model.apply(variables, x, train=False)[0])
  out = [np.asarray(apply(jnp.asarray(images[i:i + batch], jnp.float32) / 255.0)) for i in range(0, len(labels), batch)]
  return np.concatenate(out).astype(np.float64), labels, manifest


def _softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def nontarget(logits: np.ndarray, labels: np.ndarray, temperature: float) -> np.ndarray:
  """``q(x)``: N x K, 0 at the true class, the other entries summing to 1."""
  z = logits / temperature
  z = np.where(np.eye(z.shape[1], dtype=bool)[labels], -np.inf, z)
  return _softmax(z)


def class_means(v: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  return np.stack([v[labels == c].mean(0) for c in range(k)])


def tv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return 0.5 * np.abs(a - b).sum(-1)


def teacher_label(manifest: dict, directory: str) -> str:
  s = manifest.get("settings", {})
  if manifest["method"] == "cmim" and "cmim" in s:
    c = s["cmim"]
    return f"cmim lam={c['lam']:g} {c['aggregation']}/{c['weighting']} [{pathlib.Path(directory).name}]"
  if manifest["method"] == "nasty" and "nasty" in s:
    return f"nasty tau={s['nasty']['tau']:g} omega={s['nasty']['omega']:g} [{pathlib.Path(directory).name}]"
  return f"{manifest['method']} [{pathlib.Path(directory).name}]"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("teachers", nargs="+", help="teacher run directories; the first is the CE reference")
  p.add_argument("--temperature", type=float, default=4.0, help="T of the outputs (DKD's: 4)")
  p.add_argument("--out", default="", help="also write the Markdown table here (and a .json beside it)")
  args = p.parse_args(argv)
  t = args.temperature
  ref_logits, labels, ref_manifest = test_logits(args.teachers[0])
  k = ref_logits.shape[1]
  ref_q = nontarget(ref_logits, labels, t)
  ref_qk = class_means(ref_q, labels, k)
  rows = []
  for d in args.teachers:
    logits, lab, manifest = (ref_logits, labels, ref_manifest) if d == args.teachers[0] else test_logits(d)
    if not np.array_equal(lab, labels):
      raise ValueError(f"{d}: a different test split from {args.teachers[0]}")
    q = nontarget(logits, labels, t)
    qk = class_means(q, labels, k)
    cents = np.asarray(losses.class_mean_centroids(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                                   jnp.asarray([t], jnp.float32))[0])
    cmi = float(np.mean(np.asarray(losses.cmi(jnp.asarray(logits, jnp.float32), jnp.asarray(labels),
                                              jnp.asarray(cents), t))))
    p_t = _softmax(logits / t)[np.arange(len(labels)), labels]
    rows.append({
        "teacher": teacher_label(manifest, d), "dir": d, "test_accuracy": manifest["test_accuracy"],
        "cmi": cmi, "p_target": float(p_t.mean()),
        "nontarget_entropy": float(np.mean(-np.sum(q * np.log(np.maximum(q, 1e-30)), -1)) / np.log(k - 1)),
        "within_class_tv": float(tv(q, qk[labels]).mean()),
        "class_tv_vs_ce": float(tv(qk, ref_qk).mean()),
        "example_tv_vs_ce": float(tv(q, ref_q).mean()),
        "top_nontarget_agree": float(np.mean(qk.argmax(-1) == ref_qk.argmax(-1))),
    })
  lines = [f"Non-target distributions at T = {t:g} on the test split ({len(labels)} images); reference (CE): "
           f"{rows[0]['teacher']}", "",
           "| teacher | test acc | CMI(T) | p_target | non-target entropy | within-class TV | class TV vs CE | "
           "example TV vs CE | top non-target = CE |", "|" + " --- |" * 9]
  for r in rows:
    lines.append(f"| {r['teacher']} | {100 * r['test_accuracy']:.2f} | {r['cmi']:.4f} | {r['p_target']:.3f} | "
                 f"{r['nontarget_entropy']:.3f} | {r['within_class_tv']:.3f} | {r['class_tv_vs_ce']:.3f} | "
                 f"{r['example_tv_vs_ce']:.3f} | {r['top_nontarget_agree']:.1f} |")
  md = "\n".join(lines) + "\n"
  print(md)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"temperature": t, "teachers": rows}, indent=2))
  return 0


if __name__ == "__main__":
  sys.exit(main())
