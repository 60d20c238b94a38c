"""The component side: turns a `Plugin` class into the `Transform` class componentize-py
exports, converting between the generated bindings (`wit_world`) and the SDK's types. Only
imported inside a component (sys.platform == "wasi"), where `wit_world` exists.

Works with the bindings of contract 0.2.0 and of 0.1.0 (no drops, no extras writes, no
command plane there): what the bindings lack is detected once, and a plugin that uses it
fails with a message naming the contract it needs."""

from __future__ import annotations

import dataclasses
from typing import Any, List

from componentize_py_types import Err  # type: ignore[import-not-found]
from wit_world import exports as wit_exports  # type: ignore[import-not-found]
from wit_world.imports import host as wit_host  # type: ignore[import-not-found]
from wit_world.imports import types as wit  # type: ignore[import-not-found]

from . import host as sdk_host
from .config import Config
from .types import (
    Batch,
    Command,
    CommandDecision,
    DataType,
    Extra,
    LatestSample,
    Signed,
    TagDecision,
    TagInfo,
    Text,
    Unsigned,
)

_OUTPUT_FIELDS = {f.name for f in dataclasses.fields(wit.BatchOutput)}
#: Whether the bindings are of a contract with drops and extras writes (0.2.0 and later).
HAS_DROPS = "dropped" in _OUTPUT_FIELDS
_PLANE_BITS = sum(int(p.value) for p in wit.Planes)
_COLUMN_BITS = sum(int(c.value) for c in wit.Columns)


def _extra_in(v: Any) -> Any:
    if isinstance(v, wit.ExtraValue_Text):
        return Text(v.value)
    if isinstance(v, wit.ExtraValue_Signed):
        return Signed(v.value)
    return Unsigned(v.value)


def _extra_out(v: Any) -> Any:
    if isinstance(v, Text):
        return wit.ExtraValue_Text(v.value)
    if isinstance(v, Signed):
        return wit.ExtraValue_Signed(v.value)
    if isinstance(v, Unsigned):
        return wit.ExtraValue_Unsigned(v.value)
    raise TypeError(f"an extra must be Text, Signed or Unsigned, got {v!r}")


class _WitHost(sdk_host._Backend):
    """Host calls through the component's imports."""

    def log(self, level, message, fields):
        wit_host.log(wit_host.Level(int(level)), message, fields)

    def counter_add(self, name, delta):
        wit_host.counter_add(name, delta)

    def lookup(self, table, key):
        return wit_host.lookup(table, key)

    def latest(self, path):
        call = getattr(wit_host, "latest", None)
        if call is None:
            raise RuntimeError("host.latest needs contract ferrule:plugin@0.2.0 or later")
        s = call(path)
        if s is None:
            return None
        return LatestSample(
            s.value, s.quality, s.timestamp, None if s.extra is None else _extra_in(s.extra)
        )


