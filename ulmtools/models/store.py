"""The model store: a trained torch network as a Zarr ``model`` store, without pickle.

Layout (kind ``model``)::

    MODEL.zarr/
      zarr.json            root attributes:
                             ulm            {"kind": "model", "version": "1.0"}
                             architecture   {"name": NAME, "kwargs": {...}}  (constructor)
                             weights        [{"key", "array", "dtype", "shape"}, ...]
                             training       the resolved training configuration
                             history        per-epoch records (loss, lr, time, ...)
                             versions       library versions that produced the weights
                             provenance     as every store
      weights/<i>          one array per state_dict entry, in state_dict order

Arrays are named by their index (``weights/0``, ``weights/1``, ...) and the
``weights`` attribute maps each back to its state_dict key, so keys may hold
any character. ``dtype`` is the torch dtype name; bfloat16 is stored as its
raw 16 bits (uint16) and viewed back on load.

Loading builds the network from a registry of architectures (name ->
constructor) and the stored keyword arguments, then loads the weights with
``strict=True``: nothing is unpickled and no code is named by the store.
A module defining a network registers it with :func:`register_architecture`;
:data:`BUILTIN` names the module to import for a known name, and any other
name is looked for by importing every module of :mod:`ulmtools.models`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ulmtools import __version__
from ulmtools.errors import InputError
from ulmtools.store import Store, create_array, create_store, jsonable, open_store, provenance_entry

if TYPE_CHECKING:
    import torch

Factory = Callable[..., "torch.nn.Module"]

_REGISTRY: dict[str, Factory] = {}

BUILTIN: dict[str, str] = {
    # architecture name -> module that registers it when imported; names not listed
    # are found by importing every module of ulmtools.models
    "deepstulm": "ulmtools.models.dense_deepstulm",
    "mask-cnn": "ulmtools.models.mask_cnn",
    "mspcn": "ulmtools.models.mspcn",
    "sparse-deepstulm": "ulmtools.models.deepstulm",
}


def register_architecture(name: str, factory: Factory | None = None):
    """Register ``factory`` (a class or function returning a module) under ``name``.

    Usable as a decorator: ``@register_architecture("mask-cnn")``.
    """

    def deco(f: Factory) -> Factory:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not f:
            same = getattr(existing, "__qualname__", None) == getattr(f, "__qualname__", None)
            if not same:
                raise ValueError(f"architecture {name!r} is already registered")
        _REGISTRY[name] = f
        return f

    return deco(factory) if factory is not None else deco


def architectures() -> list[str]:
    """Every architecture name that can be loaded."""
    _import_model_modules()
    return sorted(set(_REGISTRY) | set(BUILTIN))


def _import_model_modules() -> None:
    """Import every module of :mod:`ulmtools.models`, so each registers its networks."""
    import pkgutil

    import ulmtools.models as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "store":
            try:
                importlib.import_module(f"{pkg.__name__}.{mod.name}")
            except ImportError:  # an optional backend missing: its networks stay unknown
                continue


def get_architecture(name: str) -> Factory:
    """The registered constructor of ``name``, importing the module that defines it."""
    if name not in _REGISTRY and name in BUILTIN:
        importlib.import_module(BUILTIN[name])
    if name not in _REGISTRY:
        _import_model_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(
            f"unknown model architecture {name!r}; known: {', '.join(architectures())}",
            "the model was made by a newer or extended ulmtools",
        ) from None


def build(name: str, kwargs: Mapping[str, Any]) -> torch.nn.Module:
    """A fresh network of architecture ``name`` built with ``kwargs``."""
    factory = get_architecture(name)
    try:
        return factory(**dict(kwargs))
    except TypeError as exc:
        raise InputError(
            f"cannot build architecture {name!r} from the stored arguments: {exc}"
        ) from None


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    import torch
    import zarr

    return {
        "ulmtools": __version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "zarr": zarr.__version__,
        "python": platform.python_version(),
    }


def _to_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    import torch

    t = t.detach().to("cpu").contiguous()
    name = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        # numpy has no bfloat16: keep the raw 16 bits
        return t.view(torch.int16).numpy().view(np.uint16), name
    return t.numpy(), name


def _json_checked(value: Any, what: str) -> Any:
    value = jsonable(value)
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the model's {what} must be JSON values: {exc}") from None
    return value


def save(
    path: str | os.PathLike[str],
    name: str,
    kwargs: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    training: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    versions: Mapping[str, str] | None = None,
    provenance: Sequence[Mapping[str, Any]] | None = None,
    attrs: Mapping[str, Any] | None = None,
    force: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
    final: bool = True,
) -> Path:
    """Write a model store at ``path`` atomically; return the path.

    ``final=False`` marks an intermediate store (a checkpoint; see :func:`create_store`).

    ``name`` and ``kwargs`` must rebuild the network (``build(name, kwargs)``);
    ``training``, ``history`` and ``attrs`` are any JSON values. ``provenance``
    defaults to one ``train`` entry recording ``training``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError("the architecture name must be a non-empty string")
    arch = {"name": name, "kwargs": _json_checked(dict(kwargs), "constructor arguments")}
    training_json = _json_checked(dict(training or {}), "training configuration")
    if provenance is None:
        provenance = [provenance_entry("train", {"architecture": arch, "training": training_json})]
    root = {
        "architecture": arch,
        "training": training_json,
        "history": _json_checked(list(history or []), "history"),
        "versions": _json_checked(dict(versions or library_versions()), "versions"),
    }
    if attrs:
        root.update(_json_checked(dict(attrs), "attributes"))
    index: list[dict[str, Any]] = []
    with create_store(
        path, "model", provenance=provenance, attrs=root, force=force, inputs=inputs, final=final
    ) as g:
        wg = g.require_group("weights")
        for i, (key, tensor) in enumerate(state_dict.items()):
            arr, dtype = _to_numpy(tensor)
            dims = tuple(f"w{i}_d{j}" for j in range(arr.ndim))  # one size per name
            a = create_array(
                wg,
                str(i),
                shape=arr.shape,
                dtype=arr.dtype,
                dims=dims,
                chunks=arr.shape if arr.ndim else (),
                attrs={"key": key, "torch_dtype": dtype},
            )
            a[...] = arr
            index.append(
                {"key": key, "array": f"weights/{i}", "dtype": dtype, "shape": list(arr.shape)}
            )
        g.attrs["weights"] = index
    return Path(path)


