# A lab's ULM pipeline as a Makefile: simulate -> beamform -> sparsify -> infer and
# track -> score, for several concentrations, in parallel and resumable (a finished
# store is never recomputed; stores appear whole or not at all, so an interrupted
# run resumes where it stopped). Copy it and replace the simulate rule by your own
# data (ulm import, or any image store).
#
#   make -f examples/pipeline.mk -j2                       # 2D, 1/5/10/20 bubbles per FOV
#   make -f examples/pipeline.mk -j2 DIM=3 CONCENTRATIONS="10 30" MOVIES=2 FRAMES=128
#   make -f examples/pipeline.mk MODEL=model.zarr          # your own network instead
#
# Each concentration ends in OUT/cN/score.json and OUT/cN/score.png; `make -f ... table`
# prints the Dice of every method at every concentration.

ULM ?= ulm
DIM ?= 2
OUT ?= pipeline$(DIM)d
CONCENTRATIONS ?= 1 5 10 20
MOVIES ?= 4
FRAMES ?= 512
# a vessel network the shipped weights were not trained on and ulm track not tuned on
NETWORK ?= 102
MODEL ?= shipped:$(DIM)d
TRACK_FLAGS ?=
Q ?= -q

SCORES := $(foreach c,$(CONCENTRATIONS),$(OUT)/c$(c)/score.json)

.PHONY: all table clean
.SECONDARY:

all: $(SCORES)

$(OUT)/c%/sim.zarr:
	@mkdir -p $(@D)
	$(ULM) simulate $@ --dim $(DIM) --movies $(MOVIES) --frames $(FRAMES) \
	    --concentration $* --network-seed $(NETWORK) --seed $* $(Q) -f

$(OUT)/c%/img.zarr: $(OUT)/c%/sim.zarr
	$(ULM) beamform $< $@ $(Q) -f

$(OUT)/c%/sparse.zarr: $(OUT)/c%/img.zarr
	$(ULM) sparsify $< $@ $(Q) -f

$(OUT)/c%/network.zarr: $(OUT)/c%/sparse.zarr
	$(ULM) infer $(MODEL) $< $@ $(Q) -f

$(OUT)/c%/tracks.zarr: $(OUT)/c%/img.zarr
	$(ULM) track $< $@ $(TRACK_FLAGS) $(Q) -f

$(OUT)/c%/score.json: $(OUT)/c%/network.zarr $(OUT)/c%/tracks.zarr
	$(ULM) score $^ --figure $(OUT)/c$*/score.png -o $@ -f -q > $(OUT)/c$*/score.txt

table: $(SCORES)
	@printf '%6s  %-11s %-14s %s\n' MB/FOV kind store Dice
	@python3 -c 'import json, sys; [print("%6s  %-11s %-14s %.4f" % (p.split("/")[-2][1:], \
	    m["kind"], m["path"].split("/")[-1], m["dice"])) \
	    for p in sys.argv[1:] for m in json.load(open(p))["methods"]]' $(SCORES)

clean:
	rm -rf $(OUT)
