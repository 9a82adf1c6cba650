#!/usr/bin/env bash
# The held-out tables of the model cards (issues 12, 13): test stores on a vessel network
# never used to train, validate or tune anything (2D: NET=101, 3D: 103), each MODEL run through
# 'ulm infer' and 'ulm track' (defaults, and the ideal N = the concentration) run on the
# same movies, all scored by 'ulm score'; writes $WORK/heldout.json and prints the tables.
#
#   scripts/heldout.sh [MODEL ...]             (default: shipped:2d)
#   DIM=3 scripts/heldout.sh [MODEL ...]       (default: shipped:3d)
#   2D: NET=101 MOVIES=8 FRAMES=512 CONCENTRATIONS="1 5 10 20" NOISE="0.1 0.25" NOISE_AT=5
#   3D: NET=103 MOVIES=4 FRAMES=128 CONCENTRATIONS="1 10 30" NOISE="" (channel level too)
#   WORK=build/heldout-${DIM}d (kept: stores are made once, so a rerun scores new models only)
#   FEATURES=corr,iq             the site features of the test stores (ulm sparsify --features; a
#                                model trained on corr,iq needs them), stores named *-sp-corr-iq;
#                                default: corr,iq if any MODEL reads the IQ, else corr (a
#                                correlation model reads corr,iq stores to the same maps)
#   INFER_ARGS="--mirror none --delays none --threshold 0.5" TAG=-plain   extra 'ulm infer' options (e.g. to
#                                score a model without the inference it recommends), and a tag
#                                for its prediction stores
set -euo pipefail

DIM=${DIM:-2}
if [ "$DIM" = 3 ]; then
    NET=${NET:-103}
    MOVIES=${MOVIES:-4}
    FRAMES=${FRAMES:-128}
    CONCENTRATIONS=${CONCENTRATIONS:-1 10 30}
    NOISE=${NOISE-}
else
    NET=${NET:-101}
    MOVIES=${MOVIES:-8}
    FRAMES=${FRAMES:-512}
    CONCENTRATIONS=${CONCENTRATIONS:-1 5 10 20}
    NOISE=${NOISE-0.1 0.25}
