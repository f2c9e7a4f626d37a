# The one-command entry points: `make demo` runs the main job, `make test` the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements-lock.txt
LOCKED := $(VENV)/.locked
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint ruff typecheck pytest docs site golden bench fuzz lock test-latest clean

setup: $(STAMP)

# Every direct and transitive dependency at the version in $(LOCK), the tools (pip,
# setuptools) included, and nothing else: --no-deps keeps pip from resolving anew. Re-runs
# only when the lock or the package metadata change (idempotent).
$(LOCKED): $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $$(grep -E '^(pip|setuptools)==' $(LOCK))
	$(BIN)/python -m pip install --quiet --no-deps -r $(LOCK)
	touch $(LOCKED)

# cnnspec itself, editable, built with the locked setuptools (no isolated build environment
# to fetch a newer one).
$(STAMP): $(LOCKED) pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check || { echo "$(LOCK) does not satisfy pyproject.toml: run 'make lock'" >&2; exit 1; }
	touch $(STAMP)

# Regenerate $(LOCK) from pyproject.toml's ranges and constraints.txt's pins (pip-tools),
# keeping every pin that still fits; `make lock LOCK_FLAGS=--upgrade` moves every package
# to the newest version the ranges allow. It resolves for this platform (Linux x86-64,
# CPython 3.11, the CPU wheels of torch and tensorflow).
LOCK_FLAGS ?=
lock: $(LOCKED)
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet $(LOCK_FLAGS) --allow-unsafe --strip-extras \
		--no-emit-find-links --no-emit-index-url --no-emit-trusted-host --all-build-deps \
		--extra torch --extra tensorflow --extra onnx --extra search --extra spark --extra serve --extra tune --extra mlflow --extra docs --extra dev -c constraints.txt -o $(LOCK) pyproject.toml

DEMO_RUN := runs/demo-lenet5
# Three validation digits as PNG files named by their true label, for `cnnspec predict`.
define SAVE_DIGITS
import sys
from PIL import Image
from cnnspec.spec.training import DataConfig
from cnnspec.data.dataset import load_dataset
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
	$(MAKE) --no-print-directory ruff typecheck BIN=$(BIN)

ruff:
	$(BIN)/ruff check .

typecheck:
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/cnnspec
	for f in cnnspec/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK)/cnnspec/; done
	ln -s "$(CURDIR)/backends" $(TYPECHECK)/cnnspec/backends
	ln -s "$(CURDIR)/calculators" $(TYPECHECK)/cnnspec/calculators
	cd $(TYPECHECK) && $(abspath $(BIN))/mypy --config-file $(CURDIR)/pyproject.toml -p cnnspec

pytest:
	$(BIN)/pytest -q

# The reference site (docs/, MkDocs with the Material theme) in build/site/. --strict: a
# broken link or anchor, or a page missing from mkdocs.yml's navigation, fails the build
# (not with --quiet: it hides the warnings that --strict counts).
docs: setup
	$(MAKE) --no-print-directory site BIN=$(BIN)

site:
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

test: setup
	$(MAKE) --no-print-directory ruff typecheck site pytest BIN=$(BIN)

# The suite against the newest versions pyproject.toml's ranges allow, in a scratch
# environment (run by hand, before users meet the drift). torch and tensorflow stay at
# constraints.txt's CPU wheels: a newer torch from the registry is a CUDA build of several GB.
LATEST := build/latest
define LOCK_DRIFT
import sys
from importlib.metadata import distributions
from packaging.utils import canonicalize_name as canon
locked = dict(line.split(";")[0].strip().split("==") for line in open(sys.argv[1]) if "==" in line and not line.startswith("#"))
locked = {canon(k): v for k, v in locked.items()}
now = {canon(d.metadata["Name"]): d.version for d in distributions()}
rows = [f"  {n:28} {locked.get(n, '-'):>22} -> {now.get(n, '-')}" for n in sorted(set(locked) | set(now))
        if locked.get(n) != now.get(n) and n != "cnnspec"]
print(f"{len(rows)} packages differ from the lock (locked -> newest allowed):", *rows, sep="\n")
endef
export LOCK_DRIFT

test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -c constraints.txt -e '.[all,dev]'
	$(LATEST)/bin/python -c "$$LOCK_DRIFT" $(LOCK)
	CNNSPEC_UNLOCKED=1 $(MAKE) --no-print-directory ruff typecheck site pytest BIN=$(LATEST)/bin TYPECHECK=build/typecheck-latest

# Rewrite the stored `cnnspec check` tables in tests/golden/ after an intended change.
golden: setup
	$(BIN)/pytest -q tests/test_golden.py --update-golden

# Long fuzzing (minutes): the Hypothesis properties of tests/test_fuzz.py (specs) and
# tests/test_integrity.py (run directories) with many more examples; prints the cases run.
FUZZ_EXAMPLES ?= 3000
FUZZ_RUN_EXAMPLES ?= 300
fuzz: setup
	CNNSPEC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) CNNSPEC_FUZZ_RUN_EXAMPLES=$(FUZZ_RUN_EXAMPLES) $(BIN)/pytest -q -s tests/test_fuzz.py \
		tests/test_integrity.py -k "mutated or damaged or scratch or set_values"

bench: setup
	$(BIN)/python benchmarks/bench_check.py
	$(BIN)/python benchmarks/bench_torch_train.py
	$(BIN)/python benchmarks/bench_tensorflow_train.py
	$(BIN)/python benchmarks/bench_numpy.py
	$(BIN)/python benchmarks/bench_modern.py
	$(BIN)/python benchmarks/bench_memory_format.py 3 --modern
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_transfer.py
	$(BIN)/python benchmarks/bench_transfer.py --speed
	$(BIN)/python benchmarks/bench_search.py
	$(BIN)/python benchmarks/bench_import.py
	$(BIN)/python benchmarks/bench_import_keras.py
	$(BIN)/python benchmarks/bench_runtime.py
	$(BIN)/python benchmarks/bench_predict.py
	$(BIN)/python benchmarks/bench_serve.py --plot build/serve-latency.png
	$(BIN)/python benchmarks/bench_memory_format.py 5 --compile
	$(BIN)/python benchmarks/bench_distributed.py
	$(BIN)/python benchmarks/bench_tune.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
