#!/usr/bin/env bash
# Make the pretrained Sparse Deep-stULM models shipped in the package
# (ulmtools/weights/deepstulm-{2d,3d}.zarr, used by 'ulm infer shipped:2d|3d').
#
# 2D recipe (issue 12, measured in ulmtools/weights/FINDINGS-2d.md): training movies
# from several vessel networks ("animals", --network-seed) at a mix of
# concentrations, 512 frames as at test time, channel-level simulation and
# beamforming as a user's data; validation on another network; the test networks
# (e.g. 101, 103) are never touched here. Everything is seeded.
#
# Resumable: data stores are made once (an interrupted one is redone), and an
# interrupted 'ulm train' continues from its checkpoint (--resume); a signal to this
# script (Ctrl-C, or SIGTERM from a scheduler) stops the command it runs too. Keep WORK to
# resume; it is removed at the end unless KEEP=1.
#
# Variables (defaults: the shipped CPU recipes, ~2 h for 2D on 2 cores (data ~15 min,
# stage 1 70, stage 2 30) and ~2 h 50 min for 3D (image-level data 11 min, stage 1 110
# with stage 2's channel-level data made beside it on the other core, stage 2 ~49), on
# this shared 2-core machine):
#   SCHEDULE=cpu-2d EPOCHS=16 CHANNELS=16 BATCH=2  training; on a GPU server the paper's
#                                schedule: SCHEDULE=paper-2d (its 300 epochs, width 16)
#   TRAIN_NETS, CONCENTRATIONS, MOVIES, FRAMES, VAL_NET, THRESHOLD   the 2D data
#   NOISE_2D="0 0.1 0.2 0.3" FINETUNE_EPOCHS=5   stage 2: the same movies with complex
#                                noise sigma on corr (one level per store, rotating), training
#                                continued from stage 1 (--init, schedule finetune);
#                                NOISE_2D= (empty) ships stage 1 alone
#   WEIGHTS_2D=0, WEIGHTS_3D=0   skip the 2D or the 3D model
#   3D (issue 13; defaults: the shipped CPU recipe, ~2 h 50 min: image-level data 11 min,
#   stage 1 110 on one core while stage 2's channel-level data (78 min, 79 s per store) are
#   made on the other, both measured in one run from a fresh checkout (FINDINGS-3d.md
#   section 25), stage 2 ~49 (its first epoch in that run: 731 s); 16 networks x 2
#   concentrations x 4 movies = 128 training movies whose sites carry the correlation and
#   the IQ (FEATURES_3D=corr,iq); stage 1 at image level, the paper's width 16, 1792
#   steps; stage 2 on the same movies and as many of 16 more networks (FINETUNE_NETS_3D,
#   256 movies) simulated at channel level and beamformed
#   (FINETUNE_LEVEL_3D=channel, FINETUNE_EPOCHS_3D=4, 512 steps of 2 movies): channel-level
#   validation 0.384 plain, 0.423 advised (stage 2 on stage 1's 16 networks: 0.373, 0.414;
#   FINDINGS-3d.md sections 21-22); peak RSS 3414 MiB (stage 1), 2819 MiB (stage 2). The
#   correlation-only recipes: FINDINGS-3d sections 8-19, e.g.
#   FEATURES_3D=corr FINETUNE_EPOCHS_3D=0 with 32 networks: 0.365 advised on image-level
#   validation, section 18):
#   SCHEDULE_3D=cpu-3d EPOCHS_3D=14 CHANNELS_3D=16 BATCH_3D=1 INPUT_KERNEL_3D=3; on a GPU server the paper's
#                                schedule: SCHEDULE_3D=paper-3d (width 16, input kernel 5, batch 2
#                                then 4, 16 movies of 512 frames per network and concentration)
#   TRAIN_NETS_3D, CONCENTRATIONS_3D, MOVIES_3D, FRAMES_3D, VAL_NET_3D   the 3D data
#   LEVEL_3D=image               channel: the 3D training and validation movies are simulated
#                                at channel level and beamformed (ulm beamform), as the held-out
#                                movies are (~70 s per 4-movie store here against ~20 s; stores
#                                named *-ch); with the IQ, 128 movies from scratch at channel
#                                level: validation 0.365 plain, 0.399 advised against 0.414 for
#                                stage 1 at image level + stage 2 on its movies (section 21)
#                                (width 8: 32 networks with EPOCHS_3D=10, the same steps on twice the
#                                data: validation +0.003 advised, held-out within 0.01;
#                                FINDINGS-3d.md section 10)
#                                (width 8, EPOCHS_3D=28, 1.4x the steps: validation +0.003 advised, held-out
#                                within 0.013; section 11)
#                                (width 16, EPOCHS_3D=7, half the steps on the same 256 movies:
#                                validation 0.333 advised, section 17)
#   VAL_MOVIES_3D=4              validation movies (30 MB/FOV) for the per-epoch Dice and the
#                                inference advice; two runs of one recipe differed by 0.007
#                                on 2, so close recipes are compared on 4 (plain inference of
#                                one costs ~2.6 s per epoch at width 8); stored as val3d-mN
#                                unless 2
#   MIRROR_3D=                   x,y: training movies mirrored at random along x and y (ulm
#                                train --mirror); off in the shipped recipe; from scratch, two
#                                runs reached validation 0.261 / 0.262 plain, 0.303 / 0.296
#                                advised (the width-8 model then shipped: 0.237, 0.289), held-out equal to
#                                the shipped model's within 0.004 (FINDINGS-3d.md section 9)
#   INFER_ADVICE=1               choose the test-time mirroring and threshold ulm infer uses by
#                                default, on the validation movies (kept if it gains >= 0.01:
#                                3D +0.052, so recommended; 2D +0.005, so not)
#   DELAYS_3D=0,8                and then test-time delays of the mirror images (ulm infer
#                                --delays), kept if they gain >= 0.01 again (the shipped model,
#                                4 validation movies: 0.308 -> 0.322; FINDINGS-3d.md section 12);
#                                empty: not tried
#   NPROC_3D=1                   N > 1: the 3D training in N processes (torchrun, gloo on the
#                                CPU, one GPU each with DEVICE=cuda), each taking BATCH_3D / N
#                                movies of every step; the run equals one process's at that
#                                batch size (README, "Training on several processes"). Here
#                                NPROC_3D=2 BATCH_3D=2: 1.31x faster, the same model within 0.01,
#                                but 4.8 GB per process (FINDINGS-3d.md section 19), so off
#   FEATURES_3D=corr,iq          the 3D stores carry the beamformed IQ at each site too (ulm
#                                sparsify --features corr,iq; stores named *-corr-iq), so the
#                                network takes four input channels; corr: the correlation alone
#                                (the paper's input, and SCHEDULE_3D=paper-3d's default; +0.114
#                                plain validation for the IQ at 128 movies, both at image level,
#                                FINDINGS-3d.md section 20)
#   FINETUNE_EPOCHS_3D=4         N > 0: a stage 2, training continued N epochs from stage 1
#                                (--init, schedule finetune) on FINETUNE_LEVEL_3D's movies;
#                                0: stage 1 alone (paper-3d's default)
#   FINETUNE_LEVEL_3D=channel    stage 2 trains on the movies of FINETUNE_NETS_3D (stage 1's
#                                with the same seeds, and more) simulated at channel level and
#                                beamformed, in place of stage 1's, with schedule finetune's
#                                batch size (2); validation and the inference advice on the
#                                validation movies at that level (the image-level model: 0.327
#                                plain there, after 4 epochs on stage 1's networks 0.373, on
#                                twice the movies 0.384); the same level as LEVEL_3D: fresh
#                                movies of FINETUNE_NETS_3D (other seeds) join stage 1's
#                                instead (5 epochs of as many fresh movies again gained 0.003
#                                of validation Dice on a correlation model, FINDINGS-3d.md)
#   FINETUNE_NETS_3D="TRAIN_NETS_3D 61 ... 68 71 ... 78"  stage 2's networks (paper-3d:
#                                TRAIN_NETS_3D); stage 1's alone: 0.414 advised (section 21)
#   DEVICE=cpu|cuda|auto         OUT, WORK, KEEP
set -euo pipefail

