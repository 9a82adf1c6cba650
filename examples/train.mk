# Train Sparse Deep-stULM from scratch and score it against conventional ULM, on
# vessel networks kept apart: training (31, 32), validation (41) and test (102).
#
#   make -f examples/train.mk -j2                  # a small CPU run (minutes)
#   make -f examples/train.mk EPOCHS=300 SCHEDULE=paper-2d TRAIN_MOVIES=64 CHANNELS=16
#
# Ends with OUT/score.txt (the comparison table) and OUT/score.png.

ULM ?= ulm
OUT ?= train2d
TRAIN_MOVIES ?= 8
FRAMES ?= 128
TEST_MOVIES ?= 4
TEST_FRAMES ?= 512
CONCENTRATION ?= 5
EPOCHS ?= 5
CHANNELS ?= 8
SCHEDULE ?= cpu-2d
Q ?= -q

.PHONY: all clean
.SECONDARY:

all: $(OUT)/score.json

# training and validation sets straight at image level (the bulk path), each its own network
$(OUT)/train-n%-img.zarr:
	@mkdir -p $(@D)
	$(ULM) simulate $@ --level image --movies $(TRAIN_MOVIES) --frames $(FRAMES) \
	    --concentration $(CONCENTRATION) --network-seed $* --seed $* $(Q) -f

$(OUT)/val-img.zarr:
	@mkdir -p $(@D)
	$(ULM) simulate $@ --level image --movies 2 --frames $(FRAMES) \
	    --concentration $(CONCENTRATION) --network-seed 41 --seed 41 $(Q) -f

# the test set as a lab records it: channel data, then the beamformer
$(OUT)/test.zarr:
	@mkdir -p $(@D)
	$(ULM) simulate $@ --movies $(TEST_MOVIES) --frames $(TEST_FRAMES) \
	    --concentration $(CONCENTRATION) --network-seed 102 --seed 102 $(Q) -f

$(OUT)/test-img.zarr: $(OUT)/test.zarr
	$(ULM) beamform $< $@ $(Q) -f

$(OUT)/%-sparse.zarr: $(OUT)/%.zarr
	$(ULM) sparsify $< $@ $(Q) -f

$(OUT)/model.zarr: $(OUT)/train-n31-img-sparse.zarr $(OUT)/train-n32-img-sparse.zarr \
    $(OUT)/val-img-sparse.zarr
	$(ULM) train $< $@ --also $(word 2,$^) --val $(word 3,$^) --schedule $(SCHEDULE) \
	    --epochs $(EPOCHS) --channels $(CHANNELS) --seed 0 $(Q) -f

$(OUT)/network.zarr: $(OUT)/model.zarr $(OUT)/test-img-sparse.zarr
	$(ULM) infer $^ $@ $(Q) -f

$(OUT)/tracks.zarr: $(OUT)/test-img.zarr
	$(ULM) track $< $@ $(Q) -f

$(OUT)/score.json: $(OUT)/network.zarr $(OUT)/tracks.zarr
	$(ULM) score $^ --figure $(OUT)/score.png -o $@ -f -q | tee $(OUT)/score.txt

clean:
	rm -rf $(OUT)
