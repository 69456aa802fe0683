#!/usr/bin/env bash
# GCD training on Cloud TPU: one pod slice, or several slices joined over the data-centre network (multi-slice).
#
#   TPU_NAME=gcd-v5e-64 ZONE=us-west4-a ACCELERATOR=v5litepod-64 PROJECT=my-proj \
#   WORKDIR=gs://my-bucket/gcd/kubric_gradual_max90 INIT=gs://my-bucket/ckpt/svd \
#   CONFIG=configs/gcd.py:data=kubric,traj=gradual,az=90 bash launch/tpu_pod.sh [create|setup|run|delete|all]
#
#   SLICES=2 ... bash launch/tpu_pod.sh all      # 2 slices of ACCELERATOR each (queued resource, multi-slice)
#
# jax.distributed.initialize() auto-detects the pod on TPU VMs (no coordinator flags); in a multi-slice queued
# resource libtpu joins the slices over DCN (MEGASCALE_* variables are set on the VMs). With SLICES > 1 the
# trainer's mesh is hybrid: --config.mesh.dcn_shape="(SLICES,1,1)" puts the 'data' axis across slices (one
# gradient all-reduce per step over DCN) and FSDP within each slice over ICI (gcd_jax/train/sharding.py:
# make_mesh). bench/tpu_compile.py --slices 2 compiles that program for a named topology, without a TPU.
# Each worker reads its own data shard (process index) and writes its own checkpoint shards to WORKDIR (use a
# GCS bucket). Extra `--config.x=y` overrides: EXTRA="--config.batch_size=64 --config.checkpoint.every_steps=1000".
# On v5p (95 GiB/chip) keep activations instead of recomputing them, with 8-9 videos per chip, e.g. a v5p-64
# (32 chips): EXTRA="--config.model.remat=none --config.batch_size=256" (by the TPU compiler: 89.70 GiB per chip
# at 8 videos, 89.92 at 9; MFU ceiling 73-74 % against 58 % for remat full; docs/performance.md).
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${PROJECT:?set PROJECT}" "${WORKDIR:?set WORKDIR}"
ACCELERATOR=${ACCELERATOR:-v5litepod-64}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
SLICES=${SLICES:-1}
REPO_URL=${REPO_URL:-https://github.com/YOUR_ORG/gcd-jax.git}
BRANCH=${BRANCH:-main}
CONFIG=${CONFIG:-configs/gcd.py:data=kubric,traj=gradual,az=90}
INIT=${INIT:-}
EXTRA=${EXTRA:-}
DATA_DIR=${DATA_DIR:-gs://my-bucket/tensorflow_datasets}
STEP=${1:-all}

# The VMs to address: the slice itself, or every slice of the queued resource (named TPU_NAME-0, -1, ...).
nodes() {
  if (( SLICES > 1 )); then for ((i = 0; i < SLICES; i++)); do echo "$TPU_NAME-$i"; done; else echo "$TPU_NAME"; fi
}

ssh_all() {
  local node
  for node in $(nodes); do
    gcloud compute tpus tpu-vm ssh "$node" --zone "$ZONE" --project "$PROJECT" --worker=all --command "$1" &
  done
  wait
}

if [[ $STEP == create || $STEP == all ]]; then
  if (( SLICES > 1 )); then
    gcloud compute tpus queued-resources create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
      --accelerator-type "$ACCELERATOR" --runtime-version "$RUNTIME" --node-count "$SLICES" --node-prefix "$TPU_NAME"
    echo "queued; wait for ACTIVE: gcloud compute tpus queued-resources describe $TPU_NAME --zone $ZONE"
  else
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME"
  fi
fi
if [[ $STEP == setup || $STEP == all ]]; then
  ssh_all "set -e; if [ ! -d gcd-jax ]; then git clone -b $BRANCH $REPO_URL gcd-jax; fi; cd gcd-jax && git pull && \
    python3 -m pip install -U pip && python3 -m pip install -e '.[tpu]'"
fi
if [[ $STEP == run || $STEP == all ]]; then
  INIT_FLAG=""
  if [[ -n $INIT ]]; then INIT_FLAG="--config.init_checkpoint=$INIT"; fi
  MESH_FLAG=""
  if (( SLICES > 1 )); then MESH_FLAG="--config.mesh.dcn_shape=($SLICES,1,1)"; fi
  # nohup + log per worker: the ssh session may drop; re-running `run` resumes from WORKDIR's latest checkpoint.
  ssh_all "cd gcd-jax && nohup gcd-jax train --config '$CONFIG' --workdir '$WORKDIR' \
    --config.data.data_dir='$DATA_DIR' $INIT_FLAG $MESH_FLAG $EXTRA > train_\$(hostname).log 2>&1 &"
  echo "started; follow with: gcloud compute tpus tpu-vm ssh $(nodes | head -1) --zone $ZONE --worker=0 --command 'tail -f gcd-jax/train_*.log'"
fi
if [[ $STEP == delete ]]; then
  if (( SLICES > 1 )); then
    gcloud compute tpus queued-resources delete "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --force --quiet
  else
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --project "$PROJECT" --quiet
  fi
fi
