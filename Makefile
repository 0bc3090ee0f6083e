# The two commands of the README: `make demo` (set up + the main job), `make test` (set up + tests).
# Everything is installed into .venv; nothing relies on what was installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo lint test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch/torchvision pinned inside the project's range; pip takes them from the local wheels where present
	$(BIN)/pip install --quiet "torch>=2.5,<2.15" "torchvision<0.30"
	$(BIN)/pip install --quiet -e ".[export,dev]"
	touch $@

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash recipes/demo.sh

# the rule set (bugs, not style) is in pyproject.toml
lint: setup
	$(BIN)/ruff check --quiet .

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: setup
	PATH="$(abspath $(BIN)):$$PATH" bash bench/run_all.sh

clean:
	rm -rf $(VENV) runs bench/out
