"""``ulm infer`` for the stage runner: batches of movies predicted by tasks.

One stage serves both model families: the sparse network (Sparse Deep-stULM, a
sparse store in) and the 2D dense baselines (deepstulm and mspcn, an image store
in). A task predicts one batch (``batch_size`` movies; one movie for mspcn) and
returns each movie's kept map; the runner hands them over in movie order, so the
sites table, the localizations (mspcn) and the accumulated angiogram are written
exactly as a serial run writes them. Workers load the model and open the input
themselves, once per process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ulmtools.errors import InputError, UsageError
from ulmtools.infer.core import InferConfig, InferStats, accumulate, finish_prediction, predict
from ulmtools.runner import MovieStage
from ulmtools.sites import RaggedWriter, SiteWriter
from ulmtools.train.data import mirror_axes

__all__ = [
    "DENSE",
    "InferStage",
    "InferTask",
    "mask_for_inference",
    "model_input_kind",
]

DENSE = ("deepstulm", "mspcn")
READS = {
    "deepstulm": ("image", "ulm beamform"),
    "mspcn": ("image", "ulm beamform"),
    "sparse-deepstulm": ("sparse", "ulm sparsify"),
}


def model_input_kind(model: str, input: str | Path) -> str:
    """``image`` or ``sparse``: what the model reads; refuses an input of the other kind."""
    from ulmtools.infer.weights import resolve
    from ulmtools.models.store import info
    from ulmtools.store import open_store

    meta = info(resolve(model))
    if meta.name not in READS:
        return "sparse"  # ulm infer's own refusal names the architectures it runs
    kind, made_by = READS[meta.name]
    store = open_store(input)
    if store.kind != kind:
        raise InputError(
            f"this {meta.name} model reads {'an' if kind == 'image' else 'a'} {kind} store "
            f"({made_by}); {input} is {'an' if store.kind[0] in 'aeiou' else 'a'} "
            f"{store.kind} store",
            "sparsify an image store with ulm sparsify for the sparse model; "
            "give the image store itself to a dense one",
        )
    return kind


def mask_for_inference(
    spec: str | None,
    input_mask: Path | None,
    trained: dict[str, Any] | None,
    log: Any = None,
) -> tuple[float | None, Path | None]:
    """(threshold, mask store) to apply to a dense model's input.

    ``--input-threshold auto`` repeats the model's training threshold; ``none`` or a
    number override it. A model trained on a sparse store's sites needs ``--input-mask``.
    """
    if input_mask is not None:
        if spec not in (None, "auto", "none"):
            raise UsageError("give --input-mask or a numeric --input-threshold, not both")
        return None, input_mask
    s = "auto" if spec is None else str(spec).lower()
    if s == "none":
        return None, None
    if s == "auto":
        if trained and trained.get("method") == "threshold":
            return float(trained["threshold"]), None
        if trained and trained.get("method") == "sparse-store" and log is not None:
            log(
                "the model was trained on inputs masked by the sites of "
                f"{(trained.get('store') or {}).get('path')}; give --input-mask "
                "with the sparse store of this input to do the same"
            )
        return None, None
    try:
        value = float(s)
    except ValueError:
        raise UsageError(
            f"--input-threshold must be auto, none or a number, got {spec!r}"
        ) from None
    return value, None


@dataclass
class InferTask:
    """Predicts one batch of movies (picklable; loads the model and input per process).

    ``dense`` picks the family: False, the sparse network on a sparse store
    (``min_power`` leaves weak input sites out); True, deepstulm or mspcn on an image
    store (``input_threshold``/``input_mask`` as given to :class:`ImageMovies`).
    """

    model: str
    input: str
    device: str
    config: InferConfig
    dense: bool
    arch: str
    min_power: float | None = None
    input_threshold: float | None = None
    input_mask: str | None = None
    #: torch's CPU threads: its reductions round differently with another count, so every
    #: worker uses the driving process's count and any executor gives the same bytes
    threads: int = 0

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def _open(self) -> tuple[Any, Any, Any]:
        opened = self.__dict__.get("_opened")
        if opened is None:
            from ulmtools.device import resolve_device

            device = resolve_device(self.device)
            if self.dense:
                from ulmtools.infer.weights import resolve
                from ulmtools.models.store import load
                from ulmtools.train.baselines import ImageMovies

                net, _ = load(resolve(self.model), device=device)
                data = ImageMovies(
                    self.input,
                    input_threshold=self.input_threshold,
                    input_mask=self.input_mask,
                    arch=self.arch,
                )
            else:
                from ulmtools.infer.weights import load_model
                from ulmtools.train.data import SparseMovies

                net, _ = load_model(self.model, device=device)
                data = SparseMovies(self.input, min_power=self.min_power)
            opened = self.__dict__["_opened"] = (net, data, device)
        return opened

    def __call__(self, unit: list[int]) -> list[dict[str, Any]]:
        import torch

        if self.threads and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        net, data, device = self._open()
        t0 = time.perf_counter()
        if self.dense:
            from ulmtools.infer.dense import predict_movies

            maps = predict_movies(net, data, unit, self.config, device)
            per = (time.perf_counter() - t0) / len(unit)
            n_in = int(np.prod(data.shape))
            return [
                {
                    "coords": mm.coords,
                    "probs": mm.feats,
                    "input_sites": n_in,
                    "output_sites": len(mm.coords),
                    "seconds": per,
                    "positions": mm.positions,
                    "frames": mm.frames,
                    "intensity": mm.intensity,
                }
                for mm in maps
            ]
        inputs = [data.movie(m) for m in unit]
        maps = predict(
            net,
            inputs,
            device=device,
            backend=self.config.backend,
            mirror=mirror_axes(self.config.mirror, data.grid) if self.config.mirror else (),
            shape=data.shape[1:],
            delays=self.config.delays,
        )
        per = (time.perf_counter() - t0) / len(unit)
        out = []
        for (c_in, _), (c, p) in zip(inputs, maps, strict=True):
            # min_probability <= threshold: the kept sites hold every one the angiogram counts
            keep = p >= self.config.min_probability
            out.append(
                {
                    "coords": c[keep],
                    "probs": p[keep],
                    "input_sites": len(c_in),
                    "output_sites": len(c),
                    "seconds": per,
                }
            )
        return out


class InferStage(MovieStage):
    """``ulm infer``: maps written in movie order, the angiogram accumulated, Dice with truth."""

    name = "infer"
    kind = "prediction"

    def __init__(self, task: InferTask, net: Any, data: Any, device: Any) -> None:
        import torch

        if not task.threads:
            task.threads = torch.get_num_threads()
        self.proto = task
        self.net, self.data, self.device = net, data, device
        self.config = task.config
        self.mspcn = task.dense and task.arch == "mspcn"
        self.grid = data.fine_grid
        self.axes = tuple(data.fine_grid.axes)
        step = 1 if self.mspcn else self.config.batch_size
        n = len(data)
        self.units = [list(range(b, min(n, b + step))) for b in range(0, n, step)]
        self.stats = InferStats(movies=n)
        self.parameters = {}
        self.attrs = {}
        self.truth = data.store

    def create(self, root: zarr.Group) -> None:
        data = self.data
        if self.proto.dense and data.space_ndim != self.net.spatial_dims:
            raise InputError(
                f"the model works on {self.net.spatial_dims}D images but the input is "
                f"{data.space_ndim}D"
            )
        if not self.proto.dense and self.net.dimension != data.dimension:
            raise InputError(
                f"the model is for {self.net.dimension - 1}D+t data but the input is "
                f"{data.space_ndim}D+t",
                "use a model trained on data of the same dimension",
            )
        feature = "detected" if self.mspcn else "probability"
        self.writer = SiteWriter(
            root, data.fine_grid.axes, (feature,), unit="fine-grid pixel index"
        )
        self.loc = None
        if self.mspcn:
            group = root.require_group("localizations")
            group.attrs.update({"columns": list(data.grid.axes), "unit": "metre"})
            self.loc = RaggedWriter(
                group,
                {
                    "positions": (
                        "float64",
                        2,
                        {
                            "dims": ("row", "coordinate"),
                            "unit": "metre",
                            "axes_order": list(data.grid.axes),
                        },
                    ),
                    "frames": ("int32", None, {}),
                    "intensity": ("float32", None, {"meaning": "per-frame map at the maximum"}),
                },
            )
        self.angiogram = np.zeros(data.fine_grid.shape, dtype=np.uint32)

    def task(self, root_path: str | None) -> InferTask:
        task = InferTask(**self.proto.__getstate__())
        task._opened = (self.net, self.data, self.device)  # in-process: the loaded model
        return task

    def collect(self, movie: int, r: dict[str, Any]) -> str:
        threshold = 0 if self.mspcn else self.config.threshold
        accumulate(self.angiogram, r["coords"], r["probs"], threshold)
        self.writer.write_movie(r["coords"], r["probs"])
        if self.loc is not None:
            self.loc.write_movie(
                positions=self.data.fine_grid.to_position(r["positions"]).reshape(-1, 2),
                frames=r["frames"],
                intensity=r["intensity"],
            )
        self.stats.input_sites.append(r["input_sites"])
        self.stats.output_sites.append(r["output_sites"])
        self.stats.seconds.append(r["seconds"])
        return f"{r['output_sites']} sites"

    def finish(self, root: zarr.Group) -> dict[str, Any]:
        self.writer.close()
        if self.loc is not None:
            self.loc.close()
        finish_prediction(root, self.angiogram, self.data, self.config, self.stats)
        return self.stats.summary()

    def result(self, summary: dict[str, Any], root: zarr.Group) -> dict[str, Any]:
        root.attrs["stats"] = {
            k: v for k, v in summary.items() if not k.startswith("_") and k != "truth"
        }
        if self.stats.dice is not None:
            root.attrs["dice"] = self.stats.dice
        if "localizations" in root:
            summary["_localizations"] = int(root["localizations"]["offsets"][-1])
        return summary
