# The one-command entry points: `make demo` runs the main job, `make test` the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint typecheck golden bench clean

setup: $(STAMP)

# Reinstalls only when the package metadata or the pins change (idempotent).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

DEMO_RUN := runs/demo-lenet5
# Three validation digits as PNG files named by their true label, for `cnnspec predict`.
define SAVE_DIGITS
import sys
from PIL import Image
from cnnspec.harness.config import DataConfig
from cnnspec.harness.data import load_dataset
data = load_dataset(DataConfig(), (1, 32, 32), 10, 0)
for i in range(3):
    Image.fromarray(data.x_val[i, 0]).save(f"{sys.argv[1]}/digit-{i}-is-{data.y_val[i]}.png")
endef
export SAVE_DIGITS

demo: setup
	$(BIN)/cnnspec zoo
	$(BIN)/cnnspec check lenet5
	$(BIN)/cnnspec calc conv --size 7 --kernel 3 --stride 3 --rounding floor
	rm -rf $(DEMO_RUN)
	$(BIN)/cnnspec train lenet5 --out $(DEMO_RUN)
	$(BIN)/cnnspec eval $(DEMO_RUN)
	$(BIN)/python -c "$$SAVE_DIGITS" $(DEMO_RUN)
	$(BIN)/cnnspec predict $(DEMO_RUN) $(DEMO_RUN)/digit-*.png --top 3
	$(BIN)/cnnspec verify $(DEMO_RUN)
	$(BIN)/cnnspec export $(DEMO_RUN) --to onnx
	$(BIN)/cnnspec draw lenet5 -o $(DEMO_RUN)/lenet5.svg
	@echo "learning curves: $(DEMO_RUN)/curves.png, confusion matrix: $(DEMO_RUN)/confusion.png, diagram: $(DEMO_RUN)/lenet5.svg"

# mypy cannot follow the editable install's import hook for backends/ and calculators/,
# so it checks a tree of links laid out as the package installs.
TYPECHECK := build/typecheck
lint: setup
	$(BIN)/ruff check .
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/cnnspec
	for f in cnnspec/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/cnnspec/; done
	ln -s "$(CURDIR)/backends" $(TYPECHECK)/cnnspec/backends
	ln -s "$(CURDIR)/calculators" $(TYPECHECK)/cnnspec/calculators
	cd $(TYPECHECK) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p cnnspec

test: setup lint
	$(BIN)/pytest -q

# Rewrite the stored `cnnspec check` tables in tests/golden/ after an intended change.
golden: setup
	$(BIN)/pytest -q tests/test_golden.py --update-golden

bench: setup
	$(BIN)/python benchmarks/bench_check.py
	$(BIN)/python benchmarks/bench_torch_train.py
	$(BIN)/python benchmarks/bench_tensorflow_train.py
	$(BIN)/python benchmarks/bench_numpy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