def save_model(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    **options: Any,
) -> Path:
    """:func:`save` for a model that knows its architecture.

    The model must have ``architecture_name`` (a registered name) and
    ``architecture_kwargs`` (its constructor arguments) attributes.
    """
    try:
        name = model.architecture_name  # type: ignore[attr-defined]
        kwargs = model.architecture_kwargs  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(
            "save_model needs a model with architecture_name and architecture_kwargs; "
            "use save(path, name, kwargs, state_dict) otherwise"
        ) from None
    return save(path, name, kwargs, model.state_dict(), **options)


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


@dataclass
class ModelInfo:
    """A model store's metadata."""

    path: Path
    id: str | None
    name: str
    kwargs: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)
    history: list[Any] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """An input reference for provenance."""
        return {"id": self.id, "path": str(self.path), "kind": "model", "architecture": self.name}


def _open(path: str | os.PathLike[str] | Store) -> Store:
    store = path if isinstance(path, Store) else open_store(path, "model")
    arch = store.attrs.get("architecture")
    if (
        not isinstance(arch, Mapping)
        or not isinstance(arch.get("name"), str)
        or not isinstance(arch.get("kwargs", {}), Mapping)
    ):
        raise InputError(
            f"{store.path}: the 'architecture' attribute must be "
            '{"name": ..., "kwargs": {...}}'
        )
    if not isinstance(store.attrs.get("weights"), list):
        raise InputError(f"{store.path} lacks the 'weights' index of a model store")
    return store


def info(path: str | os.PathLike[str] | Store) -> ModelInfo:
    """The metadata of a model store, without reading weights."""
    store = _open(path)
    a = dict(store.attrs)
    return ModelInfo(
        path=store.path,
        id=store.id,
        name=a["architecture"]["name"],
        kwargs=dict(a["architecture"].get("kwargs", {})),
        training=dict(a.get("training", {})),
        history=list(a.get("history", [])),
        versions=dict(a.get("versions", {})),
        provenance=store.provenance,
        attrs={k: v for k, v in a.items() if k not in _ROOT_KEYS},
    )


_ROOT_KEYS = {
    "ulm",
    "id",
    "provenance",
    "architecture",
    "training",
    "history",
    "versions",
    "weights",
}


def load_state(
    path: str | os.PathLike[str] | Store, *, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], ModelInfo]:
    """The stored state_dict (tensors on ``device``) and metadata, no network built."""
    import torch

    store = _open(path)
    meta = info(store)
    state: dict[str, torch.Tensor] = {}
    for entry in store.attrs["weights"]:
        try:
            key, where, dtype = entry["key"], entry["array"], entry["dtype"]
        except (KeyError, TypeError):
            raise InputError(f"{store.path}: malformed weights index entry {entry!r}") from None
        arr = np.asarray(store.array(where)[...])
        if list(arr.shape) != list(entry.get("shape", arr.shape)):
            raise InputError(f"{store.path}/{where}: shape {arr.shape} differs from the index")
        torch_dtype = getattr(torch, str(dtype), None)
        if not isinstance(torch_dtype, torch.dtype):
            raise InputError(f"{store.path}/{where}: unknown torch dtype {dtype!r}")
        if torch_dtype == torch.bfloat16:
            t = torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.array(arr, copy=True))
            if t.dtype != torch_dtype:
                t = t.to(torch_dtype)
        state[key] = t.to(device)
    return state, meta


def load(
    path: str | os.PathLike[str] | Store, *, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, ModelInfo]:
    """Rebuild the network of a model store, load its weights; return it in eval mode."""
    state, meta = load_state(path, device="cpu")
    model = build(meta.name, meta.kwargs)
    expected = model.state_dict()
    for key, t in state.items():
        want = expected.get(key)
        if want is not None and want.is_floating_point() and not t.is_floating_point():
            raise InputError(
                f"{meta.path}: the weight {key!r} is stored as {t.dtype}; the network needs "
                f"floating point ({want.dtype})",
                "quantized or integer weights are not supported; save float weights",
            )
        if t.is_floating_point() and not bool(t.isfinite().all()):
            raise InputError(
                f"{meta.path}: the weight {key!r} holds NaN or infinite values",
                "the model is damaged (or its training diverged); retrain it",
            )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(
            f"{meta.path}: the stored weights do not fit architecture {meta.name!r} ({detail})"
        ) from None
    return model.to(device).eval(), meta


__all__ = [
    "BUILTIN",
    "ModelInfo",
    "architectures",
    "build",
    "get_architecture",
    "info",
    "library_versions",
    "load",
    "load_state",
    "register_architecture",
    "save",
    "save_model",
]
