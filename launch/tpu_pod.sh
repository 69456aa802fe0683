#!/usr/bin/env bash
# GCD training on a Cloud TPU pod slice: create the VMs, install the repo on every worker, run on all workers.
#
#   TPU_NAME=gcd-v5e-64 ZONE=us-west4-a ACCELERATOR=v5litepod-64 PROJECT=my-proj \
#   WORKDIR=gs://my-bucket/gcd/kubric_gradual_max90 INIT=gs://my-bucket/ckpt/svd \
#   CONFIG=configs/gcd.py:data=kubric,traj=gradual,az=90 bash launch/tpu_pod.sh [create|setup|run|delete|all]
#
# jax.distributed.initialize() auto-detects the pod on TPU VMs (no coordinator flags). Each worker reads its own
# data shard (process index) and writes its own checkpoint shards to WORKDIR (use a GCS bucket).
# Extra `--config.x=y` overrides: EXTRA="--config.batch_size=64 --config.checkpoint.every_steps=1000".
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${PROJECT:?set PROJECT}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR=${ACCELERATOR:-v5litepod-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
REPO_URL=${REPO_URL:-https://github.com/YOUR_ORG/gcd-jax.git}
BRANCH=${BRANCH:-main}
CONFIG=${CONFIG:-configs/gcd.py:data=kubric,traj=gradual,az=90}
INIT=${INIT:-}
EXTRA=${EXTRA:-}
DATA_DIR=${DATA_DIR:-gs://my-bucket/tensorflow_datasets}
STEP=${1:-all}

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --worker=all --command "$1"
}

if [[ $STEP == create || $STEP == all ]]; then
  gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
    --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
fi
if [[ $STEP == setup || $STEP == all ]]; then
  ssh_all "set -e; if [ ! -d gcd-jax ]; then git clone -b $BRANCH $REPO_URL gcd-jax; fi; cd gcd-jax && git pull && \
    python3 -m pip install -U pip && python3 -m pip install -r requirements.txt 'jax[tpu]' && python3 -m pip install -e ."
fi
if [[ $STEP == run || $STEP == all ]]; then
  INIT_FLAG=""
  if [[ -n $INIT ]]; then INIT_FLAG="--config.init_checkpoint=$INIT"; fi
  # nohup + log per worker: the ssh session may drop; re-running `run` resumes from WORKDIR's latest checkpoint.
  ssh_all "cd gcd-jax && nohup gcd-jax train --config '$CONFIG' --workdir '$WORKDIR' \
    --config.data.data_dir='$DATA_DIR' $INIT_FLAG $EXTRA > train_\$(hostname).log 2>&1 &"
  echo "started; follow with: gcloud compute tpus tpu-vm ssh $TPU_NAME --zone $ZONE --worker=0 --command 'tail -f gcd-jax/train_*.log'"
fi
if [[ $STEP == delete ]]; then
  gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --quiet
fi
