# ulmtools: every target installs what it needs into a local virtual environment.
#
#   make demo      simulate -> beamform -> sparsify -> infer shipped:2d and track -> score (2D)
#   make demo-3d   the same in 3D
#   make test      the fast test suite (what CI runs)
#   make test-all  every test, slow ones included
#   make lint      ruff check + format check
#   make bench     benchmarks, printed as tables
#   make minkowski build and install the optional MinkowskiEngine 0.5.4 backend (~8 min once;
#                  the wheel is cached in ~/.cache/ulmtools/wheels)
#   make gpu-check on a machine with a CUDA GPU: the CUDA tests and bench/bench_gpu.py (a few
#                  minutes); PY=python3 uses an environment that already has the dependencies
#   make weights   retrain the pretrained models shipped in ulmtools/weights (2D ~2 h, 3D ~2 h 50 min, 2 CPU cores;
#                  resumable; WEIGHTS_3D=0 skips 3D, SCHEDULE=paper-2d DEVICE=cuda on a GPU)
#   make paper     the reference paper's tables and figures into build/paper/SIZE/report.md
#                  (SIZE=cpu ~50 min on 2 cores, tiny ~3-10 min, gpu the paper's sizes; -j2, resumable)
#
# On a GPU server, install a CUDA build of torch instead of the CPU one:
#   make install TORCH_SPEC='torch>=2.4'
# (plain 'torch' from PyPI is a CUDA build on Linux; here torch==2.13.0 is a local CPU wheel).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint format bench demo demo-3d clean minkowski weights gpu-check paper

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard man/*.1 man/*.5)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	# an editable install leaves the wheel's man pages out: put them where man(1) looks
	mkdir -p $(VENV)/share/man/man1 $(VENV)/share/man/man5
	cp man/*.1 $(VENV)/share/man/man1/ && cp man/*.5 $(VENV)/share/man/man5/
	touch $@

test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check ulmtools tests bench examples paper
	$(PY) -m ruff format --check ulmtools tests bench examples paper

format: install
	$(PY) -m ruff format ulmtools tests bench examples paper
	$(PY) -m ruff check --fix ulmtools tests bench examples paper

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

gpu-check:
	test -x $(PY) || $(MAKE) install
	$(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: torch sees no CUDA device (install a CUDA build: make install TORCH_SPEC=torch>=2.4)')"
	$(PY) -m pytest -m cuda -q -rs tests/test_cuda.py tests/test_model_store.py
	$(PY) bench/bench_gpu.py --device cuda

minkowski: install
	bash scripts/build-minkowski.sh $(VENV)

weights: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/make-weights.sh

# SIZE=tiny|cpu|gpu, OUT=dir; make's -j and other variables pass through to paper/Makefile
paper: install
	PATH="$(abspath $(VENV))/bin:$$PATH" $(MAKE) -f paper/Makefile PY="$(abspath $(PY))"

demo: install
	PATH="$(abspath $(VENV))/bin:$$PATH" bash examples/demo.sh

demo-3d: install
	PATH="$(abspath $(VENV))/bin:$$PATH" DEMO_DIM=3 bash examples/demo.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo
