"""make paper: the pipeline (paper/Makefile), its report (paper/report.py) and helpers.

The slow test runs the whole pipeline at SIZE=tiny into a temporary folder and checks
the report and that a rerun recomputes nothing; the fast ones check the report
generator on the results of a real tiny run (tests/data/paper-tiny/results.json, written
by `make -f paper/Makefile SIZE=tiny`), the paper numbers it quotes against the paper
file, the corr-noise helper, and ulm score on a prediction with empty movies.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ULM = str(BIN / "ulm")
FIXTURE = ROOT / "tests" / "data" / "paper-tiny" / "results.json"
PAPER_MD = ROOT.parent / "shared" / "paper" / "sparse-tensor-ulm.md"

_spec = importlib.util.spec_from_file_location("paper_report", ROOT / "paper" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)

# table columns that hold words, not numbers
TEXT_COLUMNS = {
    "method",
    "variant",
    "rule",
    "parameter",
    "set",
    "part",
    "paper's finding",
    "paper",
    "here",
    "holds here",
}
NUMBER = re.compile(r"^-?\d+(\.\d+)?")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd or ROOT, env=_env(), capture_output=True, text=True, check=False
    )


def tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every markdown table: (header, rows of cells)."""
    out, lines = [], md.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("| "):
                rows.append([c.strip() for c in lines[i].strip("|").split("|")])
                i += 1
            out.append((header, rows))
        else:
            i += 1
    return out


def section(md: str, title: str) -> str:
    """The text of the '## title...' section, up to the next '## '."""
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", md, re.M | re.S)
    assert m, f"section {title!r} missing"
    return m.group(1)


