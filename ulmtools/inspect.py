"""What is in a store: the library side of ``ulm info``."""

from __future__ import annotations

import math
import os
from typing import Any

import zarr

from ulmtools.store import open_store


def _arrays(group: zarr.Group, prefix: str = "") -> list[dict[str, Any]]:
    out = []
    for name, node in sorted(group.members(), key=lambda kv: kv[0]):
        path = f"{prefix}{name}"
        if isinstance(node, zarr.Array):
            out.append(
                {
                    "path": path,
                    "shape": list(node.shape),
                    "dtype": str(node.dtype),
                    "chunks": list(node.chunks),
                    "dims": list(node.metadata.dimension_names or []),
                    "bytes": int(node.nbytes),
                    "stored_bytes": int(node.nbytes_stored()),
                }
            )
        else:
            out.append({"path": path + "/", "group": True})
            out.extend(_arrays(node, prefix=path + "/"))
    return out


#: state_dict entries that are not trained parameters (batch-norm statistics)
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def summarize(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A JSON-ready description of a store: kind, arrays, grid, truth, lineage."""
    store = open_store(path)
    attrs = dict(store.attrs)
    arrays = [a for a in _arrays(store.group) if not a.get("group")]
    summary: dict[str, Any] = {
        "path": str(store.path),
        "kind": store.kind,
        "version": store.version,
        "id": store.id,
        "axes": attrs.get("axes"),
        "grid": attrs.get("grid"),
        "truth": store.has_truth,
        "arrays": arrays,
        "stored_bytes": sum(a["stored_bytes"] for a in arrays),
        "provenance": store.provenance,
    }
    if store.has_truth:
        summary["truth_grid"] = store.group["truth"].attrs.get("grid")
    for key in ("stats", "acquisition_summary", "architecture", "inference", "card"):
        if key in attrs:
            summary[key] = attrs[key]
    if store.kind == "model" and isinstance(attrs.get("weights"), list):
        # the number of trained values, from the weights index (no weights read)
        summary["parameters"] = sum(
            math.prod(int(n) for n in w.get("shape", []))
            for w in attrs["weights"]
            if isinstance(w, dict) and not str(w.get("key", "")).endswith(_BUFFERS)
        )
    if store.kind == "model" and isinstance(attrs.get("history"), list) and attrs["history"]:
        summary["training_summary"] = _training_summary(attrs)
    return summary


def _training_summary(attrs: dict[str, Any]) -> dict[str, Any]:
    """A model store's run in brief: schedule, epochs, time, validation Dice, data."""
    hist = attrs["history"]
    training = attrs.get("training") or {}
    sched = (training.get("config") or {}).get("schedule") or {}
    vals = [h.get("val_dice") for h in hist if h.get("val_dice") is not None]
    stores = [training.get("train"), *(training.get("also") or [])]
    return {
        "schedule": sched.get("name"),
        "epochs": len(hist),
        "seconds": round(sum(float(h.get("seconds") or 0) for h in hist), 1),
        "val_dice": vals[-1] if vals else None,
        "best_val_dice": max(vals) if vals else None,
        "train_stores": sum(1 for t in stores if t),
        "init": (training.get("init") or {}).get("path"),
        "features": (training.get("config") or {}).get("features"),
    }


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError  # unreachable


def _sparsity(st: Any) -> str | None:
    """One line for a sparse store's stats (written by ulm sparsify)."""
    keys = ("active_sites_mean", "active_sites_min", "active_sites_max", "sites_per_movie")
    if not isinstance(st, dict) or not all(isinstance(st.get(k), (int, float)) for k in keys):
        return None
    rule = {"threshold": f"threshold {st.get('threshold')}", "topk": f"top-k {st.get('k')}"}.get(
        st.get("method"), f"{st.get('method')} cutoff {st.get('threshold')}"
    )
    if st.get("features") not in (None, "corr"):
        rule += f", features {st['features']}"
    share = 100 * st["active_sites_mean"] / max(st["sites_per_movie"], 1)
    text = (
        f"{rule}: {st['active_sites_mean']:.0f} active sites per movie "
        f"(min {st['active_sites_min']}, max {st['active_sites_max']}) of "
        f"{st['sites_per_movie']} ({share:.2f} %)"
    )
    if st.get("empty_movies"):
        text += f", {st['empty_movies']} empty movies"
    if isinstance(st.get("kept_bubble_fraction"), (int, float)):
        text += f", {100 * st['kept_bubble_fraction']:.1f} % of true bubble pixels kept"
    return text


def _number(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable form of :func:`summarize`."""
    lines = [f"{s['path']}: {s['kind']} store, version {s['version']}, id {s['id']}"]
    if s.get("axes"):
        axes = ", ".join(
            f"{a['name']} ({a['type']}{', ' + a['unit'] if a.get('unit') else ''})"
            for a in s["axes"]
        )
        lines.append(f"axes: {axes}")
    g = s.get("grid")
    if g:
        dims = " x ".join(str(n) for n in g["shape"])
        spacing = ", ".join(f"{v * 1e6:.2f}" for v in g["spacing"])
        origin = ", ".join(f"{v * 1e3:.3f}" for v in g["origin"])
        rate = f", {g['frame_rate']:g} Hz" if g.get("frame_rate") else ""
        lines.append(
            f"grid: {'/'.join(g['axes'])} {dims}, spacing {spacing} um, origin {origin} mm{rate}"
        )
    tg = s.get("truth_grid")
    truth = "none"
    if s.get("truth"):
        truth = "yes"
        if tg:
            truth += f" (track maps {' x '.join(str(n) for n in tg['shape'])})"
    lines.append(f"truth: {truth}")
    if s.get("kind") == "sparse" and _sparsity(s.get("stats")):
        lines.append(f"sparsity: {_sparsity(s['stats'])}")
    elif s.get("stats"):
        stats = ", ".join(
            f"{k} {_number(v)}" if isinstance(v, float) else f"{k} {v}"
            for k, v in s["stats"].items()
            if not isinstance(v, dict)
        )
        lines.append(f"stats: {stats}")
    arch = s.get("architecture")
    if isinstance(arch, dict) and arch.get("name"):
        kwargs = ", ".join(f"{k}={v}" for k, v in (arch.get("kwargs") or {}).items())
        count = f", {s['parameters']:,} parameters" if isinstance(s.get("parameters"), int) else ""
        lines.append(f"architecture: {arch['name']}({kwargs}){count}")
    t = s.get("training_summary")
    if t:
        val = ""
        if t["val_dice"] is not None:
            val = f", validation Dice {t['val_dice']:.4f} (best {t['best_val_dice']:.4f})"
        start = f", started from {t['init']}" if t.get("init") else ""
        of = f" of {t['schedule']}" if t.get("schedule") else ""  # the baselines have none
        lines.append(
            f"training: {t['epochs']} epochs{of} on {t['train_stores']} "
            f"store(s){start}, {t['seconds']:.0f} s{val}"
        )
        features = tuple(t.get("features") or ())
        if features and features != ("real", "imag"):
            from ulmtools.train.data import features_name

            name = features_name(features)
            lines.append(
                f"input: sparse stores whose sites carry {name} (ulm sparsify --features {name})"
            )
    advice = s.get("inference")
    if isinstance(advice, dict) and advice:
        parts = []
        if advice.get("mirror"):
            parts.append(f"--mirror {','.join(advice['mirror'])}")
        if advice.get("delays"):
            parts.append(f"--delays {','.join(str(d) for d in advice['delays'])}")
        if advice.get("threshold") is not None:
            parts.append(f"--threshold {advice['threshold']:g}")
        why = f" ({advice['chosen']})" if advice.get("chosen") else ""
        lines.append(f"ulm infer uses: {' '.join(parts) or 'its defaults'}{why}")
    if isinstance(s.get("card"), str) and s["card"].strip():
        lines.append("card:")
        lines.extend(f"  {line}" for line in s["card"].strip().splitlines())
    lines.append(f"arrays ({_size(s['stored_bytes'])} stored):")
    width = max((len(a["path"]) for a in s["arrays"]), default=0)
    for a in s["arrays"]:
        shape = "x".join(str(n) for n in a["shape"])
        chunks = "x".join(str(n) for n in a["chunks"])
        dims = f" ({', '.join(a['dims'])})" if a["dims"] else ""
        lines.append(
            f"  {a['path']:<{width}}  {a['dtype']:<9} {shape}{dims}  chunks {chunks}  "
            f"{_size(a['stored_bytes'])} stored"
        )
    lines.append(f"provenance ({len(s['provenance'])} stages):")
    for e in s["provenance"]:
        inputs = ", ".join(str(i.get("id", "?"))[:8] for i in e.get("inputs", []))
        src = f" <- {inputs}" if inputs else ""
        lines.append(
            f"  {e.get('time', '?')}  {e.get('stage', '?'):<9} ulmtools {e.get('version', '?')}"
            f"{src}  $ {e.get('command', '')}"
        )
    return "\n".join(lines)
