# make quickstart : install everything (CPU PyTorch, pinned) and run the quickstart sweep + its summary
# make test       : run the test suite (what CI runs)
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install-cpu quickstart test

# CPU-only PyTorch, pinned: an unpinned torch/torchvision pulls a multi-GB CUDA build.
install-cpu:
	$(PIP) torch==2.13.0 torchvision==0.28.0
	$(PIP) -e '.[test]'

quickstart: install-cpu
	$(PYTHON) -m sparsesweep +experiment=quickstart hydra.sweep.dir=multirun/quickstart
	$(PYTHON) -m multirun_analysis multirun/quickstart

test:
	$(PYTHON) -m pytest -q
