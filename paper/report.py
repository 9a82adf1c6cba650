"""The paper report: collect a `make paper` run's outputs, write report.md and figures.

    python paper/report.py OUT [--paper PAPER.md] [--size SIZE]
    python paper/report.py OUT --from-results RESULTS.json

The first form reads what the pipeline (paper/Makefile) left in OUT: every
``ulm score -o`` report (score.json), the ``--json`` summaries of ``ulm sparsify``,
``ulm infer``, ``ulm track`` and ``ulm train`` (one per store), ``ulm info --json`` of
the model stores (and, for what ``ulm info`` does not print, the model store's own
``history`` and ``parameters`` attributes), and the timing log of paper/timed.py. It
writes OUT/results.json (everything the report shows, machine-independent) and then
renders OUT/report.md with PNG figures, each measured number beside the paper's.
``--from-results`` renders from a results.json alone (the report's own test uses it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# The paper's numbers (Rauby et al.), in percent, ms and GB as printed; "source" is the
# exact text each comes from, so a test can check every number against the paper file.
PAPER: dict[str, Any] = {
    "table1_2d": {
        "sparse": {"time_ms": 19, "memory_gb": 6.8, "dice": 73.93},
        "dense": {"time_ms": 34, "memory_gb": 12.6, "dice": 80.01},
        "mspcn": {"time_ms": 77, "memory_gb": 22.7, "dice": 62.54},
        "ulm": {"dice": 60.80},
    },
    "table1_3d": {
        "sparse": {"time_ms": 70, "memory_gb": 9.9, "dice": 49.97},
        "dense": {"memory_gb_estimated": 694},
        "mspcn": {"time_ms_estimated": 8016, "memory_gb_estimated": 366},
        "ulm": {"dice": 12.34},
    },
    "table2_2d": {
        "base": {"memory_gb": 6.8, "dice": 73.93},
        "ds": {"memory_gb": 6.9, "dice": 71.98},
        "prune": {"memory_gb": 5.7, "dice": 62.36},
        "cascade": {"memory_gb": 5.6, "dice": 59.22},
    },
    "table2_3d": {
        "base": {"memory_gb": 9.9, "dice": 49.97},
        "ds": {"memory_gb": 10.6, "dice": 43.51},
        "prune": {"memory_gb": 3.6, "dice": 38.65},
        "cascade": {"memory_gb": 3.7, "dice": 38.53},
    },
    # Fig. 4 (2D), from the text of section IV.A and Table I (the 5 MB/FOV points)
    "fig4_2d": {
        "sparse": {1: 74.4, 5: 73.93, 10: 70.6, 20: 68.0},
        "dense": {1: 83.9, 5: 80.01, 20: 73.7},
        "mspcn": {1: 54.9, 5: 62.54, 20: 67.4},
        "ulm": {1: 71.4, 5: 60.8, 20: 55.9},
    },
    # 3D: the volume Dice at 30 (Table I) and the projected Dice (section IV.B)
    "fig4_3d": {"sparse": {30: 49.97}, "ulm": {30: 12.34}},
    "fig4_3d_projected": {"sparse": {1: 77.71, 30: 77.81}, "ulm": {1: 67.56, 30: 54.58}},
    "fig5": {"mspcn": {1: 35.5, 20: 27.7}},
    "fig6": {"sparse": {0.10: 73.9, 0.25: 73.1}},
    # Fig. 8 (section IV.C.1): (active sites, Dice) at the ends of each curve
    "fig8": {
        "sparse threshold": [(21000, 67.5), (90000, 75.3)],
        "sparse topk": [(5000, 65.4), (100000, 73.9)],
        "masked threshold": [(11000, 72.3), (64000, 79.9)],
        "masked topk": [(5000, 69.6), (100000, 79.5)],
        "sparse mask": [(1400, 67.8)],
    },
}

LABELS = {
    "sparse": "Sparse Deep-stULM (shipped model)",
    "t2-base": "Sparse Deep-stULM, trained here",
    "dense": "Dense Deep-stULM, trained here",
    "masked": "Dense Deep-stULM, masked input, trained here",
    "mspcn": "mSPCN-ULM, trained here",
    "track": "ulm track (default peak:10)",
    "trackN": "ulm track, N = concentration (the paper's ULM)",
}
PAPER_ROW = {"sparse": "sparse", "t2-base": "sparse", "dense": "dense", "mspcn": "mspcn"}
PAPER_ROW_ULM = {"trackN": "ulm"}
VARIANT_LABELS = {
    "base": "Sparse Deep-stULM",
    "ds": "+ intermediate loss (--deep-supervision)",
    "prune": "+ pruning (--pruning)",
    "cascade": "+ pruning + cascaded learning (--pruning --cascade)",
}
PARTS = ["data", "training", "models", "infer", "track", "d2s", "score"]
SECTIONS = [
    "Table I",
    "Table II",
    "Fig. 4",
    "Fig. 5",
    "Fig. 6",
    "Fig. 8",
    "Dice against accumulated movies",
    "PALA localization metrics",
    "Findings",
    "Machine and time",
    "Commands",
]


# ---------------------------------------------------------------- collect


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _num(s: str) -> float:
    return float(s[1:]) if s[0] in "cs" else float(s)


def _method_entry(m: dict[str, Any]) -> dict[str, Any]:
    loc = m.get("localization")
    out = {
        "dice": m.get("dice"),
        "movie_dice": m.get("per_movie_dice_mean"),
        "after": [[a["movies"], a["dice"]] for a in m.get("dice_after_movies", [])],
        "pixels": m.get("pixels"),
    }
    if m.get("projected_dice"):
        out["projected"] = m["projected_dice"]
    if loc:
        keys = ("precision", "sensitivity", "jaccard", "pala_rmse_mean_distance_wavelengths")
        out["localization"] = {k: loc.get(k) for k in (*keys, "rmse_wavelengths")}
    return out


def _sets(score_path: Path) -> dict[str, dict[str, Any]]:
    """The test sets one score.json covers, by folder: each method's score, its own
    summary (ulm infer/track --json beside its store) and the folder's sparsify summary."""
    score = _load(score_path)
    if score is None:
        raise SystemExit(f"report: {score_path} is missing (run the pipeline first)")
    out: dict[str, dict[str, Any]] = {}
    for m in score["methods"]:
        # the store's folder: the score's own, or a subfolder of it (paths as given to
        # ulm score, relative or not, so the output folder may have moved since)
        folder, store = Path(m["path"]).parts[-2:]
        here = score_path.parent
        d = here if folder == here.name else here / folder
        name = store.removesuffix(".zarr")
        one = out.setdefault(d.name, {"movies": score.get("movies"), "methods": {}})
        entry = _method_entry(m)
        summary = _load(d / f"{name}.json") or {}
        if "seconds_per_movie" in summary:
            entry["seconds_per_movie"] = summary["seconds_per_movie"]
            entry["input_sites"] = summary.get("input_sites_mean")
        elif "seconds_link_per_movie" in summary:
            entry["seconds_per_movie"] = (
                summary["seconds_detect_localize_per_movie"] + summary["seconds_link_per_movie"]
            )
        one["methods"][name] = entry
        # the sparse model's input: sp.json, or spn.json where ulm sparsify added noise
        sp = _load(d / "spn.json") or _load(d / "sp.json")
        if sp and "sparsify" not in one:
            one["sparsify"] = {
                "method": sp.get("method"),
                "threshold": sp.get("threshold"),
                "k": sp.get("k"),
                "active_sites": sp.get("active_sites_mean"),
                "sites_per_movie": sp.get("sites_per_movie"),
                "kept_bubble_fraction": sp.get("kept_bubble_fraction"),
            }
    return out


