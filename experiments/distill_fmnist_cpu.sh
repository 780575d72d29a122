#!/bin/bash
# The reduced CPU undistillability experiment of docs/results/undistillable.md (embedded 10k/2k Fashion-MNIST
# slice): CE, Nasty and CMIM (lambda 0.2, 1, 5) small-CNN teachers (width 16, 5 epochs);
# MLP 256-256 students (5 epochs, seeds 0 and 1) under every attack; the report.
# Usage: bash experiments/distill_fmnist_cpu.sh [RUN_DIR]   (about 15 minutes on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/cmim_exp}
J=${J:-.venv/bin/jaxprotect}
RT="--config.runtime.progress=False --config.runtime.num_devices=1"
T="$RT --config.teacher.epochs=5 --config.teacher.model_kwargs.width=16"
S="$RT --config.student.epochs=5 --config.attacks.seeds=(0,1) --config.attacks.kd.temperatures=(1.0,4.0,20.0)"
KO="--config.attacks.names=('kd','dkd','skeptical','hard','mse')"
V=experiments/cmim.py:fashion_mnist_mini
$J distill teacher --config $V,ce $T --workdir $R/teacher_ce
$J distill teacher --config $V,nasty $T --config.nasty.reference=$R/teacher_ce --workdir $R/teacher_nasty
for lam in 0.2 1.0 5.0; do
  $J distill teacher --config $V,cmim $T --config.cmim.lam=$lam --workdir $R/teacher_cmim_lam$lam
done
$J distill attack --config $V $S --config.attacks.teacher=$R/teacher_ce --workdir $R/attack_ce
runs=$R/attack_ce
for t in nasty cmim_lam0.2 cmim_lam1.0 cmim_lam5.0; do
  $J distill attack --config $V $S $KO --config.attacks.teacher=$R/teacher_$t --workdir $R/attack_$t
  runs=$runs,$R/attack_$t
done
$J distill report --workdir $R/report --runs $runs
