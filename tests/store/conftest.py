"""Fixtures for the store tests: a fresh store under tmp_path and a source-file factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "home")
    yield opened
    opened.close()


@pytest.fixture
def source_file(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Return a function that writes bytes to tmp_path/sources/<name> and returns the path."""

    def write(name: str, data: bytes) -> Path:
        path = tmp_path / "sources" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    return write
