#!/usr/bin/env bash
# Set up jaxprotect on every worker of a Cloud TPU VM slice and launch a config on all hosts.
#
#   ./tpu_setup.sh TPU_NAME ZONE [CONFIG] [WORKDIR] [extra flags...]
#
# Example:
#   ./tpu_setup.sh my-v4-32 us-central2-b experiments/train.py:cifar10 gs://bucket/runs/c10 \
#       --config.data.dir=gs://bucket/tfds
#
# Every host runs the same command; jaxprotect calls jax.distributed.initialize() itself
# when it sees a multi-worker TPU slice (TPU_WORKER_HOSTNAMES), each host loads its data,
# and process 0 writes metrics and results (checkpoints are written by all hosts together).
set -euo pipefail
TPU_NAME=${1:?TPU name}
ZONE=${2:?zone}
CONFIG=${3:-experiments/train.py:cifar10}
WORKDIR=${4:-runs/tpu}
shift $(( $# < 4 ? $# : 4 ))
REPO_URL=${JAXPROTECT_REPO:-$(git config --get remote.origin.url || true)}
REF=${JAXPROTECT_REF:-$(git rev-parse HEAD 2>/dev/null || echo main)}

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"
}

ssh_all "set -e
  if [ ! -d jaxprotect ]; then git clone '$REPO_URL' jaxprotect; fi
  cd jaxprotect && git fetch -q origin && git checkout -q '$REF'
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[tpu]'"

ssh_all "cd jaxprotect && .venv/bin/jaxprotect train --config '$CONFIG' --workdir '$WORKDIR' $*"
