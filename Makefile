# The two commands of the README: `make demo` runs the service, `make test` runs the tests.
# Both create .venv on a fresh machine from the lock files under requirements/ (exact versions,
# checked against their hashes), then install gpufair itself with --no-deps.
#
# torch is locked apart from the rest: requirements/torch-cpu.txt pins the CPU build
# (torch==2.13.0+cpu) from PyTorch's own CPU wheel index, TORCH_LINKS below; `make TORCH=cuda ...`
# installs requirements/torch-cuda.txt instead (PyPI's CUDA build and its CUDA libraries) for
# GPU nodes. Switching builds needs `make clean` first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= cpu
TORCH_LINKS ?= https://download.pytorch.org/whl/cpu/torch/
TORCH_SOURCE_cpu := --find-links $(TORCH_LINKS)
TORCH_SOURCE_cuda :=
LOCK := requirements/lock.txt
TORCH_LOCK := requirements/torch-$(TORCH).txt
STAMP := $(VENV)/.installed-$(TORCH)

# `make lock` resolves for the platform the project supports: CPython 3.11 on x86_64 Linux.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_28
UV_COMPILE := $(BIN)/uv pip compile --quiet --generate-hashes --no-emit-find-links \
	--custom-compile-command 'make lock' $(LOCK_TARGET)
# The torch locks hold only what lock.txt lacks, at the versions lock.txt holds.
LOCKED_NAMES = $(shell sed -n 's/^\([A-Za-z0-9._-]*\)==.*/\1/p' $(LOCK))
NOT_IN_TORCH_LOCK = -c $(LOCK) $(foreach name,$(LOCKED_NAMES),--no-emit-package $(name))

.PHONY: demo demo-nodes test test-fast lint lock lock-torch bench-allocator bench-serve gpu-wheels clean

$(STAMP): $(LOCK) $(TORCH_LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps $(TORCH_SOURCE_$(TORCH)) -r $(TORCH_LOCK)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gpufair demo

demo-nodes: $(STAMP)
	$(BIN)/gpufair demo --nodes 3

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop: everything not marked slow, on every core.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -n auto $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy allocator executor api gpufair tests bench

# Regenerate the locks from pyproject.toml (add --upgrade-package NAME to UV_COMPILE_ARGS to move
# one dependency, --upgrade to move them all). Needs PyTorch's CPU index or a TORCH_LINKS folder
# that holds the torch 2.13.0+cpu wheel.
lock: $(STAMP)
	$(UV_COMPILE) $(UV_COMPILE_ARGS) pyproject.toml --extra dev requirements/build.in \
		--override requirements/torch-cpu.in --find-links $(TORCH_LINKS) \
		--no-emit-package torch -o $(LOCK)
	$(MAKE) --no-print-directory lock-torch

# A second make, so that NOT_IN_TORCH_LOCK reads the lock.txt just written.
lock-torch:
	$(UV_COMPILE) $(UV_COMPILE_ARGS) requirements/torch-cpu.in --find-links $(TORCH_LINKS) \
		$(NOT_IN_TORCH_LOCK) -o requirements/torch-cpu.txt
	$(UV_COMPILE) $(UV_COMPILE_ARGS) requirements/torch-cuda.in \
		$(NOT_IN_TORCH_LOCK) -o requirements/torch-cuda.txt

bench-allocator: $(STAMP)
	$(BIN)/gpufair bench allocator

bench-serve: $(STAMP)
	$(BIN)/gpufair bench serve

clean:
	rm -rf $(VENV) var/*.db

# The wheels the prepared GPU check (bench/gpu/run.sh) installs on a machine with PyTorch and no
# network: the packages of bench/gpu/requirements.in at the versions and hashes of the lock, for
# the lock's platform (CPython 3.11, x86_64 Linux). Carry bench/gpu/wheels/ with the tree.
GPU_WHEELS := bench/gpu/wheels
gpu-wheels: $(STAMP)
	mkdir -p $(GPU_WHEELS)
	$(BIN)/python bench/gpu/lock_subset.py bench/gpu/requirements.in $(LOCK) > $(GPU_WHEELS)/requirements.txt
	$(BIN)/pip download --quiet --no-deps --require-hashes --only-binary=:all: \
		--python-version 3.11 --implementation cp --abi cp311 \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
		--platform manylinux2014_x86_64 --platform any \
		--dest $(GPU_WHEELS) -r $(GPU_WHEELS)/requirements.txt