# Stopped by a signal (SIGTERM from a batch scheduler or 'timeout', Ctrl-C, a closed
# terminal), the recipe stops what it is running too. bash runs a trap only once its
# foreground command has returned, so the recipe runs as a child, in a process group of
# its own, and this shell, waiting for it, passes the signal on to that whole group:
# 'ulm train' keeps its checkpoint, and the next run resumes.
if [ -z "${MAKE_WEIGHTS_RECIPE:-}" ]; then
    set -m
    MAKE_WEIGHTS_RECIPE=1 bash "${BASH_SOURCE[0]}" "$@" &
    recipe=$!
    set +m
    trap 'kill -TERM -- -"$recipe" 2> /dev/null || true' TERM INT HUP
    # 'wait' returns early when a signal arrives; wait again for the recipe's own status
    until
        rc=0
        wait "$recipe" || rc=$?
        ! kill -0 "$recipe" 2> /dev/null
    do :; done
    exit "$rc"
fi

OUT=${OUT:-ulmtools/weights}
WORK=${WORK:-build/weights-work}
DEVICE=${DEVICE:-cpu}
SCHEDULE=${SCHEDULE:-cpu-2d}
TRAIN_NETS=${TRAIN_NETS:-31 32 33 34 35 36 37 38}
CONCENTRATIONS=${CONCENTRATIONS:-1 5 10 20}
MOVIES=${MOVIES:-4}
FRAMES=${FRAMES:-512}
VAL_NET=${VAL_NET:-41}
THRESHOLD=${THRESHOLD:-0.25}
NOISE_2D=${NOISE_2D-0 0.1 0.2 0.3}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-5}
if [ "$SCHEDULE" = paper-2d ]; then
    EPOCHS=${EPOCHS:-300}
    CHANNELS=${CHANNELS:-16}
    BATCH=${BATCH:-8}
