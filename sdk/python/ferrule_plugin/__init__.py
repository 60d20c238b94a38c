"""Ferrule plugin SDK for Python: subclass `Plugin`, export it once with
`Transform = export(MyPlugin)`, and the same module runs natively under pytest (with
`ferrule_plugin.testing.Harness` standing in for the host) and, built with
`python -m ferrule_plugin build`, as a WebAssembly component in the host.

    from ferrule_plugin import Columns, Plugin, PluginInfo, export

    class Doubler(Plugin):
        @classmethod
        def info(cls):
            return PluginInfo("doubler", "0.1.0").sample_plane(Columns.VALUES, Columns.VALUES)

        def on_batch(self, batch):
            batch.values = [v * 2.0 for v in batch.values]

    Transform = export(Doubler)
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from . import host
from .config import Config, ConfigError
from .host import Level
from .types import (
    Batch,
    BatchOutput,
    Columns,
    Command,
    CommandDecision,
    ConfigKey,
    DataType,
    Drop,
    Extra,
    ExtraValue,
    LatestSample,
    Limits,
    Planes,
    PluginInfo,
    Quality,
    Reason,
    Rejection,
    Sample,
    Signed,
    TagDecision,
    TagInfo,
    Text,
    Unsigned,
)

__version__ = "0.2.0"

#: The contract version this SDK writes plugins for (the WIT package version).
CONTRACT_VERSION = "0.2.0"

__all__ = [
    "Batch",
    "BatchOutput",
    "Columns",
    "Command",
    "CommandDecision",
    "Config",
    "ConfigError",
    "ConfigKey",
    "CONTRACT_VERSION",
    "DataType",
    "Drop",
    "export",
    "Extra",
    "ExtraValue",
    "host",
    "LatestSample",
    "Level",
    "Limits",
    "Planes",
    "Plugin",
    "PluginInfo",
    "Quality",
    "Reason",
    "Rejection",
    "Sample",
    "Signed",
    "TagDecision",
    "TagInfo",
    "Text",
    "Unsigned",
]


class Plugin:
    """A plugin: its self-description (`info`), its construction from config (`init`, by
    default `cls(config)`), and the planes it implements. Override what you need."""

    @classmethod
    def info(cls) -> PluginInfo:
        """Name, version, planes, columns read and written, config keys, and every reason
        code used for rejected or dropped samples and refused commands."""
        raise NotImplementedError(f"{cls.__name__}.info() must return a PluginInfo")

    @classmethod
    def init(cls, config: Config) -> "Plugin":
        """Builds the plugin from the stage's config. Raising (e.g. `ConfigError` from
        `config.parse`, or `ValueError`) refuses the plugin; the running version stays."""
        return cls(config)  # type: ignore[call-arg]

    def __init__(self, config: Optional[Config] = None) -> None:
        pass

    def on_tag(self, tag: TagInfo) -> TagDecision:
        """Tag plane: decide once per tag. May be called again for the same id (after a
        swap or an upstream change); the newer answer replaces the older. Raising rejects
        the tag with the exception's text."""
        return TagDecision.keep()

    def on_batch(self, batch: Batch) -> None:
        """Sample plane: change `batch.values` / `batch.quality` (or `sample.value` ...) in
        place, `reject` or `drop` samples. Raising fails the whole batch."""

    def on_command(self, cmd: Command) -> CommandDecision:
        """Command plane (declare `command_plane()`): allow a write request, optionally with
        the value converted, or refuse it with a declared reason code."""
        return CommandDecision.allow()


class _NativeExport:
    """What `export` returns outside a component: nothing to call, it names the plugin."""

    plugin: Any = None

    def __init__(self) -> None:
        raise RuntimeError(
            "Transform is the component's export; natively use ferrule_plugin.testing.Harness"
        )


def export(plugin_cls: type) -> type:
    """Exports `plugin_cls` as the component's `transform` interface. Assign the result to
    a module-level `Transform` in the module you build (componentize-py looks it up there).
    Outside a component it returns a placeholder, so the module imports under pytest."""
    if not (isinstance(plugin_cls, type) and issubclass(plugin_cls, Plugin)):
        raise TypeError(f"export() takes a Plugin subclass, got {plugin_cls!r}")
    if sys.platform == "wasi":
        from ._guest import make_transform

        return make_transform(plugin_cls)
    return type("Transform", (_NativeExport,), {"plugin": plugin_cls})
