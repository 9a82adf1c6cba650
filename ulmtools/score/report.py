"""The human-readable comparison table of a scoring report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _f(x: Any, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = [f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths)]
    lines = ["  ".join(f.format(h) for f, h in zip(fmt, header)).rstrip()]
    lines += ["  ".join(f.format(c) for f, c in zip(fmt, r)).rstrip() for r in rows]
    return lines


def format_report(doc: dict[str, Any]) -> str:
    """The comparison table: one row per method, then pixel counts and Dice against movies."""
    truth = doc["truth"]
    methods = doc["methods"]
    grid = truth["grid"]
    shape = "x".join(str(n) for n in grid["shape"])
    random = truth.get("random_trajectories")
    lines = [
        f"truth: {truth['path']} ({doc['movies']} of {truth['movies']} movies, "
        f"{shape} {'/'.join(grid['axes'])} grid at "
        f"{'/'.join(f'{s * 1e6:.3g}' for s in grid['spacing'])} um)"
    ]
    three_d = any("projected_dice" in m for m in methods)
    has_loc = any(m.get("localization") for m in methods)
    movie_col = "traj. Dice" if random else "movie Dice"
    header = ["method", "kind", "Dice", movie_col]
    if three_d:
        header += [f"proj. {a}" for a in grid["axes"]]
    if has_loc:
        header += ["precision", "sensitivity", "Jaccard", "PALA RMSE/λ", "RMSE/λ"]
    rows = []
    for m in methods:
        row = [m["path"], m["kind"], _f(m["dice"]), _f(m.get("per_movie_dice_mean"))]
        if three_d:
            pd = m.get("projected_dice") or {}
            row += [_f(pd.get(a)) for a in grid["axes"]]
        if has_loc:
            loc = m.get("localization") or {}
            row += [
                _f(loc.get("precision")),
                _f(loc.get("sensitivity")),
                _f(loc.get("jaccard")),
                _f(loc.get("pala_rmse_mean_distance_wavelengths"), 3),
                _f(loc.get("rmse_wavelengths"), 3),
            ]
        rows.append(row)
    lines += ["", *_table(header, rows)]

    lines += ["", "pixels of the accumulated maps"]
    prow = [
        [m["path"], *(str(m["pixels"][k]) for k in ("predicted", "true", "tp", "fp", "fn"))]
        for m in methods
    ]
    lines += _table(["method", "predicted", "true", "TP", "FP", "FN"], prow)

    ks = sorted({k["movies"] for m in methods for k in (m.get("dice_after_movies") or [])})
    if ks:
        lines += ["", "Dice after k accumulated movies"]
        krows = []
        for m in methods:
            by_k = {k["movies"]: k["dice"] for k in (m.get("dice_after_movies") or [])}
            krows.append([m["path"], *(_f(by_k.get(k)) for k in ks)])
        lines += _table(["method", *(f"k={k}" for k in ks)], krows)

    notes = [
        f"{movie_col}: Dice of each movie alone, averaged over movies"
        + (" (random trajectories: the trajectory Dice)" if random else "")
    ]
    if has_loc:
        loc = next(m["localization"] for m in methods if m.get("localization"))
        notes.append(
            f"localization: {doc['pairing']} pairing per frame, pairs < λ/2, TP < λ/4, "
            f"λ = {loc['wavelength_m'] * 1e6:.4g} um ({loc['wavelength_source']});\n"
            "  precision, sensitivity, Jaccard per movie, averaged; "
            "PALA RMSE = mean pair distance, RMSE = root mean square"
        )
    lines += ["", *notes]
    return "\n".join(lines) + "\n"