else
    EPOCHS=${EPOCHS:-16}
    CHANNELS=${CHANNELS:-16}
    BATCH=${BATCH:-2}
fi
WEIGHTS_2D=${WEIGHTS_2D:-1}
WEIGHTS_3D=${WEIGHTS_3D:-1}
SCHEDULE_3D=${SCHEDULE_3D:-cpu-3d}
TRAIN_NETS_3D=${TRAIN_NETS_3D:-21 22 23 24 25 26 27 28 51 52 53 54 55 56 57 58}
CONCENTRATIONS_3D=${CONCENTRATIONS_3D:-10 30}
VAL_NET_3D=${VAL_NET_3D:-42}
VAL_MOVIES_3D=${VAL_MOVIES_3D:-4}
MIRROR_3D=${MIRROR_3D:-}
INFER_ADVICE=${INFER_ADVICE:-1}
DELAYS_3D=${DELAYS_3D-0,8}
NPROC_3D=${NPROC_3D:-1}
# the paper's schedule keeps the paper's input (its stage 1 alone, at image level, would
# learn the image-level PSF from the IQ: FINDINGS-3d.md section 20)
if [ "$SCHEDULE_3D" = paper-3d ]; then FEATURES_3D=${FEATURES_3D:-corr}; fi
FEATURES_3D=${FEATURES_3D:-corr,iq}
LEVEL_3D=${LEVEL_3D:-image}
FINETUNE_LEVEL_3D=${FINETUNE_LEVEL_3D:-channel}
if [ "$SCHEDULE_3D" = paper-3d ]; then FINETUNE_NETS_3D=${FINETUNE_NETS_3D:-$TRAIN_NETS_3D}; fi
FINETUNE_NETS_3D=${FINETUNE_NETS_3D:-$TRAIN_NETS_3D 61 62 63 64 65 66 67 68 71 72 73 74 75 76 77 78}
# the suffix of a store name for a simulation level (image: none, channel: -ch)
level_suffix() { # variable level
    case "$2" in
        image) echo "" ;;
        channel) echo "-ch" ;;
        *) echo "make-weights: $1=$2 is not a simulation level; give image or channel" >&2
           return 2 ;;
    esac
}
level_3d=$(level_suffix LEVEL_3D "$LEVEL_3D") || exit 2
ft_level_3d=$(level_suffix FINETUNE_LEVEL_3D "$FINETUNE_LEVEL_3D") || exit 2
case "$FEATURES_3D" in
    corr) features_3d= ;;
    corr,iq) features_3d=-corr-iq ;;
    *) echo "make-weights: FEATURES_3D=$FEATURES_3D is not a feature set; give corr or corr,iq" >&2; exit 2 ;;
