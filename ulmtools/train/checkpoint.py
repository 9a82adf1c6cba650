"""Per-epoch checkpoints: the model store, and the resume state beside it.

After every epoch the resume state is (re)written atomically with
:func:`ulmtools.models.store.save`, and the model store too when the run ends
or a minute has passed since it was last written (``ulm train``'s policy; its
one-array-per-tensor layout takes seconds to write):

``MODEL.zarr``
    the model as trained so far (kind ``model``, architecture
    ``sparse-deepstulm``): loadable at any time; ``training.complete`` says
    whether the run finished.
``MODEL.resume.zarr``
    the resume state (kind ``model``, architecture ``train-resume``): the
    weights *and* the Adam moments as arrays, the epoch count, the resolved
    configuration and the history.  ``ulm train --resume`` continues from it;
    it is removed when the run completes.

Nothing is pickled: the optimizer's tensors are arrays and its hyper-parameters
JSON.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ulmtools.errors import InputError
from ulmtools.models import store as model_store
from ulmtools.models.deepstulm import ARCHITECTURE, SparseDeepStulm
from ulmtools.store import jsonable
from ulmtools.train.config import TrainConfig
from ulmtools.train.loop import TrainState

RESUME_ARCH = "train-resume"


def resume_path(model_path: str | os.PathLike[str]) -> Path:
    """``runs/m.zarr`` -> ``runs/m.resume.zarr``."""
    p = Path(model_path)
    name = p.name[: -len(".zarr")] if p.name.endswith(".zarr") else p.name
    return p.with_name(f"{name}.resume.zarr")


def _optimizer_arrays(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for index, entry in sd["state"].items():
        for name, value in entry.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optimizer.{index}.{name}"] = t
    return tensors, jsonable(sd["param_groups"])


def _pack(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Many tensors as one flat array per dtype (hundreds of small arrays write slowly)."""
    flat: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}
    index = []
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        name = str(t.dtype).removeprefix("torch.")
        at = sizes.get(name, 0)
        flat.setdefault(name, []).append(t.reshape(-1))
        sizes[name] = at + t.numel()
        index.append({"key": key, "dtype": name, "shape": list(t.shape), "offset": at})
    packed = {name: torch.cat(parts) for name, parts in flat.items()}
    return packed, index


def _unpack(packed: dict[str, torch.Tensor], index: list[Any]) -> dict[str, torch.Tensor]:
    out = {}
    for e in index:
        n = 1
        for d in e["shape"]:
            n *= int(d)
        flat = packed[e["dtype"]]
        out[e["key"]] = flat[e["offset"] : e["offset"] + n].reshape(e["shape"]).clone()
    return out


def save_checkpoint(
    model_path: str | os.PathLike[str],
    state: TrainState,
    config: TrainConfig,
    *,
    training: dict[str, Any],
    provenance: list[dict[str, Any]],
    complete: bool,
    force: bool,
    write_model: bool = True,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Write the model store (and, unless complete, the resume store) for ``state``.

    ``training`` must hold ``config`` (``TrainConfig.to_dict()``) and ``model``
    (the constructor arguments); ``force`` allows replacing an existing model store.
    ``write_model=False`` writes only the resume state (a few arrays, fast); the
    model store's one-array-per-tensor layout takes seconds to write.
    """
    info = dict(training) | {"epochs_done": state.epoch, "complete": complete}
    if not complete:
        tensors, groups = _optimizer_arrays(state.optimizer)
        weights = {f"model.{k}": v for k, v in state.model.state_dict().items()}
        packed, index = _pack(weights | tensors)
        model_store.save(
            resume_path(model_path),
            RESUME_ARCH,
            {},
            packed,
            training=info,
            history=state.history,
            provenance=provenance,
            attrs={"resume": {"epoch": state.epoch, "param_groups": groups, "index": index}},
            force=True,
            inputs=inputs,
            final=False,
        )
    if not (write_model or complete):
        return
    model_store.save(
        model_path,
        ARCHITECTURE,
        state.model.architecture_kwargs,
        state.model.state_dict(),
        training=info,
        history=state.history,
        provenance=provenance,
        attrs={"parameters": state.model.num_parameters()},
        force=force,
        inputs=inputs,
        final=complete,
    )
    if complete:
        shutil.rmtree(resume_path(model_path), ignore_errors=True)


def load_resume(
    model_path: str | os.PathLike[str], device: torch.device | str = "cpu"
) -> tuple[TrainState, TrainConfig, dict[str, Any]]:
    """The state saved after the last finished epoch, its configuration and training info."""
    rp = resume_path(model_path)
    if not rp.exists():
        mp = Path(model_path)
        if mp.exists():
            meta = model_store.info(mp)
            if meta.training.get("complete"):
                raise InputError(
                    f"{mp} finished training ({meta.training.get('epochs_done')} epochs); "
                    "there is nothing to resume",
                    "train a new model, or drop --resume",
                )
        raise InputError(
            f"no resume state for {mp} ({rp} is missing)",
            "start the run without --resume",
        )
    packed, meta = model_store.load_state(rp, device="cpu")
    if meta.name != RESUME_ARCH or "resume" not in meta.attrs:
        raise InputError(f"{rp} is not a ulm train resume state")
    tensors = _unpack(packed, meta.attrs["resume"]["index"])
    config = TrainConfig.from_dict(meta.training["config"])
    model = SparseDeepStulm(**meta.training["model"])
    model.load_state_dict(
        {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True
    )
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=config.phase(0)["lr"])
    per_param: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = (
                value.to(device) if name != "step" else value
            )
    opt.load_state_dict({"state": per_param, "param_groups": meta.attrs["resume"]["param_groups"]})
    state = TrainState(model, opt, int(meta.attrs["resume"]["epoch"]), list(meta.history))
    return state, config, dict(meta.training)
