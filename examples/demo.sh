#!/usr/bin/env bash
# The example pipeline, end to end, on a small data set. Run with `make demo`.
set -euo pipefail
out=${DEMO_DIR:-demo}
mkdir -p "$out"
python - "$out/lab.zarr" <<'PY'
# A lab's own beamformed IQ, described as a ulmtools image store.
import sys
import numpy as np
from ulmtools.acquisition import preset
from ulmtools.store import create_store, provenance_entry, write_array
grid = preset("2d").grid()
iq = np.zeros((2, 64, *grid.shape), np.complex64)
with create_store(sys.argv[1], "image", grid=grid, axes=("movie", "t", "z", "x"),
                  provenance=[provenance_entry("import", {"source": "demo"})], force=True) as root:
    write_array(root, "iq", iq, dims=("movie", "t", "z", "x"))
PY
ulm info "$out/lab.zarr"