fi
NOISE_AT=${NOISE_AT:-5}
WORK=${WORK:-build/heldout-${DIM}d}
read -r -a infer_args <<<"${INFER_ARGS:-}"
models=("$@")
[ ${#models[@]} -gt 0 ] || models=("shipped:${DIM}d")
if [ -z "${FEATURES:-}" ]; then
    FEATURES=$(python - "${models[@]}" <<'PY'
import sys

from ulmtools.infer.weights import resolve
from ulmtools.models.store import info
from ulmtools.train.data import model_channels

iq = any("iq_real" in model_channels(info(resolve(m))) for m in sys.argv[1:])
print("corr,iq" if iq else "corr")
PY
    )
fi
sp=sp
[ "$FEATURES" = corr ] || sp="sp-${FEATURES//,/-}"
mkdir -p "$WORK"

once() { # output-store command...: run the command (writing OUTPUT.part.zarr) unless done
    local out=$1
    shift
    [ -d "$out" ] && return 0
    "$@"
    mv "${out%.zarr}.part.zarr" "$out"
}

sets=()
for c in $CONCENTRATIONS; do
    base="$WORK/n$NET-c$c"
    if [ ! -d "$base-img.zarr" ]; then
        ulm simulate "$base-raw.zarr" --dim "$DIM" --movies "$MOVIES" --frames "$FRAMES" \
            --concentration "$c" --network-seed "$NET" --seed "$((NET * 100 + ${c%.*}))" -q -f
        once "$base-img.zarr" ulm beamform "$base-raw.zarr" "$base-img.part.zarr" -q -f
        rm -rf "$base-raw.zarr"
    fi
    once "$base-$sp.zarr" ulm sparsify "$base-img.zarr" "$base-$sp.part.zarr" \
        --features "$FEATURES" -q -f
    sets+=("c$c")
    once "$base-track.zarr" ulm track "$base-img.zarr" "$base-track.part.zarr" -q -f
    once "$base-trackN.zarr" ulm track "$base-img.zarr" "$base-trackN.part.zarr" \
        --detect "max-per-frame:${c%.*}" -q -f
    if [ "$c" = "$NOISE_AT" ]; then
        i=0
        for s in $NOISE; do
            i=$((i + 1))
            once "$base-s$s-$sp.zarr" ulm sparsify "$base-img.zarr" "$base-s$s-$sp.part.zarr" \
                --features "$FEATURES" \
                --corr-noise "$s" --seed "$((NET * 10 + i))" -q -f
            sets+=("c$c-s$s")
        done
    fi
done

scores=()
for m in "${models[@]}"; do
    tag=$(basename "${m//:/-}" .zarr)${TAG:-}
    for s in "${sets[@]}"; do
        pred="$WORK/n$NET-$s-$tag.zarr"
        once "$pred" ulm infer "$m" "$WORK/n$NET-$s-$sp.zarr" "${pred%.zarr}.part.zarr" \
            "${infer_args[@]}" -q -f
        [ -f "$pred.json" ] || ulm score "$pred" -o "$pred.json" -q >/dev/null
        scores+=("$m${TAG:-}|$s|$pred.json")
    done
done
for c in $CONCENTRATIONS; do
    for t in track trackN; do
        st="$WORK/n$NET-c$c-$t.zarr"
        [ -f "$st.json" ] || ulm score "$st" -o "$st.json" -q >/dev/null
        scores+=("ulm $t|c$c|$st.json")
    done
done
python3 - "$WORK/heldout.json" "$MOVIES" "$FRAMES" "$NET" "${scores[@]}" <<'PY'
import json
import sys

out, movies, frames, net, *rows = sys.argv[1:]
table: dict = {}
for row in rows:
    method, s, path = row.split("|")
    table.setdefault(method, {})[s] = json.load(open(path))["methods"][0]
json.dump(table, open(out, "w"), indent=1)
sets = list(dict.fromkeys(s for v in table.values() for s in v))
clean = [s for s in sets if "-s" not in s]
noisy = [s for s in sets if "-s" in s]


def name(s: str) -> str:
    c, *n = s[1:].split("-s")
    return f"{c} MB/FOV" + (f", sigma {n[0]}" if n else "")


print(f"Angiogram Dice, network {net}, {movies} movies x {frames} frames accumulated:\n")
print("| method | " + " | ".join(name(s) for s in clean) + " |")
print("|---" * (len(clean) + 1) + "|")
def dice(r: dict) -> str:
    proj = r.get("projected_dice")
    if not proj:
        return f"{r['dice']:.3f}"
    axes = proj if isinstance(proj, dict) else {}
    parts = " / ".join(f"{axes[a]:.2f}" for a in ("z", "x", "y") if a in axes)
    return f"{r['dice']:.3f} ({parts})" if parts else f"{r['dice']:.3f}"


for m, v in table.items():
    print(f"| {m} | " + " | ".join(dice(v[s]) if s in v else "" for s in clean) + " |")
print("\nDice after 1 / 2 / 4 / ... movies; per-movie Dice mean; map area / truth area:\n")
print("| method | " + " | ".join(name(s) for s in clean) + " |")
print("|---" * (len(clean) + 1) + "|")
for m, v in table.items():
    cells = []
    for s in clean:
        if s not in v:
            cells.append("")
            continue
        r = v[s]
        acc = "/".join(f"{d['dice']:.2f}" for d in r["dice_after_movies"])
        area = r["pixels"]["predicted"] / max(r["pixels"]["true"], 1)
        cells.append(f"{acc}; {r['per_movie_dice_mean']:.2f}; {area:.2f}")
    print(f"| {m} | " + " | ".join(cells) + " |")
if noisy:
    print("\nComplex noise on corr, Dice (change from sigma 0):\n")
    print("| method | " + " | ".join(name(s) for s in noisy) + " |")
    print("|---" * (len(noisy) + 1) + "|")
    for m, v in table.items():
        if not any(s in v for s in noisy):
            continue
        cells = []
        for s in noisy:
            ref = v.get(s.split("-s")[0])
            d = v[s]["dice"]
            cells.append(f"{d:.3f} ({d - ref['dice']:+.3f})" if ref else f"{d:.3f}")
        print(f"| {m} | " + " | ".join(cells) + " |")
PY