def _error_text(e: BaseException) -> str:
    if isinstance(e, ValueError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def make_transform(plugin_cls: Any) -> type:
    """The class componentize-py instantiates for the `transform` export."""
    sdk_host._set_backend(_WitHost())
    state: dict = {"plugin": None, "writes": 0}

    def describe(self: Any) -> Any:
        info = plugin_cls.info()
        planes = int(info.planes)
        if planes & ~_PLANE_BITS:
            raise RuntimeError("the command plane needs contract ferrule:plugin@0.2.0 or later")
        if int(info.writes) & ~_COLUMN_BITS or (not HAS_DROPS and int(info.writes) & 8):
            raise RuntimeError("writing extras needs contract ferrule:plugin@0.2.0 or later")
        return wit.PluginInfo(
            info.name,
            info.version,
            info.description,
            wit.Planes(planes),
            wit.Columns(int(info.reads)),
            wit.Columns(int(info.writes)),
            [wit.ConfigKey(k.name, k.description, k.required) for k in info.config_keys],
            [wit.Reason(r.code, r.name, r.description) for r in info.reasons],
        )

    def init(self: Any, config: str) -> None:
        try:
            plugin = plugin_cls.init(Config.from_json(config))
        except Exception as e:  # noqa: BLE001 - every refusal goes back to the host as text
            raise Err(_error_text(e))
        state["plugin"] = plugin
        state["writes"] = int(plugin_cls.info().writes)

    def on_tags(self: Any, tags: List[Any]) -> List[Any]:
        plugin = state["plugin"]
        out = []
        for t in tags:
            if plugin is None:
                out.append(wit.TagDecision_Reject("plugin not initialised"))
                continue
            tag = TagInfo(
                t.id,
                t.path,
                t.vendor_path,
                t.unit,
                DataType(t.data_type.value),
                t.source,
                t.metadata,
            )
            try:
                d: TagDecision = plugin.on_tag(tag)
            except Exception as e:  # noqa: BLE001 - one tag's failure rejects that tag
                d = TagDecision.reject(f"plugin raised on tag {t.path!r}: {_error_text(e)}")
            if d.rejected is not None:
                out.append(wit.TagDecision_Reject(d.rejected))
            else:
                limits = (
                    None
                    if d.limits is None
                    else wit.Limits(d.limits.low, d.limits.high, d.limits.max_rate_per_second)
                )
                out.append(wit.TagDecision_Accept(wit.TagAccept(d.path, d.unit, limits, d.enrichment)))
        return out

    def on_batch(
        self: Any,
        tag_ids: List[int],
        values: List[float],
        quality: List[int],
        timestamps: List[int],
        extras: List[Any],
    ) -> Any:
        plugin = state["plugin"]
        if plugin is None:
            raise Err("plugin not initialised")
        batch = Batch(
            tag_ids,
            values,
            quality,
            timestamps,
            [Extra(e.index, _extra_in(e.value)) for e in extras],
        )
        try:
            plugin.on_batch(batch)
            out = batch.into_output(state["writes"])
            rejected = [wit.Rejection(r.index, r.reason, r.detail) for r in out.rejected]
            if HAS_DROPS:
                return wit.BatchOutput(
                    out.values,
                    out.quality,
                    None
                    if out.extras is None
                    else [wit.Extra(e.index, _extra_out(e.value)) for e in out.extras],
                    rejected,
                    [wit.Drop(d.index, d.reason) for d in out.dropped],
                )
            if out.dropped:
                raise RuntimeError("dropping samples needs contract ferrule:plugin@0.2.0 or later")
            return wit.BatchOutput(out.values, out.quality, rejected)
        except Err:
            raise
        except Exception as e:  # noqa: BLE001 - fails the batch, with the reason
            raise Err(_error_text(e))

    def on_command(self: Any, cmd: Any) -> Any:
        plugin = state["plugin"]
        if plugin is None:
            return wit.CommandDecision_Refuse(wit.CommandRefusal(0, "plugin not initialised"))
        command = Command(
            cmd.id,
            cmd.tag_id,
            cmd.path,
            cmd.value,
            None if cmd.extra is None else _extra_in(cmd.extra),
            cmd.expected_current,
            cmd.requester,
            cmd.deadline,
            cmd.dry_run,
        )
        try:
            d: CommandDecision = plugin.on_command(command)
        except Exception as e:
            # The contract has no error here: a trap refuses the command (and replaces the
            # instance). Log the reason first, so it is not lost.
            sdk_host.log(sdk_host.Level.ERROR, "on_command raised", [("command", cmd.id), ("error", _error_text(e))])
            raise
        if d.refused is not None:
            return wit.CommandDecision_Refuse(wit.CommandRefusal(d.refused[0], d.refused[1]))
        return wit.CommandDecision_Allow(d.value)

    methods = {
        "describe": describe,
        "init": init,
        "on_tags": on_tags,
        "on_batch": on_batch,
    }
    if hasattr(wit_exports.Transform, "on_command"):
        methods["on_command"] = on_command
    return type("Transform", (wit_exports.Transform,), methods)