esac
for v in TRAIN_NETS_3D FINETUNE_NETS_3D; do
    for net in ${!v}; do
        case "$net" in
            '' | *[!0-9]*) echo "make-weights: $v has '$net', not a network seed; give whole numbers, e.g. \"21 22\"" >&2; exit 2 ;;
        esac
    done
done
case "$NPROC_3D" in
    '' | *[!0-9]* | 0) echo "make-weights: NPROC_3D=$NPROC_3D is not a number of processes; give N >= 1" >&2; exit 2 ;;
esac
if [ "$SCHEDULE_3D" = paper-3d ]; then
    # the paper's network (width 16, 5^4 input convolution) and more data: a GPU job
    EPOCHS_3D=${EPOCHS_3D:-20}
    CHANNELS_3D=${CHANNELS_3D:-16}
    BATCH_3D=${BATCH_3D:-}
    INPUT_KERNEL_3D=${INPUT_KERNEL_3D:-5}
    FINETUNE_EPOCHS_3D=${FINETUNE_EPOCHS_3D:-0}
    MOVIES_3D=${MOVIES_3D:-16}
    FRAMES_3D=${FRAMES_3D:-512}
else
    EPOCHS_3D=${EPOCHS_3D:-14}
    FINETUNE_EPOCHS_3D=${FINETUNE_EPOCHS_3D:-4}
    CHANNELS_3D=${CHANNELS_3D:-16}
    BATCH_3D=${BATCH_3D:-1}
    INPUT_KERNEL_3D=${INPUT_KERNEL_3D:-3}
    MOVIES_3D=${MOVIES_3D:-4}
    FRAMES_3D=${FRAMES_3D:-128}
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT" "$WORK"
echo "working in $WORK" >&2

# Put a model card (the text 'ulm info shipped:2d|3d' prints) into a model store, headed by
# a line saying that it is the shipped model's card: a rebuild (another recipe, or the same
# one, which is not bit-identical across machines) has its own training and validation
# figures in 'ulm info', not the card's. To ship a rebuild, measure its held-out table
# (scripts/heldout.sh), write the card file and set the attribute to it alone.
set_card() { # model-store card-file
    python - "$1" "$2" <<'PY'
import sys
from datetime import date

import zarr

head = (
    f"Rebuilt by `make weights` on {date.today()}: this store's own training and validation"
    f" figures are those above; the card below ({sys.argv[2]}) is the shipped model's, its"
    " held-out table measured on that model.\n"
)
zarr.open_group(sys.argv[1], mode="r+").attrs["card"] = head + open(sys.argv[2]).read()
PY
}

