#!/usr/bin/env bash
# The ulm pipeline end to end, ending with its result: the shipped Sparse Deep-stULM
# network and conventional ULM (ulm track) scored against the ground truth of a vessel
# network neither has seen. Run with `make demo` (2D) or `make demo-3d`; outputs go to
# ./demo (or $DEMO_DIR). A couple of minutes on 2 CPU cores.
#
#   simulate -> beamform -> sparsify -> infer shipped:2d  \
#                        \-> track                        -> score (table + figure)
set -euo pipefail
dim=${DEMO_DIM:-2}
out=${DEMO_DIR:-demo}
if [ "$dim" = 3 ]; then
    # the paper's 3D test setting: 30 bubbles per field of view, 750 Hz, 32^3 at lambda/2
    movies=${DEMO_MOVIES:-2} frames=${DEMO_FRAMES:-128} concentration=${DEMO_CONCENTRATION:-30}
else
    movies=${DEMO_MOVIES:-4} frames=${DEMO_FRAMES:-512} concentration=${DEMO_CONCENTRATION:-10}
fi
# network 102 is used by nothing else: not to train the shipped weights, not to tune ulm track
network=${DEMO_NETWORK:-102}
mkdir -p "$out"
step() { printf '\n== %s\n' "$*" >&2; }

step "simulate: $movies movies x $frames frames, ${dim}D, $concentration bubbles per field of view, vessel network $network"
ulm simulate "$out/test$dim.zarr" --dim "$dim" --movies "$movies" --frames "$frames" \
    --concentration "$concentration" --network-seed "$network" --seed 1 -f

step "beamform: delay-and-sum, compounding, SVD clutter filter, PSF correlation"
ulm beamform "$out/test$dim.zarr" "$out/img$dim.zarr" -f

step "sparsify: the active sites the network sees (threshold on abs(corr)^2; in 3D each also carries the IQ)"
ulm sparsify "$out/img$dim.zarr" "$out/sparse$dim.zarr" -f

step "infer: the shipped Sparse Deep-stULM on the sparse movies"
ulm infer "shipped:${dim}d" "$out/sparse$dim.zarr" "$out/network$dim.zarr" -f

step "track: conventional ULM (maxima, Gaussian fit, Hungarian tracking) on the beamformed IQ"
ulm track "$out/img$dim.zarr" "$out/tracks$dim.zarr" -f

step "score: both against the ground truth, $movies movies accumulated"
ulm score "$out/network$dim.zarr" "$out/tracks$dim.zarr" --truth "$out/test$dim.zarr" \
    --figure "$out/score$dim.png" -o "$out/score$dim.json" -f -q
echo "figure: $out/score$dim.png (truth, each method, and true/false positives); report: $out/score$dim.json"
