from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

import cnnspec
from cnnspec.spec.diagnostics import SpecError

# Caches the suite writes (the torch backend's measured layouts) stay out of the user's home;
# subprocesses inherit it.
os.environ.setdefault("CNNSPEC_CACHE_DIR", tempfile.mkdtemp(prefix="cnnspec-cache-"))

sys.path.insert(0, str(Path(__file__).parent))  # shared test helpers: layer_cases


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden", action="store_true", help="rewrite tests/golden/ from the current output"
    )


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


def parse(text: str) -> cnnspec.Graph:
    """Parse dedented spec text as 'net.yaml'."""
    return cnnspec.parse_spec(textwrap.dedent(text).lstrip("\n"), "net.yaml")


def errors(text: str) -> list[str]:
    """Every diagnostic a spec produces, as 'LINE:COL: message' strings."""
    with pytest.raises(SpecError) as info:
        parse(text)
    return [f"{d.location.line}:{d.location.col}: {d.message}" for d in info.value.diagnostics]


@pytest.fixture
def spec_errors() -> Callable[[str], list[str]]:
    return errors


@pytest.fixture
def parse_spec() -> Callable[[str], cnnspec.Graph]:
    return parse
