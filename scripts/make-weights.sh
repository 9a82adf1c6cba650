#!/usr/bin/env bash
# Make the pretrained Sparse Deep-stULM models shipped in the package
# (ulmtools/weights/deepstulm-{2d,3d}.zarr, used by 'ulm infer shipped:2d|3d').
#
# 2D recipe (issue 12, measured in ulmtools/weights/FINDINGS-2d.md): training movies
# from several vessel networks ("animals", --network-seed) at a mix of
# concentrations, 512 frames as at test time, channel-level simulation and
# beamforming as a user's data; validation on another network; the test networks
# (e.g. 101, 103) are never touched here. Everything is seeded.
#
# Resumable: data stores are made once (an interrupted one is redone), and an
# interrupted 'ulm train' continues from its checkpoint (--resume). Keep WORK to
# resume; it is removed at the end unless KEEP=1.
#
# Variables (defaults: the shipped CPU recipe, ~80 min on 2 CPU cores):
#   SCHEDULE=cpu-2d EPOCHS=16 CHANNELS=16 BATCH=2  training; on a GPU server the paper's
#                                schedule: SCHEDULE=paper-2d (its 300 epochs, width 16)
#   TRAIN_NETS, CONCENTRATIONS, MOVIES, FRAMES, VAL_NET, THRESHOLD   the 2D data
#   WEIGHTS_3D=0                 skip the 3D model
#   DEVICE=cpu|cuda|auto         OUT, WORK, KEEP
set -euo pipefail

OUT=${OUT:-ulmtools/weights}
WORK=${WORK:-build/weights-work}
DEVICE=${DEVICE:-cpu}
SCHEDULE=${SCHEDULE:-cpu-2d}
TRAIN_NETS=${TRAIN_NETS:-31 32 33 34 35 36 37 38}
CONCENTRATIONS=${CONCENTRATIONS:-1 5 10 20}
MOVIES=${MOVIES:-4}
FRAMES=${FRAMES:-512}
VAL_NET=${VAL_NET:-41}
THRESHOLD=${THRESHOLD:-0.25}
if [ "$SCHEDULE" = paper-2d ]; then
    EPOCHS=${EPOCHS:-300}
    CHANNELS=${CHANNELS:-16}
    BATCH=${BATCH:-8}
else
    EPOCHS=${EPOCHS:-16}
    CHANNELS=${CHANNELS:-16}
    BATCH=${BATCH:-2}
fi
WEIGHTS_3D=${WEIGHTS_3D:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT" "$WORK"
echo "working in $WORK" >&2

# A 2D sparse store: simulate (channel level) -> beamform -> sparsify, made once.
sparse2d() { # name network-seed concentration movies seed
    local name=$1 net=$2 conc=$3 movies=$4 seed=$5
    [ -d "$WORK/$name.zarr" ] && return 0
    ulm simulate "$WORK/$name-raw.zarr" --dim 2 --movies "$movies" --frames "$FRAMES" \
        --concentration "$conc" --network-seed "$net" --seed "$seed" -q -f
    ulm beamform "$WORK/$name-raw.zarr" "$WORK/$name-img.zarr" -q -f
    rm -rf "$WORK/$name-raw.zarr"
    ulm sparsify "$WORK/$name-img.zarr" "$WORK/$name.part.zarr" --threshold "$THRESHOLD" -q -f
    rm -rf "$WORK/$name-img.zarr"
    mv "$WORK/$name.part.zarr" "$WORK/$name.zarr"
}

train2d=()
for net in $TRAIN_NETS; do
    for c in $CONCENTRATIONS; do
        sparse2d "train2d-n$net-c$c" "$net" "$c" "$MOVIES" "$((net * 100 + ${c%.*}))"
        train2d+=("$WORK/train2d-n$net-c$c.zarr")
    done
done
sparse2d val2d "$VAL_NET" 5 4 "$((VAL_NET * 100 + 50))"

also=()
for s in "${train2d[@]:1}"; do also+=(--also "$s"); done
model2d="$WORK/deepstulm-2d.zarr"
resume=()
[ -d "$model2d.resume.zarr" ] && resume=(--resume)
if [ -n "${resume[*]}" ] || [ ! -d "$model2d" ]; then
    ulm train "${train2d[0]}" "$model2d" "${also[@]}" --val "$WORK/val2d.zarr" \
        --schedule "$SCHEDULE" --epochs "$EPOCHS" --channels "$CHANNELS" --batch-size "$BATCH" \
        --seed 0 --device "$DEVICE" --force "${resume[@]}"
fi
rm -rf "$OUT/deepstulm-2d.zarr"
cp -r "$model2d" "$OUT/deepstulm-2d.zarr"
# the model card 'ulm info shipped:2d' prints: recipe and held-out results, measured
CARD2D=${CARD2D:-ulmtools/weights/deepstulm-2d.card.txt}
if [ -f "$CARD2D" ]; then
    python - "$OUT/deepstulm-2d.zarr" "$CARD2D" <<'PY'
import sys

import zarr

zarr.open_group(sys.argv[1], mode="r+").attrs["card"] = open(sys.argv[2]).read()
PY
fi

if [ "$WEIGHTS_3D" != 0 ]; then
    # 3D+t: 8 + 2 movies of 32 frames, 10 bubbles per field of view, 32^3 at lambda/2;
    # pruning keeps the x8 up-samplings affordable on a CPU.
    ulm simulate "$WORK/train3d-img.zarr" --dim 3 --movies 8 --frames 32 --concentration 10 \
        --level image --network-seed 21 --seed 3 -q -f
    ulm simulate "$WORK/val3d-img.zarr" --dim 3 --movies 2 --frames 32 --concentration 10 \
        --level image --network-seed 22 --seed 4 -q -f
    ulm sparsify "$WORK/train3d-img.zarr" "$WORK/train3d.zarr" -q -f
    ulm sparsify "$WORK/val3d-img.zarr" "$WORK/val3d.zarr" -q -f
    OMP_NUM_THREADS=1 ulm train "$WORK/train3d.zarr" "$OUT/deepstulm-3d.zarr" \
        --val "$WORK/val3d.zarr" --schedule cpu-3d --epochs 40 --channels 8 --pruning \
        --seed 0 --device "$DEVICE" --force
    ulm info "$OUT/deepstulm-3d.zarr" >&2
fi

ulm info "$OUT/deepstulm-2d.zarr" >&2
[ -n "${KEEP:-}" ] || rm -rf "$WORK"
