"""The host capabilities a plugin may call: logging, counters, reference-data lookup and the
latest value of a tag. Inside the component they call the host's imports; natively (under
pytest) they go to the stand-in host that `ferrule_plugin.testing.Harness` sets up."""

from __future__ import annotations

import enum
from typing import List, Optional, Sequence, Tuple

from .types import LatestSample


class Level(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


class _Backend:
    """What the host calls go to; the native stand-in or the component's imports."""

    def log(self, level: Level, message: str, fields: List[Tuple[str, str]]) -> None:
        raise NotImplementedError

    def counter_add(self, name: str, delta: int) -> None:
        raise NotImplementedError

    def lookup(self, table: str, key: str) -> Optional[List[Tuple[str, str]]]:
        raise NotImplementedError

    def latest(self, path: str) -> Optional[LatestSample]:
        raise NotImplementedError


_backend: Optional[_Backend] = None


def _set_backend(backend: _Backend) -> None:
    global _backend
    _backend = backend


def _get() -> _Backend:
    if _backend is None:
        # Natively without a Harness: a fresh stand-in host, so plugin code runs anywhere.
        from .testing import NativeHost

        _set_backend(NativeHost())
    assert _backend is not None
    return _backend


def log(level: Level, message: str, fields: Sequence[Tuple[str, str]] = ()) -> None:
    """Writes a structured log line; the host tags it with the plugin's name and version."""
    _get().log(Level(level), str(message), [(str(k), str(v)) for k, v in fields])


def counter_add(name: str, delta: int = 1) -> None:
    """Adds `delta` to the plugin-scoped counter `name` (a host metric)."""
    if delta < 0:
        raise ValueError(f"counter {name}: delta must be >= 0, got {delta}")
    _get().counter_add(str(name), int(delta))


def lookup(table: str, key: str) -> Optional[List[Tuple[str, str]]]:
    """Looks up `key` in the host's reference-data table `table` (e.g. the asset registry)."""
    return _get().lookup(str(table), str(key))


def latest(path: str) -> Optional[LatestSample]:
    """The latest sample the host holds for the tag at `path` (normalised path), or None."""
    return _get().latest(str(path))