def check_report(out: Path) -> str:
    """The checks every report must pass; returns its text."""
    md = (out / "report.md").read_text()
    for title in report.SECTIONS:
        body = section(md, title)
        assert body.strip(), f"section {title!r} is empty"
    # every table's number columns parse, and most cells hold a measured number
    all_tables = tables(md)
    assert len(all_tables) >= 12
    for header, rows in all_tables:
        assert rows, f"table {header} has no rows"
        for row in rows:
            assert len(row) == len(header), (header, row)
            for col, cell in zip(header, row, strict=True):
                if col in TEXT_COLUMNS:
                    continue
                if cell == "-":
                    continue
                assert NUMBER.match(cell), f"{col}: {cell!r} is not a number"
                for x in re.findall(r"-?\d+(?:\.\d+)?", cell):
                    assert math.isfinite(float(x))
    # Table I: the shipped sparse model and ulm track have a measured Dice and time
    t1 = section(md, "Table I")
    for header, rows in tables(t1):
        for row in rows:
            if row[0].startswith(("Sparse Deep-stULM (shipped", "ulm track")):
                assert NUMBER.match(row[header.index("Dice %")]), row
                assert NUMBER.match(row[header.index("s per movie")]), row
    # every figure is a valid PNG of a reasonable size
    pngs = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md)
    assert {"fig4_2d.png", "fig4_3d.png", "fig5.png", "fig6.png", "fig8.png"} <= set(pngs)
    import matplotlib.image as mpimg

    for name in pngs:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        img = mpimg.imread(out / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300, name
        assert np.ptp(img[..., :3]) > 0.5, f"{name} is blank"
    return md


def test_report_renders_from_a_tiny_run(tmp_path: Path) -> None:
    res = json.loads(FIXTURE.read_text())
    assert report.main([str(tmp_path), "--from-results", str(FIXTURE)]) == 0
    md = check_report(tmp_path)
    # the measured numbers are the fixture's: Table I's sparse Dice is its score's
    ref = res["sets"]["tree2d"]["c5"]["methods"]["sparse"]
    assert f"| {100 * ref['dice']:.1f} |" in section(md, "Table I")
    # every command of the run is listed
    commands = section(md, "Commands")
    assert all(r["command"] in commands for r in res["log"])
    # each finding row says yes or no
    rows = tables(section(md, "Findings"))[0][1]
    assert rows and all(r[-1] in ("yes", "no") for r in rows)


def test_report_findings_follow_the_numbers() -> None:
    """Swap the ranking in the data and the finding's verdict flips."""
    res = json.loads(FIXTURE.read_text())
    ref = res["sets"]["tree2d"]["c5"]["methods"]

    def verdict(r: dict) -> str:
        rows = report.findings(r)
        return next(x[-1] for x in rows if x[0].startswith("sparse beats conventional ULM"))

    ref["sparse"]["dice"], ref["trackN"]["dice"] = 0.7, 0.6
    assert verdict(res) == "yes"
    ref["sparse"]["dice"], ref["trackN"]["dice"] = 0.5, 0.6
    assert verdict(res) == "no"


def test_report_flags_a_model_that_marks_nothing_or_everything(tmp_path: Path) -> None:
    res = json.loads(FIXTURE.read_text())
    methods = res["sets"]["tree2d"]["c5"]["methods"]
    true = methods["sparse"]["pixels"]["true"]
    methods["dense"]["pixels"]["predicted"] = 0
    methods["sparse"]["pixels"]["predicted"] = true  # area 1: not flagged
    fixture = tmp_path / "results.json"
    fixture.write_text(json.dumps(res))
    out = tmp_path / "out"
    assert report.main([str(out), "--from-results", str(fixture)]) == 0
    t1 = section((out / "report.md").read_text(), "Table I")
    assert "**Dense Deep-stULM, trained here** marks no pixel above 0.5" in t1
    assert "**Sparse Deep-stULM (shipped model)**" not in t1
    row = next(r for h, rows in tables(t1) for r in rows if r[0].startswith("Sparse Deep-stULM (s"))
    assert row[tables(t1)[0][0].index("map / truth area")] == "1.00"
    methods["dense"]["pixels"]["predicted"] = 4 * true
    fixture.write_text(json.dumps(res))
    assert report.main([str(out), "--from-results", str(fixture)]) == 0
    assert "marks 4.0x the truth's area" in section((out / "report.md").read_text(), "Table I")


@pytest.mark.skipif(
    not PAPER_MD.is_file(), reason="the reference paper file is not beside the repo"
)
def test_paper_numbers_are_in_the_paper() -> None:
    text = PAPER_MD.read_text()

    def numbers(x: object) -> list[float]:
        if isinstance(x, dict):
            return [n for v in x.values() for n in numbers(v)]
        if isinstance(x, list | tuple):
            return [n for v in x for n in numbers(v)]
        return [float(x)]

    printed = {float(s) for s in re.findall(r"\d+(?:\.\d+)?", text)}
    for key, block in report.PAPER.items():
        for n in numbers(block):
            assert n in printed, f"PAPER[{key!r}]: {n} is not printed in the paper"


def test_corr_noise_helper(tmp_path: Path) -> None:
    img = tmp_path / "img.zarr"
    r = _run(ULM, "simulate", str(img), "--level", "image", "--movies", "1", "--frames", "16",
             "--seed", "5", "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    noisy = tmp_path / "noisy.zarr"
    r = _run(sys.executable, "paper/corrnoise.py", str(img), str(noisy), "--sigma", "0.2",
             "--seed", "1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _run(ULM, "info", str(noisy), "--validate").returncode == 0
    import zarr

    a = np.asarray(zarr.open_array(str(img / "corr"), mode="r")[:])
    b = np.asarray(zarr.open_array(str(noisy / "corr"), mode="r")[:])
    d = (b - a).ravel()
    assert abs(d.real.std() - 0.2) < 0.01 and abs(d.imag.std() - 0.2) < 0.01
    assert abs(d.real.mean()) < 0.01
    attrs = json.loads((noisy / "zarr.json").read_text())["attributes"]
    assert attrs["provenance"][-1]["stage"] == "paper-corr-noise"
    assert attrs["provenance"][-1]["parameters"]["sigma"] == 0.2
    assert attrs["id"] != json.loads((img / "zarr.json").read_text())["attributes"]["id"]


def test_score_a_prediction_with_empty_movies(tmp_path: Path) -> None:
    """A model that finds nothing (here: no input site above threshold 1) scores 0."""
    img = tmp_path / "img.zarr"
    assert _run(ULM, "simulate", str(img), "--level", "image", "--movies", "2", "--frames",
                "16", "--seed", "7", "-q").returncode == 0  # fmt: skip
    sp, pred = tmp_path / "sp.zarr", tmp_path / "pred.zarr"
    assert _run(ULM, "sparsify", str(img), str(sp), "--threshold", "1", "-q").returncode == 0
    assert _run(ULM, "infer", "shipped:2d", str(sp), str(pred), "-q").returncode == 0
    r = _run(ULM, "score", str(pred), "--json", "-q")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)["methods"][0]
    assert m["dice"] == 0 and m["per_movie_dice"] == [0, 0]
    assert m["pixels"]["predicted"] == 0 and m["pixels"]["true"] > 0


@pytest.mark.slow
def test_make_paper_tiny(tmp_path: Path) -> None:
    out = tmp_path / "paper"
    make = ["make", "-f", "paper/Makefile", "SIZE=tiny", f"OUT={out}", f"ULM={ULM}",
            f"PY={sys.executable}", "-j2"]  # fmt: skip
    r = _run(*make)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check_report(out)
    res = json.loads((out / "results.json").read_text())
    assert set(res["sets"]) == {"tree2d", "rand2d", "tree3d", "noise", "d2s", "table2"}
    logged = {p.name for p in (out / "log").glob("*.json")}
    assert len(logged) == len(res["log"]) > 50
    # resumable: nothing left to do, and a rerun runs nothing
    assert _run(*make, "-q").returncode == 0
    stamp = {p: p.stat().st_mtime_ns for p in (out / "log").glob("*.json")}
    r = _run(*make)
    assert r.returncode == 0 and "timed.py" not in r.stdout, r.stdout
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # an interrupted stage (its output missing) is redone, and only it and what follows
    shutil.rmtree(out / "tree2d" / "c1" / "trackN.zarr")
    (out / "tree2d" / "c1" / "trackN.json").unlink()
    r = _run(*make)
    assert r.returncode == 0, r.stderr[-3000:]
    redone = sorted(
        p.name for p in (out / "log").glob("*.json") if stamp.get(p) != p.stat().st_mtime_ns
    )
    assert redone == ["tree2d__c1__score.json.json", "tree2d__c1__trackN.json.json"], redone
    assert (out / "tree2d" / "c1" / "trackN.zarr").is_dir()
