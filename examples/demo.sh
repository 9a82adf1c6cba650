#!/usr/bin/env bash
# The ulm pipeline end to end on a small 2D data set (a few minutes on 2 CPU cores).
# Run with `make demo`; outputs go to ./demo (or $DEMO_DIR).
#
#   simulate -> beamform -> sparsify -> train -> infer, then inspect the stores.
set -euo pipefail
out=${DEMO_DIR:-demo}
mkdir -p "$out"
step() { printf '\n== %s\n' "$*" >&2; }

step "simulate: training and test sets from two different vessel networks"
ulm simulate "$out/train.zarr" --movies 4 --frames 64 --seed 1 --network-seed 1 -f
ulm simulate "$out/test.zarr" --movies 2 --frames 64 --seed 2 --network-seed 2 -f
ulm simulate "$out/random.zarr" --vessels random --movies 2 --frames 64 --seed 3 -f
ulm info "$out/train.zarr"

step "beamform: delay-and-sum, compounding, PSF correlation"
ulm beamform "$out/train.zarr" "$out/train_img.zarr" -f
ulm beamform "$out/test.zarr" "$out/test_img.zarr" -f

step "sparsify: keep the active sites (threshold 0.10 on |corr|^2, and top-k)"
ulm sparsify "$out/train_img.zarr" "$out/train_sparse.zarr" -f
ulm sparsify "$out/test_img.zarr" "$out/test_sparse.zarr" -f
ulm sparsify "$out/test_img.zarr" "$out/test_topk.zarr" --method topk --k 20000 -f --json
# the learned dense-to-sparse: a small Mask CNN trained on the training images' truth
ulm train "$out/train_img.zarr" "$out/mask.zarr" --arch mask-cnn --epochs 2 --seed 0 -f
ulm sparsify "$out/test_img.zarr" "$out/test_masked.zarr" --method mask --mask-model "$out/mask.zarr" -f

step "train: a narrow Sparse Deep-stULM for a few epochs (a CPU demo, not a real model)"
ulm train "$out/train_sparse.zarr" "$out/model.zarr" --val "$out/test_sparse.zarr" \
    --schedule cpu-2d --epochs 3 --channels 8 --seed 0 --device cpu -f

step "infer: super-resolved track maps and the angiogram on the x8 grid"
ulm infer "$out/model.zarr" "$out/test_sparse.zarr" "$out/pred.zarr" -f
ulm infer shipped:2d "$out/test_sparse.zarr" "$out/pred_shipped.zarr" -f
ulm info "$out/pred_shipped.zarr"

step "a lab's own beamformed IQ, described as a store, clutter-filtered"
python - "$out/lab.zarr" <<'PY'
import sys
import numpy as np
from ulmtools.acquisition import preset
from ulmtools.store import create_store, provenance_entry, write_array
grid = preset("2d").grid()
rng = np.random.default_rng(0)
iq = (rng.normal(size=(1, 64, *grid.shape)) + 1j * rng.normal(size=(1, 64, *grid.shape)))
with create_store(sys.argv[1], "image", grid=grid, axes=("movie", "t", "z", "x"),
                  provenance=[provenance_entry("import", {"source": "demo"})], force=True) as root:
    write_array(root, "iq", iq.astype(np.complex64), dims=("movie", "t", "z", "x"))
PY
ulm beamform "$out/lab.zarr" "$out/lab_filtered.zarr" --clutter svd:2 --no-correlate -f
ulm info "$out/lab_filtered.zarr"