# Record in MODEL the inference it recommends (its 'inference' attribute, which
# 'ulm infer --mirror auto --delays auto' and its default threshold follow): maps averaged
# over the mirror images along AXES, at the threshold (0.20 ... 0.50) with the best Dice on
# VAL, when that beats plain inference (threshold 0.5) by >= 0.01; then, with DELAYS (frames,
# e.g. 0,8; empty: not tried), every mirror image also delayed by them, kept when that beats
# the mirrored maps by >= 0.01 again; else no recommendation.
infer_advice() { # model val-store axes val-network [delays]
    local model=$1 val=$2 axes=$3 net=$4 delays=${5:-}
    OMP_NUM_THREADS=${OMP_NUM_THREADS_3D:-1} ulm infer "$model" "$val" "$WORK/advice-plain.zarr" \
        --mirror none --delays none --threshold 0.5 -q -f
    OMP_NUM_THREADS=${OMP_NUM_THREADS_3D:-1} ulm infer "$model" "$val" "$WORK/advice-mirror.zarr" \
        --mirror "$axes" --delays none --threshold 0.5 --min-probability 0.01 -q -f
    if [ -n "$delays" ]; then
        OMP_NUM_THREADS=${OMP_NUM_THREADS_3D:-1} ulm infer "$model" "$val" \
            "$WORK/advice-delays.zarr" --mirror "$axes" --delays "$delays" --threshold 0.5 \
            --min-probability 0.01 -q -f
    fi
    python - "$model" "$WORK/advice-plain.zarr" "$WORK/advice-mirror.zarr" "$axes" "$net" \
        "$delays" "$WORK/advice-delays.zarr" <<'PY'
import sys

import zarr

from ulmtools.infer.core import dice_by_threshold
from ulmtools.store import open_store

model, plain, mirrored, axes, net, delays, delayed = sys.argv[1:]
base = float(open_store(plain, "prediction").attrs["dice"])
movies = int(open_store(plain, "prediction").attrs["movies"])
thresholds = [0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]


def sweep(store: str, what: str) -> tuple[float, float]:
    by = dice_by_threshold(store, thresholds)
    table = ", ".join(f"{t:g}: {d:.4f}" for t, d in by.items())
    print(f"validation Dice, {what}, by threshold: {table}", file=sys.stderr)
    best = max(by, key=by.get)
    return best, by[best]


print(f"validation Dice, plain: {base:.4f}", file=sys.stderr)
t_m, d_m = sweep(mirrored, f"mirrored along {axes}")
attrs = zarr.open_group(model, mode="r+").attrs
if d_m >= base + 0.01:
    advice = {"mirror": axes.split(","), "threshold": t_m}
    chosen = f"Dice {base:.3f} plain, {d_m:.3f} mirrored"
    if delays:
        t_d, d_d = sweep(delayed, f"mirrored along {axes} and delayed by {delays} frames")
        if d_d >= d_m + 0.01:
            advice = {**advice, "delays": [int(d) for d in delays.split(",")], "threshold": t_d}
            chosen += f", {d_d:.3f} with delays {delays}"
    advice["chosen"] = f"on validation network {net}, {movies} movies: {chosen}"
    attrs["inference"] = advice
    line = f"--mirror {axes}" + (f" --delays {delays}" if "delays" in advice else "")
    print(f"recommended: {line} --threshold {advice['threshold']:g}", file=sys.stderr)
else:
    if "inference" in attrs:
        del attrs["inference"]
    print("no recommendation: mirroring gains < 0.01", file=sys.stderr)
PY
    rm -rf "$WORK/advice-plain.zarr" "$WORK/advice-mirror.zarr" "$WORK/advice-delays.zarr"
}

# A 2D image store: simulate (channel level) -> beamform, made once (kept in WORK: the
# noise stage sparsifies it again).
image2d() { # name network-seed concentration movies seed
    local name=$1 net=$2 conc=$3 movies=$4 seed=$5
    [ -d "$WORK/$name-img.zarr" ] && return 0
    ulm simulate "$WORK/$name-raw.zarr" --dim 2 --movies "$movies" --frames "$FRAMES" \
        --concentration "$conc" --network-seed "$net" --seed "$seed" -q -f
    ulm beamform "$WORK/$name-raw.zarr" "$WORK/$name-img.part.zarr" -q -f
    rm -rf "$WORK/$name-raw.zarr"
    mv "$WORK/$name-img.part.zarr" "$WORK/$name-img.zarr"
}

# The sparse store OUT-NAME of image store NAME, with complex noise sigma on corr
# (0: none; seeded), made once.
sparse2d() { # name out-name sigma noise-seed
    local name=$1 out=$2 sigma=$3 seed=$4
    [ -d "$WORK/$out.zarr" ] && return 0
    ulm sparsify "$WORK/$name-img.zarr" "$WORK/$out.part.zarr" --threshold "$THRESHOLD" \
        --corr-noise "$sigma" --seed "$seed" -q -f
    mv "$WORK/$out.part.zarr" "$WORK/$out.zarr"
}

