"""How fast `cnnspec check` is: run by hand (`make bench`), never as a timed test.

Measures, side by side in one run (the machines are shared and noisy, so compare ratios):
  1. the whole `cnnspec check vgg16` process, against a bare `python -c pass` and against
     importing only cnnspec's dependencies (the floor no spec compiler can beat); and in
     paired rounds (alternating which runs first) against `python -c "import numpy, yaml,
     pydantic"`, the floor the issue names (goal: at most 1.3x);
  2. in process: loading every zoo spec, and a generated 1,000-layer spec.

cnnspec's modules are byte-compiled first, as an installed package's are: an editable
install under PYTHONDONTWRITEBYTECODE (set on some build machines) would otherwise compile
them from source on every run, 30 ms no user pays.
"""

from __future__ import annotations

import compileall
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import cnnspec

REPEATS = 15
# What cnnspec's CLI imports from its dependencies (a bare `import pydantic` is lazy and
# cheap); `check` itself needs neither typer nor rich.
DEPENDENCIES = "from pydantic import BaseModel, Field, StrictInt, ValidationError; import yaml, typer, rich.console, rich.table"


def median_seconds(run: Callable[[], object], repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def process(*args: str) -> Callable[[], object]:
    return lambda: subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL)


def deep_spec(layers: int) -> str:
    """A plain stack: 'layers' layers of conv2d + relu pairs on a small map."""
    body = "".join("  - conv2d: {filters: 16, kernel: 3, padding: same}\n  - relu: {}\n" for _ in range(layers // 2))
    return f"name: deep\ninput: {{shape: [16, 32, 32]}}\nlayers:\n{body}"


FLOOR = "import numpy, yaml, pydantic"
# A bare `import pydantic` defers its models; building one needs all of it, and its plugin
# loader (importlib.metadata). This is what any Pydantic-validated YAML tool starts with.
VALIDATING = "from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError; import yaml; import importlib.metadata"


def paired_ratio(rounds: int = 21) -> tuple[float, float, float]:
    """(median check seconds, median floor seconds, median of the per-round ratios)."""
    check, floor, ratios = [], [], []
    for round_ in range(rounds):
        pair = [("check", process("-m", "cnnspec", "check", "vgg16")), ("floor", process("-c", FLOOR))]
        times = {}
        for name, run in (pair if round_ % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            run()
            times[name] = time.perf_counter() - start
        check.append(times["check"])
        floor.append(times["floor"])
        ratios.append(times["check"] / times["floor"])
    return statistics.median(check), statistics.median(floor), statistics.median(ratios)


def byte_compile() -> None:
    import cnnspec.backends
    import cnnspec.calculators
    import cnnspec.specs

    for package in (cnnspec, cnnspec.backends, cnnspec.calculators, cnnspec.specs):
        for folder in package.__path__:
            compileall.compile_dir(folder, quiet=2)


def main() -> None:
    byte_compile()
    check_paired, floor_paired, ratio = paired_ratio()
    print(f"paired rounds: cnnspec check vgg16 {check_paired * 1000:.1f} ms against `python -c \"{FLOOR}\"` "
          f"{floor_paired * 1000:.1f} ms: median ratio {ratio:.2f}x (goal <= 1.3x)")
    print()
    rows = []
    python = median_seconds(process("-c", "pass"))
    deps = median_seconds(process("-c", DEPENDENCIES))
    validating = median_seconds(process("-c", VALIDATING))
    floor = median_seconds(process("-c", FLOOR))
    check = median_seconds(process("-m", "cnnspec", "check", "vgg16"))
    rows.append(("python -c pass", python, check / python))
    rows.append((f"the floor: {FLOOR}", floor, check / floor))
    rows.append(("what validating needs: pydantic's models, yaml", validating, check / validating))
    rows.append(("its dependencies alone (pydantic, yaml, typer, rich)", deps, check / deps))
    rows.append(("cnnspec check vgg16 (whole process)", check, 1.0))

    zoo = cnnspec.zoo_names()
    all_zoo = median_seconds(lambda: [cnnspec.load_spec(name) for name in zoo])
    text = deep_spec(1000)
    deep = median_seconds(lambda: cnnspec.parse_spec(text, "deep.yaml"))
    graph = cnnspec.parse_spec(text, "deep.yaml")
    assert len(graph.nodes) == 1000

    print(f"{'what':54} {'median':>10} {'check / this':>13}")
    for label, seconds, ratio in rows:
        print(f"{label:54} {seconds * 1000:8.1f} ms {ratio:12.2f}x")
    print()
    print(f"{'in process':54} {'median':>10} {'per layer':>13}")
    layers = sum(len(cnnspec.load_spec(name).nodes) for name in zoo)
    print(f"{'all ' + str(len(zoo)) + ' zoo specs (' + str(layers) + ' layers)':54} {all_zoo * 1000:8.1f} ms {all_zoo / layers * 1e6:10.1f} us")
    print(f"{'generated 1,000-layer spec':54} {deep * 1000:8.1f} ms {deep / 1000 * 1e6:10.1f} us")


if __name__ == "__main__":
    main()