def _model(models: Path, name: str) -> dict[str, Any]:
    info = _load(models / f"{name}.info.json") or {}
    train = _load(models / f"{name}.train.json") or {}
    out: dict[str, Any] = {
        "architecture": (info.get("architecture") or {}).get("name") or train.get("architecture"),
        "parameters": train.get("parameters"),
        "peak_memory_mb": train.get("peak_memory_mb"),
        "train_seconds": train.get("seconds"),
        "epochs": train.get("epochs"),
        "trained_here": bool(train),
    }
    summary = info.get("training_summary") or {}
    out["epochs"] = out["epochs"] or summary.get("epochs")
    out["train_seconds"] = out["train_seconds"] or summary.get("seconds")
    # what ulm info --json does not print: the model store's parameters and history
    attrs = (_load(Path(info["path"]) / "zarr.json") or {}).get("attributes", {}) if info else {}
    if out["parameters"] is None and isinstance(attrs.get("parameters"), int):
        out["parameters"] = attrs["parameters"]
    if out["parameters"] is None and attrs.get("weights"):  # trainable tensors, no BN buffers
        buffers = ("running_mean", "running_var", "num_batches_tracked")
        out["parameters"] = sum(
            math.prod(t["shape"])
            for t in attrs["weights"]
            if not any(b in t["key"] for b in buffers)
        )
    peaks = [h.get("peak_memory_mb") for h in attrs.get("history", []) if h.get("peak_memory_mb")]
    if out["peak_memory_mb"] is None and peaks:
        out["peak_memory_mb"] = max(peaks)
    if not train and info.get("card"):
        out["card"] = info["card"].splitlines()[0]
    return out


def _machine() -> dict[str, Any]:
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    u = platform.uname()
    return {
        "uname": " ".join([u.system, u.node, u.release, u.version, u.machine]),
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
    }


def collect(out: Path, size: str | None) -> dict[str, Any]:
    sets: dict[str, dict[str, Any]] = {}
    for group in ("tree2d", "rand2d", "tree3d", "noise"):
        for f in sorted((out / group).glob("*/score.json")):
            sets.setdefault(group, {}).update(_sets(f))
    if (out / "d2s" / "score.json").is_file():
        sets["d2s"] = _sets(out / "d2s" / "score.json")
    if (out / "table2" / "score.json").is_file():
        sets["table2"] = _sets(out / "table2" / "score.json")["table2"]
    names = {f.name.split(".")[0] for f in (out / "models").glob("*.json")}
    models = {name: _model(out / "models", name) for name in sorted(names)}
    log = [_load(f) for f in sorted((out / "log").glob("*.json"))]
    log = sorted((r for r in log if r), key=lambda r: (r["start"], r["target"]))
    return {
        "size": size,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "sets": sets,
        "models": models,
        "log": log,
    }


