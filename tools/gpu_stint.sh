#!/usr/bin/env bash
# The GPU stint: on one GPU, in about 8 minutes, train the independent judge and two wider CIFAR-10 RCDMs on the
# shipped encoder's backbone (the current recipe, and the same plus REPA at equal wall time, sharing the GPU), score
# them beside the shipped models, and leave what a remote machine can send back in $OUT (at most 8 files):
#     judge/config.json, judge/model.safetensors      the judge (fp16)
#     cand/pipeline-0000{1,2}-of-00002.safetensors    the better candidate on the choosing images, packed
#     results.tar.gz                                  log, scores.jsonl, losses, configs, the throughput probe
# Afterwards, here: `python tools/pack_pipeline.py unpack OUT/cand runs/NAME` gives a pipeline directory.
#
#     bash tools/gpu_stint.sh                                   # on the GPU machine (device tool: carry .device)
#     SMOKE=1 OUT=/tmp/o DATA=tests/data/cifar10_small.npz bash tools/gpu_stint.sh   # the same path, tiny, on CPU
#
# Inputs: DATA (packed-JPEG CIFAR-10 npz; default .device/cifar10_jpeg.npz), and where the machine lacks them,
# diffusers as $DEPS/diffusers.tar.xz (the package folders, tar -cJ) and wheels in $DEPS/whl/ (DEPS=.device).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=${SMOKE:-0}
OUT=${OUT:-runs/gpu_stint/out}
WORK=${WORK:-$(mktemp -d /tmp/gpu_stint.XXXX)}
DATA=${DATA:-.device/cifar10_jpeg.npz}
DEPS=${DEPS:-.device}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
LOG="$WORK/log.txt"
say() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }

