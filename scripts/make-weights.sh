#!/usr/bin/env bash
# Make the small pretrained Sparse Deep-stULM models shipped in the package
# (ulmtools/weights/deepstulm-{2d,3d}.zarr, used by 'ulm infer shipped:2d|3d').
#
# Simulates training and validation sets from *different* vessel networks
# (--network-seed), sparsifies them with the paper's thresholds and trains a
# narrow network (--channels 8) with a CPU schedule. Everything is seeded.
# Run with 'make weights' (about 15-20 minutes on 2 CPU cores).
set -euo pipefail

OUT=${OUT:-ulmtools/weights}
WORK=${WORK:-$(mktemp -d -t ulm-weights-XXXXXX)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT" "$WORK"
echo "working in $WORK" >&2

# 2D+t: 24 + 4 movies of 128 frames, 5 bubbles per field of view, 32x32 at lambda/4.
ulm simulate "$WORK/train2d-img.zarr" --dim 2 --movies 24 --frames 128 --level image \
    --network-seed 11 --seed 1 -q -f
ulm simulate "$WORK/val2d-img.zarr" --dim 2 --movies 4 --frames 128 --level image \
    --network-seed 12 --seed 2 -q -f
ulm sparsify "$WORK/train2d-img.zarr" "$WORK/train2d.zarr" -q -f
ulm sparsify "$WORK/val2d-img.zarr" "$WORK/val2d.zarr" -q -f
ulm train "$WORK/train2d.zarr" "$OUT/deepstulm-2d.zarr" --val "$WORK/val2d.zarr" \
    --schedule cpu-2d --epochs 20 --channels 8 --seed 0 --device cpu --force

# 3D+t: 8 + 2 movies of 32 frames, 10 bubbles per field of view, 32^3 at lambda/2;
# pruning keeps the x8 up-samplings affordable on a CPU.
ulm simulate "$WORK/train3d-img.zarr" --dim 3 --movies 8 --frames 32 --concentration 10 \
    --level image --network-seed 21 --seed 3 -q -f
ulm simulate "$WORK/val3d-img.zarr" --dim 3 --movies 2 --frames 32 --concentration 10 \
    --level image --network-seed 22 --seed 4 -q -f
ulm sparsify "$WORK/train3d-img.zarr" "$WORK/train3d.zarr" -q -f
ulm sparsify "$WORK/val3d-img.zarr" "$WORK/val3d.zarr" -q -f
ulm train "$WORK/train3d.zarr" "$OUT/deepstulm-3d.zarr" --val "$WORK/val3d.zarr" \
    --schedule cpu-3d --epochs 40 --channels 8 --pruning --seed 0 --device cpu --force

ulm info "$OUT/deepstulm-2d.zarr" >&2
ulm info "$OUT/deepstulm-3d.zarr" >&2
[ -n "${KEEP:-}" ] || rm -rf "$WORK"