# ---------------------------------------------------------------- render helpers


def pct(x: float | None, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{nd}f}"


def fmt(x: float | None, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def paper_val(x: float | None, nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _sorted_sets(sets: dict[str, Any]) -> list[tuple[float, dict[str, Any]]]:
    return sorted(((_num(k), v) for k, v in sets.items()), key=lambda kv: kv[0])


#: a map / truth area above this marks a model that predicts (nearly) everything
DEGENERATE_AREA = 2.5


def _area(entry: dict[str, Any]) -> float | None:
    """Accumulated map area over the truth's, from ``ulm score``'s pixel counts."""
    px = entry.get("pixels") or {}
    if not px.get("true"):
        return None
    return float(px.get("predicted", 0)) / float(px["true"])


def _projected(entry: dict[str, Any]) -> float | None:
    p = entry.get("projected")
    return sum(p.values()) / len(p) if p else None


class Figures:
    """Writes PNGs with matplotlib (Agg) and remembers their names."""

    def __init__(self, out: Path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.out = out

    def save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        self.plt.close(fig)
        return name

    def curves(
        self,
        name: str,
        title: str,
        xlabel: str,
        ylabel: str,
        ours: dict[str, list[tuple[float, float]]],
        paper: dict[str, list[tuple[float, float]]],
        logx: bool = False,
    ) -> str:
        fig, ax = self.plt.subplots(figsize=(9.6, 4.2))
        colors = {}
        for i, (label, pts) in enumerate(ours.items()):
            if not pts:
                continue
            xs, ys = zip(*sorted(pts), strict=True)
            (line,) = ax.plot(xs, ys, "o-", label=f"{label} (ours)", color=f"C{i % 10}")
            colors[label] = line.get_color()
        for j, (label, pts) in enumerate(paper.items()):
            if not pts:
                continue
            xs, ys = zip(*sorted(pts), strict=True)
            color = colors.get(label, f"C{(len(ours) + j) % 10}")
            ax.plot(xs, ys, "s--", mfc="none", color=color, label=f"{label} (paper)")
        if logx:
            ax.set_xscale("log")
            xs = sorted({x for c in (ours, paper) for pts in c.values() for x, _ in pts})
            if 0 < len(xs) <= 8:
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return self.save(fig, name)


# ---------------------------------------------------------------- render


def render(res: dict[str, Any], out: Path) -> str:
    figs = Figures(out)
    sets, models = res["sets"], res["models"]
    tree2d = sets.get("tree2d", {})
    tree3d = sets.get("tree3d", {})
    ref2d = tree2d.get("c5") or next(iter(tree2d.values()), None)
    ref2d_name = "c5" if "c5" in tree2d else next(iter(tree2d), "-")
    ref3d_name = "c30" if "c30" in tree3d else next(iter(tree3d), "-")
    ref3d = tree3d.get(ref3d_name)
    md: list[str] = []
    w = md.append
    w("# The reference paper at our scale: `make paper` report\n")
    w(
        f"Size `{res.get('size')}`, generated {res['generated']} by `paper/report.py` from the "
        "outputs of `paper/Makefile` (every number below is measured by a `ulm` command of this "
        "run; the paper's numbers, from its tables and text, are beside them). Paper times are "
        "GPU milliseconds (V100), ours CPU seconds; the paper's memory is GPU memory in GB, ours "
        "the training process's peak resident memory (`ulm train`'s peak_memory_mb) in MiB. "
        "Dice in percent, angiogram Dice (each movie's map > 0.5, summed, binarized) unless said.\n"
    )
    w(
        "The paper's numbers are transcribed in `paper/report.py` (`PAPER`, each checked "
        "against the paper file by `tests/test_paper.py`)"
        + (f"; paper file: `{res['paper_file']}`.\n" if res.get("paper_file") else ".\n")
    )
    w(
        "Test sets: vessel network 111 (2D trees), 112 (2D random trajectories), 113 (3D trees), "
        "never used to train, validate or tune anything. Models trained here (the baselines, "
        "the mask CNN and the Table II variants) saw one store of network 31 only "
        "(see Commands for their exact training).\n"
    )

    # ---- Table I
    w("## Table I: time, training memory, parameters and Dice per method\n")
    degenerate: list[tuple[str, float]] = []
    for dim, ref, ref_name, prow in (
        ("2D", ref2d, ref2d_name, PAPER["table1_2d"]),
        ("3D", ref3d, ref3d_name, PAPER["table1_3d"]),
    ):
        if ref is None:
            continue
        w(f"**{dim}, {ref_name[1:]} MB/FOV, {ref['movies']} movies accumulated.**\n")
        rows = []
        names = list(ref["methods"])
        if dim == "2D" and "table2" in sets and "t2-base" in sets["table2"]["methods"]:
            names.insert(1, "t2-base")
        for name in names:
            e = ref["methods"].get(name) or sets["table2"]["methods"][name]
            if name == "sparse":
                model = models.get(f"shipped-{dim.lower()}", {})
            elif name in ("track", "trackN"):
                model = {}
            else:
                model = models.get(name, {})
            p = prow.get(PAPER_ROW.get(name) or PAPER_ROW_ULM.get(name, ""), {})
            dice_cell = pct(e["dice"])
            if dim == "3D":
                dice_cell += f" (projected {pct(_projected(e))})"
            area = _area(e)
            if area is not None and (area == 0 or area > DEGENERATE_AREA):
                degenerate.append((LABELS.get(name, name), area))
            rows.append(
                [
                    LABELS.get(name, name),
                    fmt(e.get("seconds_per_movie"), 3),
                    fmt(model.get("peak_memory_mb"), 0),
                    str(model["parameters"]) if model.get("parameters") else "-",
                    dice_cell,
                    fmt(area, 2),
                    paper_val(p.get("time_ms"), 0),
                    paper_val(p.get("memory_gb")),
                    paper_val(p.get("dice"), 2),
                ]
            )
        if dim == "3D":
            est = PAPER["table1_3d"]
            for label, e in (("Dense Deep-stULM", est["dense"]), ("mSPCN-ULM", est["mspcn"])):
                t_ms = paper_val(e.get("time_ms_estimated"), 0)
                rows.append(
                    [
                        label,
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                        t_ms,
                        paper_val(e.get("memory_gb_estimated"), 0),
                        "-",
                    ]
                )
        w(
            table(
                [
                    "method",
                    "s per movie",
                    "train peak MiB",
                    "parameters",
                    "Dice %",
                    "map / truth area",
                    "paper ms",
                    "paper GB",
                    "paper Dice %",
                ],
                rows,
            )
        )
        w("")
    w(
        "*map / truth area*: pixels of the accumulated map over those of the accumulated truth "
        "(1 is the truth's extent; a model that marks everything, or nothing, shows it here).\n"
    )
    for label, area in dict(degenerate).items():
        what = (
            "marks no pixel above 0.5"
            if area == 0
            else f"marks {area:.1f}x the truth's area (close to the whole field of view)"
        )
        w(
            f"**{label}** {what}: a model not trained far enough here (the paper's "
            "schedules are GPU days); its row measures time and memory, not the method's Dice.\n"
        )
    w(
        "Memory of the shipped model is that of its own training (`make weights`, see "
        "`ulm info shipped:2d|3d`: 512-frame 2D movies at batch 2; for a model continued "
        "from another, `--init`, its last stage's only, the card giving each stage's), not "
        "comparable "
        "with the models trained here; the row *trained here* is the sparse network trained on "
        "exactly the baselines' data, so its memory and time are the like-for-like comparison. "
        "In 3D the dense baselines are refused by `ulm train` (PyTorch has no 4D convolution); "
        "the paper's 3D dense/mSPCN figures were estimates too (its 694 GB and 366 GB, 8016 ms; "
        "last row).\n"
    )

    # ---- Table II
    w("## Table II: deep supervision, pruning and cascaded learning (2D)\n")
    t2 = sets.get("table2")
    if t2:
        rows = []
        for v, label in VARIANT_LABELS.items():
            e = t2["methods"].get(f"t2-{v}")
            if e is None:
                continue
            model = models.get(f"t2-{v}", {})
            p = PAPER["table2_2d"][v]
            p3 = PAPER["table2_3d"][v]
            rows.append(
                [
                    label,
                    pct(e["dice"]),
                    fmt(model.get("peak_memory_mb"), 0),
                    fmt(model.get("train_seconds"), 1),
                    fmt(e.get("seconds_per_movie"), 3),
                    paper_val(p["dice"], 2),
                    paper_val(p["memory_gb"]),
                    paper_val(p3["dice"], 2),
                    paper_val(p3["memory_gb"]),
                ]
            )
        epochs = models.get("t2-base", {}).get("epochs")
        w(
            f"Each variant trained here for {epochs} epoch(s) (cascade: one more per intermediate "
            f"level) on the same store, scored on the 2D {ref2d_name[1:]} MB/FOV tree set. The "
            "3D columns are the paper's only: 3D variants are not trained by this pipeline.\n"
        )
        w(
            table(
                [
                    "variant",
                    "Dice %",
                    "train peak MiB",
                    "train s",
                    "s per movie",
                    "paper 2D Dice %",
                    "paper 2D GB",
                    "paper 3D Dice %",
                    "paper 3D GB",
                ],
                rows,
            )
        )
        w("")

    # ---- Fig. 4
    w("## Fig. 4: Dice against concentration (vessel trees)\n")
    ours2 = {
        LABELS[m]: [(c, 100 * s["methods"][m]["dice"]) for c, s in _sorted_sets(tree2d)]
        for m in (ref2d or {"methods": {}})["methods"]
    }
    pap2 = {
        LABELS[{"ulm": "trackN"}.get(k, k)]: list(v.items()) for k, v in PAPER["fig4_2d"].items()
    }
    f4 = figs.curves(
        "fig4_2d.png", "2D vessel trees", "MB per FOV", "Dice (%)", ours2, pap2, logx=True
    )
    w(f"![Fig. 4, 2D]({f4})\n")
    w(_conc_table(tree2d, PAPER["fig4_2d"], "dice", "MB/FOV"))
    if tree3d:
        ours3 = {}
        for m in next(iter(tree3d.values()))["methods"]:
            ours3[LABELS[m]] = [(c, 100 * s["methods"][m]["dice"]) for c, s in _sorted_sets(tree3d)]
            ours3[LABELS[m] + ", projected"] = [
                (c, 100 * _projected(s["methods"][m])) for c, s in _sorted_sets(tree3d)
            ]
        pap3 = {}
        for k, v in PAPER["fig4_3d"].items():
            pap3[LABELS[{"ulm": "trackN"}.get(k, k)]] = list(v.items())
        for k, v in PAPER["fig4_3d_projected"].items():
            pap3[LABELS[{"ulm": "trackN"}.get(k, k)] + ", projected"] = list(v.items())
        f43 = figs.curves(
            "fig4_3d.png", "3D vessel trees", "MB per FOV", "Dice (%)", ours3, pap3, logx=True
        )
        w(f"![Fig. 4, 3D]({f43})\n")
        w(
            "3D: volume Dice, and the Dice of the maximum-intensity projections (mean of the "
            "projections along z, x and y) beside the paper's projected Dice.\n"
        )
        w(_conc_table(tree3d, PAPER["fig4_3d"], "dice", "MB/FOV", PAPER["fig4_3d_projected"]))

    # ---- Fig. 5
    w("## Fig. 5: trajectory Dice against concentration (random trajectories)\n")
    rand = sets.get("rand2d", {})
    if rand:
        oursr = {
            LABELS[m]: [(c, 100 * s["methods"][m]["movie_dice"]) for c, s in _sorted_sets(rand)]
            for m in next(iter(rand.values()))["methods"]
        }
        papr = {LABELS[k]: list(v.items()) for k, v in PAPER["fig5"].items()}
        f5 = figs.curves(
            "fig5.png",
            "2D random trajectories",
            "MB per FOV",
            "trajectory Dice (%)",
            oursr,
            papr,
            logx=True,
        )
        w(f"![Fig. 5]({f5})\n")
        w(
            "Trajectory Dice: `ulm score`'s per-movie Dice averaged over movies (the paper "
            "averages per frame; ours is per movie of the same frames).\n"
        )
        w(_conc_table(rand, PAPER["fig5"], "movie_dice", "MB/FOV"))

    # ---- Fig. 6
    w("## Fig. 6: robustness to complex noise on the correlation\n")
    noise = sets.get("noise", {})
    if noise:
        base = {0.0: ref2d} if ref2d else {}
        pts = {**base, **{c: s for c, s in _sorted_sets(noise)}}
        methods = list(next(iter(noise.values()))["methods"])
        oursn = {
            LABELS[m]: [
                (sg, 100 * s["methods"][m]["dice"]) for sg, s in pts.items() if m in s["methods"]
            ]
            for m in methods
        }
        papn = {LABELS[k]: list(v.items()) for k, v in PAPER["fig6"].items()}
        f6 = figs.curves(
            "fig6.png", f"noise, {ref2d_name[1:]} MB/FOV", "sigma", "Dice (%)", oursn, papn
        )
        w(f"![Fig. 6]({f6})\n")
        w(
            "Zero-mean Gaussian noise of standard deviation sigma added to the real and the "
            "imaginary part of the correlation: for the sparse model by `ulm sparsify "
            "--corr-noise` (active sites: its input), for the dense models (which read an image "
            "store; `ulm infer` has no such option) by `paper/corrnoise.py`, a noisy copy of the "
            "image store with the same noise model; sigma 0 is the noise-free set.\n"
        )
        rows = []
        for sg, s in pts.items():
            sp = s.get("sparsify", {})
            cells = [fmt(sg, 2), fmt(sp.get("active_sites"), 0)]
            for m in methods:
                cells.append(pct(s["methods"][m]["dice"]) if m in s["methods"] else "-")
            # sigma 0: the paper's noise-free Table I value
            pv = {0.0: PAPER["table1_2d"]["sparse"]["dice"], **PAPER["fig6"]["sparse"]}.get(
                round(sg, 2)
            )
            cells.append(paper_val(pv))
            rows.append(cells)
        w(
            table(
                ["sigma", "active sites"] + [LABELS[m] for m in methods] + ["paper sparse"],
                rows,
            )
        )
        w("")

    # ---- Fig. 8
    w("## Fig. 8: Dice against active sites (dense-to-sparse rules)\n")
    d2s = sets.get("d2s", {})
    if d2s:
        curves: dict[str, list[tuple[float, float]]] = {}
        rows = []
        for name, s in sorted(d2s.items()):
            sp = s.get("sparsify", {})
            rule = "topk" if name.startswith("topk") else "threshold"
            rule = "mask" if name == "mask" else rule
            param = {"mask": "mask CNN", "topk": f"k = {name[4:]}"}.get(rule, f"T = {name[3:]}")
            for m, e in s["methods"].items():
                who = "sparse" if m == "sparse" else "masked"
                curves.setdefault(f"{who} {rule}", []).append(
                    (sp.get("active_sites") or 0, 100 * e["dice"])
                )
            rows.append(
                [
                    rule,
                    param,
                    fmt(sp.get("active_sites"), 0),
                    pct(sp.get("kept_bubble_fraction")),
                    pct(s["methods"].get("sparse", {}).get("dice")),
                    pct(s["methods"].get("masked", {}).get("dice")),
                ]
            )
        f8 = figs.curves(
            "fig8.png",
            f"dense-to-sparse, {ref2d_name[1:]} MB/FOV",
            "active sites per movie",
            "Dice (%)",
            curves,
            {k: list(v) for k, v in PAPER["fig8"].items()},
            logx=True,
        )
        w(f"![Fig. 8]({f8})\n")
        total = next(iter(d2s.values())).get("sparsify", {}).get("sites_per_movie")
        if total:
            w(
                f"Active sites per movie out of {total} (the paper's 512-frame 2D movies have "
                "524288, so its site counts compare with ours only at 512 frames).\n"
            )
        w(
            "The shipped sparse model sees every kept site (`ulm infer --input-threshold none`; "
            "it was trained on sites above 0.25); the dense model with masked input is the one "
            "trained here with the 0.10-threshold mask, given each rule's mask at test time "
            "(the paper retrained one per rule). Paper (section IV.C.1, ends of each curve): "
            + "; ".join(
                f"{k}: " + ", ".join(f"{d:.1f} % at {int(n)} sites" for n, d in v)
                for k, v in PAPER["fig8"].items()
            )
            + ".\n"
        )
        w(
            table(
                [
                    "rule",
                    "parameter",
                    "active sites",
                    "true bubble px kept %",
                    "sparse Dice %",
                    "dense masked Dice %",
                ],
                rows,
            )
        )
        w("")

    # ---- accumulation
    w("## Dice against accumulated movies\n")
    if ref2d:
        ks = sorted({k for e in ref2d["methods"].values() for k, _ in e["after"]})
        rows = []
        accs = {}
        for m, e in ref2d["methods"].items():
            after = dict((int(k), d) for k, d in e["after"])
            rows.append([LABELS[m]] + [pct(after.get(k)) for k in ks])
            accs[LABELS[m]] = [(k, 100 * d) for k, d in after.items()]
        fa = figs.curves(
            "accumulation.png",
            f"2D trees, {ref2d_name[1:]} MB/FOV",
            "movies accumulated",
            "Dice (%)",
            accs,
            {},
        )
        w(f"![accumulation]({fa})\n")
        w(
            f"2D vessel trees at {ref2d_name[1:]} MB/FOV (`ulm score`'s dice_after_movies); the "
            "paper accumulates its whole test set (500 movies) and gives no such curve.\n"
        )
        w(table(["method"] + [f"k={k}" for k in ks], rows))
        w("")

    # ---- PALA
    w("## PALA localization metrics\n")
    w(
        "For the methods that output positions (`ulm track`; mSPCN-ULM's per-frame detections), "
        "per frame, truth outside the field of view dropped, greedy pairing within lambda/2, "
        "true positives within lambda/4 (METRICS.md). The paper reports none of these.\n"
    )
    rows = []
    for group, gsets in (("2D trees", tree2d), ("2D random", rand), ("3D trees", tree3d)):
        for c, s in _sorted_sets(gsets):
            for m, e in s["methods"].items():
                loc = e.get("localization")
                if not loc:
                    continue
                rows.append(
                    [
                        group,
                        fmt(c, 0),
                        LABELS[m],
                        pct(loc.get("precision")),
                        pct(loc.get("sensitivity")),
                        pct(loc.get("jaccard")),
                        fmt(loc.get("pala_rmse_mean_distance_wavelengths"), 3),
                        fmt(loc.get("rmse_wavelengths"), 3),
                    ]
                )
    w(
        table(
            [
                "set",
                "MB/FOV",
                "method",
                "precision %",
                "sensitivity %",
                "Jaccard %",
                "PALA RMSE (mean distance) / lambda",
                "RMSE / lambda",
            ],
            rows,
        )
    )
    w("")

    # ---- findings
    w("## Findings: which of the paper's hold at this scale\n")
    w(table(["paper's finding", "paper", "here", "holds here"], findings(res)))
    w("")

    # ---- machine and time
    w("## Machine and time\n")
    m = res["machine"]
    w(
        f"- machine: `{m['uname']}`, {m['cores']} cores, {m['memory_gib']} GiB memory, "
        f"Python {m['python']}"
    )
    log = res["log"]
    if log:
        starts = [datetime.fromisoformat(r["start"]) for r in log]
        ends = [datetime.fromisoformat(r["end"]) for r in log]
        span = (max(ends) - min(starts)).total_seconds()
        w(
            f"- {len(log)} commands, {sum(r['seconds'] for r in log):.1f} s of command time, "
            f"{span:.0f} s from the first start to the last end (across resumed runs it includes "
            "the pauses)\n"
        )
        rows = []
        for part in PARTS + sorted({r["part"] for r in log} - set(PARTS)):
            rs = [r for r in log if r["part"] == part]
            if rs:
                rows.append(
                    [
                        part,
                        str(len(rs)),
                        fmt(sum(r["seconds"] for r in rs), 1),
                        fmt(max(r["seconds"] for r in rs), 1),
                    ]
                )
        w(table(["part", "commands", "seconds", "longest s"], rows))
        w("")
    # ---- commands
    w("## Commands\n")
    w(
        "Every command of the run, in order of start, with its wall-clock seconds "
        "(`make -f paper/Makefile SIZE=... -n` prints them without running).\n"
    )
    w("```sh")
    for r in log:
        w(f"# {r['part']}, {r['seconds']:.1f} s\n{r['command']}")
    w("```\n")
    return "\n".join(md)


def _conc_table(
    sets: dict[str, Any],
    paper: dict[str, dict[float, float]],
    key: str,
    unit: str,
    paper_projected: dict[str, dict[float, float]] | None = None,
) -> str:
    cs = _sorted_sets(sets)
    if not cs:
        return ""
    header = ["method"] + [f"{c:g} {unit}" for c, _ in cs]
    rows = []
    for m in cs[0][1]["methods"]:
        pk = {"trackN": "ulm"}.get(m, m)
        cells = [LABELS[m]]
        for c, s in cs:
            e = s["methods"][m]
            cell = pct(e[key])
            if paper_projected is not None:
                cell += f" (proj. {pct(_projected(e))})"
            pv = paper.get(pk, {}).get(c)
            ppv = (paper_projected or {}).get(pk, {}).get(c)
            if pv is not None or ppv is not None:
                bits = [paper_val(pv) if pv is not None else None]
                if ppv is not None:
                    bits.append(f"proj. {paper_val(ppv)}")
                cell += " [paper " + ", ".join(b for b in bits if b) + "]"
            cells.append(cell)
        rows.append(cells)
    return table(header, rows) + "\n"


def findings(res: dict[str, Any]) -> list[list[str]]:
    """The paper's main claims, each checked on this run's numbers."""
    sets, models = res["sets"], res["models"]
    rows: list[list[str]] = []

    def yes(b: bool) -> str:
        return "yes" if b else "no"

    tree2d = sets.get("tree2d", {})
    ref = tree2d.get("c5") or next(iter(tree2d.values()), None)
    mem = {k: models.get(k, {}).get("peak_memory_mb") for k in ("t2-base", "dense", "mspcn")}
    if mem["t2-base"] and mem["dense"]:
        r = mem["t2-base"] / mem["dense"]
        rows.append(
            [
                "sparse training needs about half the dense memory (2D)",
                "6.8 / 12.6 GB = 0.54",
                f"{mem['t2-base']:.0f} / {mem['dense']:.0f} MiB = {r:.2f}",
                yes(r < 1),
            ]
        )
    if ref and "sparse" in ref["methods"] and "dense" in ref["methods"]:
        # like for like: the sparse network trained here has the dense one's width and data
        base = (sets.get("table2") or {}).get("methods", {}).get("t2-base")
        ts = (base or ref["methods"]["sparse"]).get("seconds_per_movie")
        td = ref["methods"]["dense"].get("seconds_per_movie")
        if ts and td:
            rows.append(
                [
                    "sparse inference is faster than dense (2D)",
                    "19 vs 34 ms",
                    f"{ts:.3f} vs {td:.3f} s per movie"
                    + (" (both trained here, same width)" if base else ""),
                    yes(ts < td),
                ]
            )
        if "trackN" in ref["methods"]:
            ds, dt = ref["methods"]["sparse"]["dice"], ref["methods"]["trackN"]["dice"]
            rows.append(
                [
                    "sparse beats conventional ULM at 5 MB/FOV (2D)",
                    "73.9 vs 60.8 %",
                    f"{100 * ds:.1f} vs {100 * dt:.1f} %",
                    yes(ds > dt),
                ]
            )
        dd = ref["methods"]["dense"]["dice"]
        ds = ref["methods"]["sparse"]["dice"]
        rows.append(
            [
                "dense beats sparse (2D, 5 MB/FOV)",
                "80.0 vs 73.9 %",
                f"{100 * dd:.1f} vs {100 * ds:.1f} % (dense trained briefly here)",
                yes(dd > ds),
            ]
        )
    cs = _sorted_sets(tree2d)
    if len(cs) >= 2 and "trackN" in cs[0][1]["methods"]:
        c0, c1 = cs[0][0], cs[-1][0]
        p_ulm, p_sp = PAPER["fig4_2d"]["ulm"], PAPER["fig4_2d"]["sparse"]

        def span(p: dict[float, float]) -> str:
            return f"{paper_val(p.get(c0))} -> {paper_val(p.get(c1))} %"

        lo, hi = cs[0][1]["methods"]["trackN"]["dice"], cs[-1][1]["methods"]["trackN"]["dice"]
        rows.append(
            [
                f"conventional ULM degrades with concentration ({c0:g} -> {c1:g} MB/FOV)",
                span(p_ulm),
                f"{100 * lo:.1f} -> {100 * hi:.1f} %",
                yes(hi < lo),
            ]
        )
        slo, shi = cs[0][1]["methods"]["sparse"]["dice"], cs[-1][1]["methods"]["sparse"]["dice"]
        rows.append(
            [
                f"sparse loses less than ULM with concentration ({c0:g} -> {c1:g} MB/FOV)",
                f"{span(p_sp)} (ULM {span(p_ulm)})",
                f"{100 * slo:.1f} -> {100 * shi:.1f} % (ULM {100 * lo:.1f} -> {100 * hi:.1f} %)",
                yes((shi - slo) > (hi - lo)),
            ]
        )
    tree3d = sets.get("tree3d", {})
    r3 = tree3d.get("c30") or next(iter(tree3d.values()), None)
    if r3 and "sparse" in r3["methods"] and "trackN" in r3["methods"]:
        d3s, d3t = r3["methods"]["sparse"]["dice"], r3["methods"]["trackN"]["dice"]
        rows.append(
            [
                "3D: sparse beats conventional ULM at 30 MB/FOV",
                "50.0 vs 12.3 %",
                f"{100 * d3s:.1f} vs {100 * d3t:.1f} %",
                yes(d3s > d3t),
            ]
        )
    t2 = sets.get("table2")
    if t2:
        mb = {v: models.get(f"t2-{v}", {}).get("peak_memory_mb") for v in VARIANT_LABELS}
        dc = {v: t2["methods"].get(f"t2-{v}", {}).get("dice") for v in VARIANT_LABELS}
        if mb["prune"] and mb["base"]:
            rows.append(
                [
                    "pruning lowers training memory (2D)",
                    "6.8 -> 5.7 GB",
                    f"{mb['base']:.0f} -> {mb['prune']:.0f} MiB",
                    yes(mb["prune"] < mb["base"]),
                ]
            )
        if dc["prune"] is not None and dc["base"] is not None:
            rows.append(
                [
                    "pruning costs Dice (2D)",
                    "73.9 -> 62.4 %",
                    f"{100 * dc['base']:.1f} -> {100 * dc['prune']:.1f} %",
                    yes(dc["prune"] < dc["base"]),
                ]
            )
        if dc["ds"] is not None and dc["base"] is not None:
            rows.append(
                [
                    "the intermediate loss does not help (2D)",
                    "73.9 -> 72.0 %",
                    f"{100 * dc['base']:.1f} -> {100 * dc['ds']:.1f} %",
                    yes(dc["ds"] <= dc["base"]),
                ]
            )
    noise = sets.get("noise", {})
    ns = _sorted_sets(noise)
    if ref is not None:
        ns = [(0.0, ref), *ns]  # sigma 0: the noise-free set (the paper's Table I value)
    if len(ns) >= 2 and "sparse" in ns[0][1]["methods"]:
        pn = {0.0: PAPER["table1_2d"]["sparse"]["dice"], **PAPER["fig6"]["sparse"]}
        s0, s1 = ns[0][0], ns[-1][0]
        a, b = ns[0][1]["methods"]["sparse"]["dice"], ns[-1][1]["methods"]["sparse"]["dice"]
        rows.append(
            [
                f"sparse is robust to noise (sigma {s0:g} -> {s1:g}: at most 1 point lost)",
                f"{paper_val(pn.get(round(s0, 2)))} -> {paper_val(pn.get(round(s1, 2)))} %",
                f"{100 * a:.1f} -> {100 * b:.1f} %",
                yes(b >= a - 0.01),
            ]
        )
    d2s = sets.get("d2s", {})
    if "mask" in d2s and len(d2s) > 1:
        sites = {k: s.get("sparsify", {}).get("active_sites") or 0 for k, s in d2s.items()}
        fewest = min(sites, key=sites.get)
        rows.append(
            [
                "the learned mask keeps the fewest sites",
                "1400 sites, 67.8 %",
                f"mask {sites['mask']:.0f} sites, "
                f"{100 * d2s['mask']['methods']['sparse']['dice']:.1f} % (fewest: {fewest})",
                yes(fewest == "mask"),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("out", type=Path, help="the pipeline's output folder")
    p.add_argument("--paper", type=Path, help="the paper file (recorded in the report)")
    p.add_argument("--size", help="the SIZE the pipeline ran at")
    p.add_argument("--from-results", type=Path, help="render from this results.json")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.from_results:
        res = json.loads(a.from_results.read_text())
    else:
        res = collect(a.out, a.size)
        if a.paper is not None:
            res["paper_file"] = str(a.paper)
        tmp = a.out / ".results.json.tmp"
        tmp.write_text(json.dumps(res, indent=1) + "\n")
        os.replace(tmp, a.out / "results.json")
    text = render(res, a.out)
    tmp = a.out / ".report.md.tmp"
    tmp.write_text(text)
    os.replace(tmp, a.out / "report.md")
    print(f"{a.out / 'report.md'}: {len(text.splitlines())} lines", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
