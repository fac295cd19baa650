#!/usr/bin/env bash
# The label-budget table of issue #14: CIFAR-10 (../shared/data: 10k train / 1k test) with 250
# and 1000 labels, the rest of the split unlabelled, every method at the shared CPU budget
# (configs/<method>.py:cifar10,cpu: a 128-wide 4-block ViT, 200 steps, AdamW):
#
#   bash bench/label_budget.sh [ROOT=/tmp/label_budget] [LABELS ...]     (default: 250 1000)
#
# Rows: supervised on the labels alone, pseudo_label, mean_teacher, fixmatch, paws (soft-NN
# top-1), simclr (SimCLR v2: pretrain with a 3-layer head, once, then fine-tune from its middle
# layer on the labels) and distill (that fine-tuned network distilled into the same ViT on the
# unlabelled split), noisy_student (the fixmatch row's run labels the split with ssl_jax.label,
# then a noised student of the same ViT trains on labels + pseudo-labels; its seconds include
# the teacher's). Test top-1 of each run's classifier and the wall-clock seconds of all the
# row needed go to ROOT/rows.jsonl (one JSON line each, `python -m bench.label_budget row`);
# the markdown table is printed at the end and written to ROOT/table.md.
#
# METHODS="fixmatch paws" runs some rows only (simclr is pretrained for the simclr and distill
# rows); STEPS=N changes every run's length (200: the presets' budget; 100: the table in
# docs/results.md, 4-17 minutes a row on 2 shared cores; 2: a check of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
ROOT="${1:-/tmp/label_budget}"
shift || true
LABELS=("$@")
if [ ${#LABELS[@]} -eq 0 ]; then
  LABELS=(250 1000)
fi
ALL="supervised pseudo_label mean_teacher fixmatch paws simclr distill noisy_student"
read -r -a METHODS <<< "${METHODS:-$ALL}"
STEPS="${STEPS:-200}"
mkdir -p "$ROOT"

# Every run: the budget's length, no export or pictures.
RUN=(--config.total_steps="$STEPS" --config.epochs=0 --config.export_at_end=False
     --config.visualize=False --config.checkpoint_every=0)
# configs/supervised.py's cifar10 preset with common.cpu_budget's ViT (the simclr runs' backbone).
SUPERVISED=(--config configs/supervised.py:cifar10 --config.model.hidden_size=128
            --config.model.depth=4 --config.model.num_heads=4 --config.batch_size=64
            --config.eval.protocols=knn,linear,classifier)

train() {  # train WORKDIR ARGS...: runs ssl_jax.train and adds its seconds to $ELAPSED.
  local workdir=$1 start
  shift
  start=$(date +%s)
  "$PY" -m ssl_jax.train --workdir "$workdir" "$@" "${RUN[@]}"
  ELAPSED=$(( ELAPSED + $(date +%s) - start ))
}

record() {  # record WORKDIR METHOD LABELS [METRIC]
  "$PY" -m bench.label_budget row --workdir "$1" --method "$2" --labels "$3" \
    --wall_s "$ELAPSED" --metric "${4:-eval/top1}" | tee -a "$ROOT/rows.jsonl"
}

wants() { [[ " ${METHODS[*]} " == *" $1 "* ]]; }

PRETRAIN_S=0
if wants simclr || wants distill; then
  pretrain="$ROOT/simclr_pretrain"
  if [ ! -f "$pretrain/wall_s" ]; then  # Once per ROOT: a rerun of some rows reuses it.
    ELAPSED=0
    train "$pretrain" --config configs/simclr.py:cifar10,cpu,simclrv2
    echo "$ELAPSED" > "$pretrain/wall_s"
  fi
  PRETRAIN_S=$(cat "$pretrain/wall_s")
fi

for labels in "${LABELS[@]}"; do
  subset="per_class:$(( labels / 10 ))"
  for method in "${METHODS[@]}"; do
    workdir="$ROOT/${method}_${labels}"
    ELAPSED=0
    case "$method" in
      supervised)
        train "$workdir" "${SUPERVISED[@]}" --config.data.train_subset="$subset"
        record "$workdir" "supervised (labels only)" "$labels" ;;
      pseudo_label|mean_teacher|fixmatch)
        train "$workdir" --config "configs/$method.py:cifar10,cpu" \
          --config.data.train_subset="$subset"
        echo "$ELAPSED" > "$workdir/wall_s"  # The noisy_student row's teacher.
        record "$workdir" "$method" "$labels" ;;
      noisy_student)
        teacher="$ROOT/fixmatch_${labels}"
        if [ ! -f "$teacher/wall_s" ]; then
          train "$teacher" --config configs/fixmatch.py:cifar10,cpu \
            --config.data.train_subset="$subset"
          echo "$ELAPSED" > "$teacher/wall_s"
        fi
        ELAPSED=$(cat "$teacher/wall_s")
        start=$(date +%s)
        read_source="from ssl_jax import runs; print(runs.load_config('$teacher').data.source)"
        source=$("$PY" -c "$read_source")
        "$PY" -m ssl_jax.label --workdir "$teacher" --data "$source" \
          --out "$ROOT/labels_${labels}.npz"
        ELAPSED=$(( ELAPSED + $(date +%s) - start ))
        train "$workdir" --config configs/noisy_student.py:cifar10,cpu \
          --config.data.train_subset="$subset" \
          --config.data.streams.pseudo_labeled.labels_file="$ROOT/labels_${labels}.npz"
        record "$workdir" "fixmatch -> noisy_student" "$labels" ;;
      paws)
        train "$workdir" --config configs/paws.py:cifar10,cpu --config.data.train_subset="$subset"
        record "$workdir" paws "$labels" eval/softnn_top1 ;;
      simclr|distill)
        finetune="$ROOT/simclr_finetune_${labels}"
        ELAPSED=$PRETRAIN_S
        if [ ! -d "$finetune/checkpoints" ]; then
          train "$finetune" "${SUPERVISED[@]}" --config.data.train_subset="$subset" \
            --config.method.init_from="$ROOT/simclr_pretrain" --config.method.init_head_layers=1 \
            --config.method.init_head_hidden_dim=512
          echo "$ELAPSED" > "$finetune/wall_s"
        fi
        ELAPSED=$(cat "$finetune/wall_s")
        if [ "$method" = simclr ]; then
          record "$finetune" "simclr v2 pretrain + fine-tune" "$labels"
        else
          train "$workdir" --config configs/distill.py:cifar10,cpu \
            --config.method.teacher_workdir="$finetune"
          record "$workdir" "simclr v2 + distill" "$labels"
        fi ;;
      *)
        echo "label_budget.sh: unknown method $method" >&2
        exit 1 ;;
    esac
  done
done
"$PY" -m bench.label_budget table "$ROOT/rows.jsonl" | tee "$ROOT/table.md"
