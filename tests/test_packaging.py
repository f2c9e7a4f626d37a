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
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("cnnspec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"cnnspec"}
    for expected in ("cnnspec/calculators/sizes.py", "cnnspec/backends/__init__.py", "cnnspec/specs/vgg16.yaml", "cnnspec/layers/conv.py"):
        assert expected in names


def test_unknown_backend_is_a_clear_error() -> None:
    import pytest

    from cnnspec.backends import BackendUnavailable, load_backend

    with pytest.raises(BackendUnavailable, match="unknown backend 'pytorch'"):
        load_backend("pytorch")
