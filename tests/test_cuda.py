"""The CUDA paths (run by `make gpu-check` on a machine with a GPU; skipped elsewhere).

Each compares the GPU with the CPU on the same inputs and weights: the sparse
engine's layers, a whole training step of Sparse Deep-stULM, and inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _movie(frames: int = 32, sites: int = 600, seed: int = 0):
    rng = np.random.default_rng(seed)
    coords = np.unique(
        np.stack([rng.integers(0, frames, sites), rng.integers(0, 32, sites),
                  rng.integers(0, 32, sites)], axis=1), axis=0)  # fmt: skip
    feats = rng.normal(size=(len(coords), 2)).astype(np.float32)
    return coords.astype(np.int32), feats


def test_sparse_conv_on_cuda_matches_cpu() -> None:
    from ulmtools import sparse as sp

    coords, feats = _movie()
    c = np.concatenate([np.zeros((len(coords), 1), np.int32), coords[:, 1:], coords[:, :1]], 1)
    torch.manual_seed(0)
    conv = sp.Conv(2, 8, 3, dimension=3)
    pool = sp.MaxPool((2, 2, 4), dimension=3)
    out = {}
    for device in ("cpu", "cuda"):
        x = sp.sparse_tensor(torch.as_tensor(c).to(device), torch.as_tensor(feats).to(device))
        y = pool(conv.to(device)(x))
        order = np.lexsort(y.coords.cpu().numpy().T[::-1])
        out[device] = (y.coords.cpu().numpy()[order], y.feats.detach().cpu().numpy()[order])
    assert np.array_equal(out["cpu"][0], out["cuda"][0])
    assert np.allclose(out["cpu"][1], out["cuda"][1], atol=1e-4)


def test_inference_on_cuda_matches_cpu() -> None:
    from ulmtools.infer.core import predict
    from ulmtools.models.deepstulm import SparseDeepStulm

    torch.manual_seed(0)
    net = SparseDeepStulm(dimension=3, channels=8).eval()
    movie = _movie(frames=64)
    ((c_cpu, p_cpu),) = predict(net, [movie], device="cpu")
    ((c_gpu, p_gpu),) = predict(net.to("cuda"), [movie], device="cuda")
    assert np.array_equal(c_cpu, c_gpu)
    assert np.allclose(p_cpu, p_gpu, atol=1e-4)


def test_ulm_train_and_infer_on_cuda(cli, tmp_path: Path) -> None:
    img, sparse = tmp_path / "img.zarr", tmp_path / "sp.zarr"
    model, pred = tmp_path / "m.zarr", tmp_path / "p.zarr"
    assert cli("simulate", img, "--level", "image", "--movies", "2", "--frames", "32",
               "--seed", "1", "-q").code == 0  # fmt: skip
    assert cli("sparsify", img, sparse, "-q").code == 0
    r = cli("train", sparse, model, "--epochs", "2", "--channels", "8", "--device", "cuda", "-q")
    assert r.code == 0, r.err
    r = cli("infer", model, sparse, pred, "--device", "cuda", "--json")
    assert r.code == 0 and '"device": "cuda' in r.out