if [ -f "$DEPS/diffusers.tar.xz" ] && ! $PY -c "import diffusers" 2>/dev/null; then
    mkdir -p /tmp/site && tar xJf "$DEPS/diffusers.tar.xz" -C /tmp/site
    for w in "$DEPS"/whl/*.whl; do [ -f "$w" ] && $PY -m zipfile -e "$w" /tmp/site; done
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
rcdm() { $PY -c 'import sys; from rcdm.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }

if [ "$SMOKE" = 1 ]; then
    JUDGE=(--smoke --limit 128); WIDTHS=(16 32 32); EXTRA=(--norm-num-groups 8 --attention-head-dim 8)
    BATCH=8; BUDGET_S=0; STEPS=3; WORKERS=0; DEVICE=cpu; EVAL_BATCH=16; EVAL_STEPS=(--steps 2)
    SETS=(reported=0:4 choosing=4:4 fd500=0:6:1); SEEDS=(0 1)
else
    JUDGE=(--epochs 80); WIDTHS=(96 192 192); EXTRA=()
    BATCH=256; BUDGET_S=${BUDGET_S:-240}; STEPS=3000; WORKERS=5; DEVICE=cuda; EVAL_BATCH=1000; EVAL_STEPS=()
    SETS=(reported=0:200 choosing=5000:400 fd500=0:500:1); SEEDS=(0 1 2)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$LOG"
fi
$PY -c "import torch, diffusers, accelerate; print('torch', torch.__version__, 'diffusers', diffusers.__version__, \
'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$LOG"

# 1. the judge, in the background; the embedding cache of the training split meanwhile
say "judge: training"
$PY tools/train_judge.py --data "$DATA" --out "$WORK/judge" --device "$DEVICE" "${JUDGE[@]}" > "$WORK/judge.log" 2>&1 &
JUDGE_PID=$!
say "embed: backbone of the shipped encoder, train split"
rcdm embed --encoder pretrained:simclr-cifar10-r18w32 --layer backbone --data "$DATA:train" \
    --out "$WORK/emb-backbone.safetensors" --batch-size 1000 --device "$DEVICE" 2>&1 | tail -n 3 | tee -a "$LOG"

# 2. two candidates: the current recipe (v-prediction, uniform weights, mean decoder, EMA) 1.5x wider, +/- REPA
train_run() {  # NAME MAX_STEPS EXTRA... ; the --max-minutes guard stops a slow run with its export
    local name=$1 steps=$2; shift 2
    rcdm train --preset cifar10-32 --data "$DATA:train" --cache "$WORK/emb-backbone.safetensors" \
        --output-dir "$WORK/$name" --block-out-channels "${WIDTHS[@]}" --attention-levels 2 "${EXTRA[@]}" \
        --batch-size "$BATCH" --lr 1e-3 --warmup-steps 200 --lr-schedule cosine --snr-gamma 0 --max-steps "$steps" \
        --max-minutes "$($PY -c "print(($BUDGET_S + 60) / 60)")" --num-workers "$WORKERS" --log-every 25 --sample-every 0 \
        --eval-data none --checkpoint-every 1000000 --export-dtype float16 --report-to tensorboard "$@" \
        > "$WORK/$name.log" 2>&1
}
rate() { $PY -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])['img_per_s'])" \
    "$WORK/$1/losses.jsonl" 2>/dev/null || echo 0; }
steps_for() { $PY -c "import sys; r=float(sys.argv[1]); print(int(0.8*r*$BUDGET_S/$BATCH) if r > 0 else $STEPS)" "$1"; }
S_PLAIN=$STEPS; S_REPA=$STEPS
if [ "$BUDGET_S" -gt 0 ]; then
    say "probe: 50 steps of each, side by side"
    train_run probe-plain 50 & P1=$!
    train_run probe-repa 50 --repa-weight 0.5 & P2=$!
    wait "$P1" "$P2"
    R_PLAIN=$(rate probe-plain); R_REPA=$(rate probe-repa)
    S_PLAIN=$(steps_for "$R_PLAIN"); S_REPA=$(steps_for "$R_REPA")
    say "probe img/s: plain $R_PLAIN, repa $R_REPA -> steps $S_PLAIN, $S_REPA in ${BUDGET_S}s each"
fi
say "train: plain and repa, side by side"
train_run plain "$S_PLAIN" & PLAIN_PID=$!
train_run repa "$S_REPA" --repa-weight 0.5 & REPA_PID=$!
wait "$JUDGE_PID"; say "judge: $(tail -n 1 "$WORK/judge.log")"
mkdir -p "$OUT/judge" && cp "$WORK/judge/config.json" "$WORK/judge/model.safetensors" "$OUT/judge/"

# 3. the shipped models' scores, while the candidates train; then the candidates'
score() {  # OUTFILE LABEL=DIR...
    local out=$1; shift
    $PY tools/score_models.py --model "$@" --data "$DATA:test" --classifier "$WORK/judge" --set "${SETS[@]}" \
        --seeds "${SEEDS[@]}" --device "$DEVICE" --batch-size "$EVAL_BATCH" "${EVAL_STEPS[@]}" \
        --out "$WORK/scores.jsonl" \
        > "$WORK/$out" 2>&1
}
say "score: shipped models"
score score-shipped.log backbone=pretrained/rcdm-cifar10-backbone projector=pretrained/rcdm-cifar10-projector
wait "$PLAIN_PID"; wait "$REPA_PID"
say "trained: plain $(tail -n 1 "$WORK/plain/losses.jsonl" 2>/dev/null), repa $(tail -n 1 "$WORK/repa/losses.jsonl" 2>/dev/null)"
say "score: candidates"
score score-candidates.log plain="$WORK/plain/pipeline" repa="$WORK/repa/pipeline"
tail -n 8 "$WORK/score-shipped.log" "$WORK/score-candidates.log" | tee -a "$LOG"

# 4. the better candidate on the choosing images (judge accuracy on samples, then judge FD), packed
BEST=$($PY - "$WORK/scores.jsonl" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
def key(model):
    mine = [r for r in rows if r["model"] == model and r["set"] == "choosing"]
    return (statistics.fmean(r["clf_acc_samples"] for r in mine), -statistics.fmean(r["clf_fd"] for r in mine))
print(max([m for m in ("plain", "repa") if any(r["model"] == m for r in rows)], key=key))
EOF
)
say "best candidate on the choosing images: ${BEST:-none}"
[ -n "$BEST" ] && $PY tools/pack_pipeline.py pack "$WORK/$BEST/pipeline" "$OUT/cand" --max-mib 15 | tee -a "$LOG"
echo "$BEST" > "$WORK/best.txt"

# 5. the training-throughput benchmark, if the time allows
if [ "$SMOKE" != 1 ] && [ "$SECONDS" -lt 430 ]; then
    say "benchmark: gpu_train (short budget)"
    timeout 80 $PY benchmarks/gpu_train.py --out "$WORK/gpu_train" --time-budget 50 > "$WORK/gpu_train.log" 2>&1
fi
say "done"
tar czf "$OUT/results.tar.gz" -C "$WORK" --exclude='*.safetensors' --exclude='events.out.*' --exclude='pipeline' \
    --exclude='checkpoints' . 2>/dev/null
ls -la "$OUT" "$OUT"/* | tee -a "$LOG"
