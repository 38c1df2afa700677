# make quickstart : install everything (CPU PyTorch, pinned) and run the quickstart sweep + its summary
# make check      : the fast tier: every test not marked slow (85 s on 2 cores)
# make test       : the full suite (what CI runs)
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: install-cpu install-packages quickstart check test

# PyTorch pinned, CPU build: from PyTorch's CPU wheel index when it answers (within 10 s, no retries), else from
# the default index, where the same versions are a multi-GB CUDA build on x86-64 Linux (it runs on a CPU too).
TORCH = torch==2.13.0 torchvision==0.28.0
# The extras installed with it; CI adds `trackers` (W&B and MLflow), so that their tests run.
EXTRAS ?= test
CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# It ends by importing torch and torchvision together, as a user's script would: a pair that does not (a CPU torch
# beside the default index's CUDA torchvision) is named, with the command that installs a matching one (exit 1).
install-cpu: install-packages
	$(PYTHON) -m sparsesweep._torchvision

install-packages:
	$(PIP) --index-url $(CPU_INDEX) --timeout 10 --retries 0 $(TORCH) \
	  || { echo "PyTorch's CPU wheel index did not answer: installing $(TORCH) from the default index"; $(PIP) $(TORCH); }
	$(PIP) -e '.[$(EXTRAS)]'

quickstart: install-cpu
	$(PYTHON) -m sparsesweep +experiment=quickstart
	$(PYTHON) -m multirun_analysis multirun/quickstart

# The test modules are spread over TEST_WORKERS processes (pytest-xdist; a module's fixtures are built once,
# in one of them): CI's machine has 2 cores. The tests that compare runs bitwise hold their thread count fixed.
TEST_WORKERS ?= 2
test:
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder --durations=20

# It lists the 10 slowest tests by wall time and the 10 costliest by CPU time (which the machine's load hardly moves).
check:
	@start=$$(date +%s); cpu=$$(mktemp); \
	SPARSESWEEP_TEST_CPU=$$cpu $(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -m "not slow" --durations=10; \
	status=$$?; rm -f $$cpu; \
	echo "make check: $$(( $$(date +%s) - start )) s"; exit $$status
