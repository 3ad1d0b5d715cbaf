# Two commands set up a fresh machine and do everything: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DEPS   := $(VENV)/.deps-installed
CUTLASS_VERSION := 4.2.0.0
# The real toolkit folder: /usr/local/bin/nvcc is often a wrapper that makes torch guess CUDA_HOME wrong.
export CUDA_HOME ?= $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,)

.PHONY: demo test build bench selfcheck clean aot-venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# Pinned dependencies; CUTLASS/CuTe headers come from the nvidia-cutlass wheel (its own deps are not needed).
$(DEPS): requirements.txt | $(PY)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps nvidia-cutlass==$(CUTLASS_VERSION)
	touch $@

# Builds nemotron_kernels._C from source (C++ CPU + CUDA sm_90a when torch has CUDA and nvcc exists).
# The build folder is pinned (build/temp), so an unchanged tree rebuilds in seconds.
build: $(DEPS)
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest -q tests

selfcheck: build
	$(PY) -m nemotron_kernels.selfcheck

bench: build
	$(PY) -m bench

demo: build
	$(PY) -m nemotron_kernels.selfcheck
	@if $(PY) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) -m bench --quick; \
	else echo "[demo] no GPU visible: skipping the GPU microbenchmarks (python -m bench on a Hopper GPU)"; fi
	$(PY) -m model.generate --preset tiny --random-weights --seed 0 --max-new-tokens 48 \
		--prompt "The Mamba layer keeps a state that"

# The GPU machine's Triton (3.6) with CPU torch, for AOT reports that match what the H200 compiles (the default
# venv's Triton can compile the same kernel differently):
#   PYTHONPATH=. .venv-aot/bin/python scripts/sweep_ssd.py --registers
AOT_TRITON ?= 3.6.0
aot-venv:
	$(PYTHON) -m venv .venv-aot
	.venv-aot/bin/pip install -q "triton==$(AOT_TRITON)" "torch==2.13.0" numpy

clean:
	rm -rf build *.egg-info nemotron_kernels/_C*.so nemotron_kernels/_build_info.py