# Train (or resume) MODEL: ulm train with the stores and options given; in NPROC
# processes (torchrun, DistributedDataParallel; the run equals one process's) when > 1.
train_model() { # model-store train-store [ulm train options...]
    local model=$1 first=$2
    shift 2
    local resume=() train=(ulm train)
    [ -d "${model%.zarr}.resume.zarr" ] && resume=(--resume)
    [ "${NPROC:-1}" -gt 1 ] &&
        train=(torchrun --standalone --nproc-per-node "$NPROC" --no-python ulm train)
    if [ -n "${resume[*]}" ] || [ ! -d "$model" ]; then
        "${train[@]}" "$first" "$model" "$@" --seed 0 --device "$DEVICE" --force "${resume[@]}"
    fi
}

if [ "$WEIGHTS_2D" != 0 ]; then
    # stage 1: noise-free training stores, the schedule from scratch
    train2d=()
    noisy2d=()
    levels=($NOISE_2D)
    j=0
    for net in $TRAIN_NETS; do
        k=0
        for c in $CONCENTRATIONS; do
            name="train2d-n$net-c$c"
            image2d "$name" "$net" "$c" "$MOVIES" "$((net * 100 + ${c%.*}))"
            sparse2d "$name" "$name" 0 0
            train2d+=("$WORK/$name.zarr")
            if [ ${#levels[@]} -gt 0 ]; then
                # stage 2's store: one noise level per store, rotating so that every
                # network and every concentration sees each level
                sigma=${levels[$(((j + k) % ${#levels[@]}))]}
                if [ "$sigma" = 0 ]; then
                    noisy2d+=("$WORK/$name.zarr")
                else
                    sparse2d "$name" "$name-s$sigma" "$sigma" "$((net * 100 + ${c%.*}))"
                    noisy2d+=("$WORK/$name-s$sigma.zarr")
                fi
            fi
            k=$((k + 1))
        done
        j=$((j + 1))
    done
    image2d val2d "$VAL_NET" 5 4 "$((VAL_NET * 100 + 50))"
    sparse2d val2d val2d 0 0

    also=()
    for s in "${train2d[@]:1}"; do also+=(--also "$s"); done
    model2d="$WORK/deepstulm-2d.zarr"
    [ ${#levels[@]} -gt 0 ] && model2d="$WORK/deepstulm-2d-clean.zarr"
    train_model "$model2d" "${train2d[0]}" "${also[@]}" --val "$WORK/val2d.zarr" \
        --schedule "$SCHEDULE" --epochs "$EPOCHS" --channels "$CHANNELS" --batch-size "$BATCH"
    if [ ${#levels[@]} -gt 0 ]; then
        # stage 2: the same movies with complex noise on corr (levels NOISE_2D), training
        # continued from stage 1 at a low learning rate (--init, schedule finetune)
        also=()
        for s in "${noisy2d[@]:1}"; do also+=(--also "$s"); done
        train_model "$WORK/deepstulm-2d.zarr" "${noisy2d[0]}" "${also[@]}" \
            --val "$WORK/val2d.zarr" --init "$model2d" --schedule finetune \
            --epochs "$FINETUNE_EPOCHS" --batch-size "$BATCH"
    fi
    # test-time mirroring along x, recommended only if it gains >= 0.01 on validation
    if [ "$INFER_ADVICE" != 0 ]; then
        infer_advice "$WORK/deepstulm-2d.zarr" "$WORK/val2d.zarr" x "$VAL_NET"
    fi
    rm -rf "$OUT/deepstulm-2d.zarr"
    cp -r "$WORK/deepstulm-2d.zarr" "$OUT/deepstulm-2d.zarr"
    # the model card 'ulm info shipped:2d' prints: recipe and held-out results, measured
    CARD2D=${CARD2D:-ulmtools/weights/deepstulm-2d.card.txt}
    [ -f "$CARD2D" ] && set_card "$OUT/deepstulm-2d.zarr" "$CARD2D"
    ulm info "$OUT/deepstulm-2d.zarr" >&2
fi

if [ "$WEIGHTS_3D" != 0 ]; then
    # 3D+t (issue 13): image-level simulation (the bulk path; LEVEL_3D=channel: channel
    # level and ulm beamform), vessel networks
    # TRAIN_NETS_3D x CONCENTRATIONS_3D x MOVIES_3D movies of FRAMES_3D frames at
    # 32^3 (lambda/2), sparsified at the 3D default 0.25; validation on VAL_NET_3D.
    # Pruning keeps the x8 up-samplings affordable on a CPU; one thread per step is
    # steadier than two on a shared machine.
    sparse3d() { # name network-seed concentration movies seed [level]
        local name=$1 net=$2 conc=$3 movies=$4 seed=$5 level=${6:-$LEVEL_3D}
        [ -d "$WORK/$name.zarr" ] && return 0
        if [ "$level" = channel ]; then
            ulm simulate "$WORK/$name-raw.zarr" --dim 3 --movies "$movies" --frames "$FRAMES_3D" \
                --concentration "$conc" --network-seed "$net" --seed "$seed" -q -f
            ulm beamform "$WORK/$name-raw.zarr" "$WORK/$name-img.zarr" -q -f
            rm -rf "$WORK/$name-raw.zarr"
        else
            ulm simulate "$WORK/$name-img.zarr" --dim 3 --movies "$movies" --frames "$FRAMES_3D" \
                --concentration "$conc" --level image --network-seed "$net" --seed "$seed" -q -f
        fi
        ulm sparsify "$WORK/$name-img.zarr" "$WORK/$name.part.zarr" --features "$FEATURES_3D" \
            -q -f
        rm -rf "$WORK/$name-img.zarr"
        mv "$WORK/$name.part.zarr" "$WORK/$name.zarr"
    }
    # the training stores train3d-n<net>-c<conc><tag> of the networks and every
    # concentration, made if missing and listed in the array stores3d
    training3d() { # tag seed-offset level networks
        stores3d=()
        for net in $4; do
            for c in $CONCENTRATIONS_3D; do
                sparse3d "train3d-n$net-c$c$1" "$net" "$c" "$MOVIES_3D" \
                    "$((net * 100 + ${c%.*} + $2))" "$3"
                stores3d+=("$WORK/train3d-n$net-c$c$1.zarr")
            done
        done
    }
    training3d "$level_3d$features_3d" 0 "$LEVEL_3D" "$TRAIN_NETS_3D"
    train3d=("${stores3d[@]}")
    val3d=val3d
    [ "$VAL_MOVIES_3D" = 2 ] || val3d="val3d-m$VAL_MOVIES_3D"
    val3d+=$level_3d$features_3d
    sparse3d "$val3d" "$VAL_NET_3D" 30 "$VAL_MOVIES_3D" "$((VAL_NET_3D * 100 + 30))"
    also3d=()
    for s in "${train3d[@]:1}"; do also3d+=(--also "$s"); done
    model3d="$WORK/deepstulm-3d.zarr"
    [ "$FINETUNE_EPOCHS_3D" != 0 ] && model3d="$WORK/deepstulm-3d-stage1.zarr"
    batch3d=()
    [ -n "$BATCH_3D" ] && batch3d=(--batch-size "$BATCH_3D")
    mirror3d=()
    [ -n "$MIRROR_3D" ] && mirror3d=(--mirror "$MIRROR_3D")
    ft_data=
    if [ "$FINETUNE_EPOCHS_3D" != 0 ] && [ "$FINETUNE_LEVEL_3D" != "$LEVEL_3D" ]; then
        # stage 2's stores (below) are made on one thread beside stage 1's training, which
        # leaves the other core idle; in a process group of their own, stopped if this
        # script stops (an interrupted store is redone on the next run). One thread means
        # numba's too: 'ulm beamform' and 'ulm simulate' size their numba thread pools by
        # NUMBA_NUM_THREADS (every core by default), not OMP_NUM_THREADS
        val3d_ft=${val3d%"$level_3d$features_3d"}$ft_level_3d$features_3d
        set -m
        (
            export OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1
            training3d "$ft_level_3d$features_3d" 0 "$FINETUNE_LEVEL_3D" "$FINETUNE_NETS_3D"
            sparse3d "$val3d_ft" "$VAL_NET_3D" 30 "$VAL_MOVIES_3D" "$((VAL_NET_3D * 100 + 30))" \
                "$FINETUNE_LEVEL_3D"
        ) &
        ft_data=$!
        set +m
        trap 'kill -- -"$ft_data" 2> /dev/null || true' EXIT
    fi
    NPROC=$NPROC_3D OMP_NUM_THREADS=${OMP_NUM_THREADS_3D:-1} train_model "$model3d" "${train3d[0]}" \
        "${also3d[@]}" --val "$WORK/$val3d.zarr" --schedule "$SCHEDULE_3D" \
        --epochs "$EPOCHS_3D" --channels "$CHANNELS_3D" "${batch3d[@]}" \
        --input-kernel "$INPUT_KERNEL_3D" --pruning "${mirror3d[@]}"
    if [ -n "$ft_data" ]; then
        # stage 2 at another simulation level: the movies of FINETUNE_NETS_3D (stage 1's
        # with the same seeds, and more) simulated at FINETUNE_LEVEL_3D, made above, in
        # place of stage 1's; training continued from stage 1 (--init, schedule finetune
        # with its own batch size); validation, and the inference advice, on the
        # validation movies at that level
        wait "$ft_data"
        training3d "$ft_level_3d$features_3d" 0 "$FINETUNE_LEVEL_3D" "$FINETUNE_NETS_3D" # lists them
        ft3d=("${stores3d[@]}")
        val3d=$val3d_ft
        also3d=()
        for s in "${ft3d[@]:1}"; do also3d+=(--also "$s"); done
        OMP_NUM_THREADS=${OMP_NUM_THREADS_3D:-1} train_model "$WORK/deepstulm-3d.zarr" \
            "${ft3d[0]}" "${also3d[@]}" --val "$WORK/$val3d.zarr" --init "$model3d" \
            --schedule finetune --epochs "$FINETUNE_EPOCHS_3D"
    elif [ "$FINETUNE_EPOCHS_3D" != 0 ]; then
        # stage 2: fresh movies of FINETUNE_NETS_3D (other simulation seeds) join stage 1's,
        # training continued from stage 1 at a low learning rate (--init, finetune)
        training3d "-b$level_3d$features_3d" 50 "$LEVEL_3D" "$FINETUNE_NETS_3D"
        for s in "${stores3d[@]}"; do also3d+=(--also "$s"); done
        OMP_NUM_THREADS=${OMP_NUM_THREADS_3D:-1} train_model "$WORK/deepstulm-3d.zarr" \
            "${train3d[0]}" "${also3d[@]}" --val "$WORK/$val3d.zarr" --init "$model3d" \
            --schedule finetune --epochs "$FINETUNE_EPOCHS_3D" "${batch3d[@]}"
    fi
    if [ "$INFER_ADVICE" != 0 ]; then
        # what 'ulm infer' does by default with this model, chosen on the validation
        # movies (never on test networks): test-time mirroring along x and y and the
        # threshold of the mean map, kept when it gains >= 0.01 Dice over plain inference
        infer_advice "$WORK/deepstulm-3d.zarr" "$WORK/$val3d.zarr" x,y "$VAL_NET_3D" "$DELAYS_3D"
    fi
    rm -rf "$OUT/deepstulm-3d.zarr"
    cp -r "$WORK/deepstulm-3d.zarr" "$OUT/deepstulm-3d.zarr"
    CARD3D=${CARD3D:-ulmtools/weights/deepstulm-3d.card.txt}
    [ -f "$CARD3D" ] && set_card "$OUT/deepstulm-3d.zarr" "$CARD3D"
    ulm info "$OUT/deepstulm-3d.zarr" >&2
fi

[ -n "${KEEP:-}" ] || rm -rf "$WORK"
