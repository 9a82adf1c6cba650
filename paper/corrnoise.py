"""Add complex Gaussian noise to the PSF correlation of an image store (paper Fig. 6).

    python paper/corrnoise.py IN.zarr OUT.zarr --sigma S --seed N

The paper's robustness test adds zero-mean Gaussian noise of standard deviation S to
the real and to the imaginary part of the correlation map at test time. ``ulm sparsify
--corr-noise`` does it for the sparse model's input, but the dense baselines read an
image store and no ``ulm`` command writes a noisy one (``ulm simulate --snr`` is thermal
noise on the channel data, which beamforming averages away), so the paper pipeline uses
this helper for them: OUT is a copy of
IN whose ``corr`` holds corr + S (n_re + i n_im), n ~ N(0, 1), with a new store id and
a provenance entry (stage ``paper-corr-noise``) appended. Written under a temporary
name beside OUT and renamed when complete; an existing OUT is replaced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import zarr

from ulmtools.store import lineage, open_store, provenance_entry, store_id


def add_noise(src: Path, out: Path, sigma: float, seed: int) -> None:
    if not sigma >= 0 or not np.isfinite(sigma):
        raise SystemExit(f"corrnoise: --sigma must be a finite number >= 0, got {sigma}")
    store = open_store(src, "image", require_arrays=["corr"])
    tmp = out.with_name(f".{out.name}.partial{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        group = zarr.open_group(str(tmp), mode="r+", zarr_format=3)
        corr = group["corr"]
        rng = np.random.default_rng(seed)
        for m in range(corr.shape[0]):  # one movie at a time: bounded memory
            c = np.asarray(corr[m])
            noise = rng.standard_normal(c.shape, np.float32) + 1j * rng.standard_normal(
                c.shape, np.float32
            )
            corr[m] = (c + np.float32(sigma) * noise).astype(corr.dtype)
        entry = provenance_entry(
            "paper-corr-noise",
            {"sigma": sigma, "seed": seed, "array": "corr", "distribution": "complex normal"},
            [store],
        )
        group.attrs.update({"id": store_id(), "provenance": lineage([store], entry)})
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("input", type=Path)
    p.add_argument("output", type=Path)
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    add_noise(a.input, a.output, a.sigma, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
