"""The layout installs as documented: backends/, calculators/ and specs/ inside cnnspec."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"backends": "cnnspec.backends", "calculators": "cnnspec.calculators", "specs": "cnnspec.specs"}


def _declared() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["setuptools"]["packages"]
    assert config["tool"]["setuptools"]["package-dir"] == {v: k for k, v in MAPPED.items()}
    return packages


def test_every_package_folder_is_listed() -> None:
    found = set()
    for top in ("cnnspec", *MAPPED):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT).parts
            found.add(".".join((MAPPED.get(parts[0], parts[0]), *parts[1:])))
    assert sorted(found) == sorted(_declared())


def test_no_top_level_backends_or_calculators() -> None:
    for name in ("backends", "calculators", "specs"):
        assert importlib.util.find_spec(name) is None, f"a top-level '{name}' is importable"
    import cnnspec.backends
    import cnnspec.calculators

    assert Path(cnnspec.calculators.__file__).parent == ROOT / "calculators"
    assert Path(cnnspec.backends.__file__).parent == ROOT / "backends"


def test_wheel_contents(tmp_path: Path) -> None:
    subprocess.run(
        # The locked setuptools builds it: an isolated build would fetch whatever is newest.
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("cnnspec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cnnspec"}
    for expected in ("cnnspec/calculators/sizes.py", "cnnspec/backends/__init__.py", "cnnspec/specs/vgg16.yaml", "cnnspec/layers/conv.py"):
        assert expected in names


def _locked() -> dict[str, str]:
    """requirements-lock.txt as {canonical name: version}."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, version = line.split(";")[0].strip().split("==")
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_every_requirement_within_its_range() -> None:
    """What `make setup` installs satisfies pyproject.toml's ranges (the package, every extra
    but cupy's, the build system) and constraints.txt's pins; a dependency added to
    pyproject.toml without `make lock` fails here."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = {name: reqs for name, reqs in config["project"]["optional-dependencies"].items() if name != "cupy"}
    wanted = [*config["project"]["dependencies"], *config["build-system"]["requires"], *(r for reqs in extras.values() for r in reqs)]
    wanted += [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    locked = _locked()
    checked = 0
    for text in wanted:
        requirement = Requirement(text)
        if requirement.name == "cnnspec" or (requirement.marker and not requirement.marker.evaluate(default_environment())):
            continue
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in requirements-lock.txt: run 'make lock'"
        assert requirement.specifier.contains(locked[name], prereleases=True), f"locked {name}=={locked[name]} is outside {requirement}"
        checked += 1
    assert checked >= 20 and {"torch", "tensorflow-cpu", "pyyaml", "pip", "setuptools"} <= set(locked)


def test_the_environment_is_the_lock() -> None:
    """The suite runs on exactly the locked versions (skipped under `make test-latest`, whose
    environment is the newest the ranges allow)."""
    import os
    from importlib.metadata import version

    import pytest

    if os.environ.get("CNNSPEC_UNLOCKED"):
        pytest.skip("make test-latest: the environment holds the newest versions, not the lock")
    drift = {name: (pin, version(name)) for name, pin in _locked().items() if version(name) != pin}
    assert not drift, f"installed versions differ from requirements-lock.txt (run 'make setup'): {drift}"


def test_unknown_backend_is_a_clear_error() -> None:
    import pytest

    from cnnspec.backends import BackendUnavailable, load_backend

    with pytest.raises(BackendUnavailable, match="unknown backend 'pytorch'"):
        load_backend("pytorch")
