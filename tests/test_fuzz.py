"""Property-based fuzzing of what reads user files (Hypothesis).

The property, as a user meets it through the command line: exit 0, or exit 1 with a
``file:line:col`` diagnostic (or, for a run, a message naming the file); never an
internal error, never more than 2 s or 200 MiB (Python's allocations, traced). The zoo specs, the README's spec and a spec with
blocks are mutated (misspelled kinds and arguments; keys and layers deleted, duplicated,
reordered; values of another type; broken ``inputs``; nested blocks; anchors and
aliases; truncated text; random bytes), and specs are also generated from scratch.

``make test`` runs a bounded number of examples (seconds); ``make fuzz`` sets
CNNSPEC_FUZZ_EXAMPLES (default there: 3,000 a property) and prints how many cases ran.
"""

from __future__ import annotations

import os
import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from cnnspec.cli.app import app  # noqa: E402
from cnnspec.graph.load import zoo_names, zoo_path  # noqa: E402
from cnnspec.layers import LAYERS  # noqa: E402

EXAMPLES = int(os.environ.get("CNNSPEC_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=EXAMPLES <= 100)
DIAGNOSTIC = re.compile(r"net\.yaml:\d+:\d+: error: ")
CASES: dict[str, int] = {}

README_SPEC = """\
name: tiny
input: {shape: [3, 32, 32]}
defaults:
  conv2d: {activation: relu, padding: same}
blocks:
  pair:
    params: {f: 16}
    layers:
      - conv2d: {filters: $f, kernel: 3}
        name: a
      - conv2d: {filters: $f, kernel: 3}
        name: b
      - add: {}
        inputs: [b, input]
layers:
  - conv2d: {filters: 16, kernel: 3}
    name: stem
  - pair: {f: 16}
    name: p1
  - maxpool2d: {kernel: 2}
  - globalavgpool2d: {}
  - dense: {units: 10}
    name: fc
train:
  epochs: 2
  optimizer: {name: sgd, lr: 0.1}
"""
SEEDS = [zoo_path(name).read_text() for name in zoo_names()] + [README_SPEC]


def run_check(tmp: Path, text: str | bytes, name: str) -> None:
    """The property, for one spec text."""
    CASES[name] = CASES.get(name, 0) + 1
    path = tmp / "net.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        result = CliRunner().invoke(app, ["check", str(path)], catch_exceptions=True)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    output = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}\n--- spec:\n{text!r}"
    assert result.exit_code in (0, 1), f"exit {result.exit_code}\n{output}\n--- spec:\n{text!r}"
    if result.exit_code == 1:
        assert DIAGNOSTIC.search(output), f"no file:line:col diagnostic:\n{output}\n--- spec:\n{text!r}"
    assert seconds < 2.0, f"check took {seconds:.1f} s on:\n{text!r}"
    assert peak < 200 * 2**20, f"check allocated {peak / 2**20:.0f} MiB on:\n{text!r}"


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    yield
    if CASES:
        print("\nfuzz cases run: " + ", ".join(f"{name} {count:,}" for name, count in CASES.items()) + f"; total {sum(CASES.values()):,}")


# ---- mutations of parsed specs ---------------------------------------------------------------

KINDS = sorted(LAYERS)
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.lists(st.integers(-2, 40), max_size=4), st.dictionaries(st.text(max_size=6), st.integers(0, 9), max_size=2),
)


def _layers(spec: Any) -> list[Any]:
    layers = spec.get("layers") if isinstance(spec, dict) else None
    return layers if isinstance(layers, list) else []


@st.composite
def mutated(draw: st.DrawFn) -> str:
    spec = yaml.safe_load(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        layers = _layers(spec)
        action = draw(st.sampled_from(["misspell", "drop_key", "duplicate", "reorder", "retype", "inputs", "top", "nest", "delete"]))
        if not layers and action != "top":
            action = "top"
        if action == "top":
            key = draw(st.sampled_from(["name", "input", "layers", "train", "defaults", "blocks", "output", "extra"]))
            if draw(st.booleans()):
                spec.pop(key, None)
            else:
                spec[key] = draw(VALUES)
            continue
        i = draw(st.integers(0, len(layers) - 1))
        layer = layers[i]
        if action == "delete":
            layers.pop(i)
        elif action == "duplicate":
            layers.insert(i, layer)
        elif action == "reorder":
            j = draw(st.integers(0, len(layers) - 1))
            layers[i], layers[j] = layers[j], layers[i]
        elif not isinstance(layer, dict):
            layers[i] = draw(VALUES)
        elif action == "misspell":
            kind = next((k for k in layer if k not in ("name", "inputs", "expect")), None)
            if kind is not None:
                typo = draw(st.sampled_from([kind[:-1], kind + "s", kind.upper(), draw(st.sampled_from(KINDS)), ""]))
                layer[typo] = layer.pop(kind)
                if isinstance(layer[typo], dict) and layer[typo] and draw(st.booleans()):
                    arg = draw(st.sampled_from(sorted(layer[typo], key=str)))
                    layer[typo][str(arg) + "x"] = layer[typo].pop(arg)
        elif action == "drop_key":
            if layer:
                layer.pop(draw(st.sampled_from(sorted(layer, key=str))))
        elif action == "retype":
            kind = next((k for k in layer if k not in ("name", "inputs", "expect")), None)
            args = layer.get(kind) if kind else None
            if isinstance(args, dict) and args:
                args[draw(st.sampled_from(sorted(args, key=str)))] = draw(VALUES)
            elif kind:
                layer[kind] = draw(VALUES)
        elif action == "inputs":
            layer["inputs"] = draw(st.one_of(VALUES, st.lists(st.sampled_from(["input", "nope", "c1", "stem", "a.b", "p1.b", ""]), max_size=3)))
        elif action == "nest":
            spec.setdefault("blocks", {})
            if isinstance(spec["blocks"], dict):
                spec["blocks"]["inner"] = {"layers": [layer, {"inner": {}}] if draw(st.booleans()) else [layer]}
                layers[i] = {"inner": {}}
    return yaml.safe_dump(spec, sort_keys=False)


@FUZZ
@given(text=mutated())
def test_mutated_specs(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    run_check(tmp_path_factory.mktemp("fuzz", numbered=True), text, "mutated specs")


# ---- mutations of the text -------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(SEEDS)).encode()
    action = draw(st.sampled_from(["truncate", "bytes", "anchor", "swap_lines"]))
    if action == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    if action == "bytes":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.binary(min_size=1, max_size=12)) + text[at:]
    lines = text.decode().splitlines(keepends=True)
    if action == "anchor":  # an anchor on one line, an alias of it on another (recursive ones too)
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        key, sep, rest = lines[i].partition(":")
        if sep:
            lines[i] = f"{key}: &a{rest}"
        key, sep, _ = lines[j].partition(":")
        if sep:
            lines[j] = f"{key}: *a\n"
        return "".join(lines).encode()
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "".join(lines).encode()


@FUZZ
@given(text=damaged())
def test_damaged_text(tmp_path_factory: pytest.TempPathFactory, text: bytes) -> None:
    run_check(tmp_path_factory.mktemp("fuzz", numbered=True), text, "damaged text")


# ---- specs from scratch ----------------------------------------------------------------------

ARGS = st.dictionaries(
    st.sampled_from(["filters", "kernel", "stride", "padding", "units", "rate", "activation", "rounding", "dilation", "groups", "keepdims", "bias"]),
    st.one_of(st.integers(-2, 70), st.sampled_from(["same", "valid", "relu", "ceil", "floor", "exact"]), st.lists(st.integers(0, 9), max_size=3), st.booleans()),
    max_size=4,
)


@st.composite
def scratch(draw: st.DrawFn) -> str:
    layers = [
        {draw(st.sampled_from(KINDS)): draw(ARGS), **({"name": draw(st.sampled_from(["a", "b", "c", "d"]))} if draw(st.booleans()) else {})}
        for _ in range(draw(st.integers(0, 6)))
    ]
    shape = draw(st.lists(st.integers(-1, 40), min_size=0, max_size=4))
    spec: dict[str, Any] = {"name": draw(st.sampled_from(["net", "", "x y"])), "input": {"shape": shape}, "layers": layers}
    if draw(st.booleans()):
        spec["train"] = {draw(st.sampled_from(["epochs", "batch_size", "optimizer", "freeze", "lr_mult", "data", "phases", "distributed"])): draw(VALUES)}
    return yaml.safe_dump(spec, sort_keys=False)


@FUZZ
@given(text=scratch())
def test_specs_from_scratch(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    run_check(tmp_path_factory.mktemp("fuzz", numbered=True), text, "specs from scratch")


# ---- --set values --------------------------------------------------------------------------

SET_KEYS = ["epochs", "batch_size", "seed", "optimizer", "optimizer.lr", "optimizer.name", "optimizer.betas", "schedule.name",
            "schedule.gamma", "data", "data.source", "data.augment", "data.augment.random_crop", "data.augment.random_resized_crop",
            "data.normalize", "data.normalize.mean", "freeze", "lr_mult", "lr_mult.c1", "phases", "classes", "distributed",
            "distributed.check_replicas", "early_stopping.patience", "no.such.key", ""]
YAML_VALUES = st.one_of(st.sampled_from(["1", "-1", "0", "1e-3", "null", "[1, 2]", "{a: 1}", "adam", "sgdd", "[c1]", "[{epochs: 1}]",
                                         "{mean: [0.5], std: [0]}", "true", "'", "[", "*a", "&a 1", "!!python/object:os.system x"]),
                        st.text(max_size=12))


@FUZZ
@given(pairs=st.lists(st.tuples(st.sampled_from(SET_KEYS), YAML_VALUES), min_size=1, max_size=3))
def test_set_values(pairs: list[tuple[str, str]]) -> None:
    """`train --set KEY=VALUE`: a usage error (exit 2) or a valid training config, and the
    layer patterns it names checked against the spec; never an internal error."""
    import typer
    from pydantic import ValidationError

    import cnnspec
    from cnnspec.cli.common import _parse_sets
    from cnnspec.graph import tuning
    from cnnspec.spec.training import phase_plan

    CASES["--set values"] = CASES.get("--set values", 0) + 1
    graph = cnnspec.load_spec("lenet5")
    try:
        overrides = _parse_sets([f"{key}={value}" for key, value in pairs])
        config = cnnspec.api.train_config(graph, overrides)
        for *_, phase in phase_plan(config):
            tuning.multipliers(graph, phase)
    except (typer.Exit, ValidationError, tuning.TuningError):  # exit 2, exit 2, exit 1
        pass
