"""Native test harness for pytest: runs a plugin's logic in plain CPython, no Wasm involved,
with a stand-in host (captured logs and counters, reference data and latest values the test
provides). It applies the same checks the host applies to a component: the self-description
(`check_info`), one decision per tag, and every batch output (`check_output`), plus the
component boundary's own (values are floats, quality fits 32 bits).

    from ferrule_plugin.testing import Harness, ReferenceData

    h = Harness(RateAlarm, {"max_rate": 5.0}, reference=ReferenceData().row("assets", "k", {"site": "s1"}))
    h.on_tag(TagInfo(0, "plant/s1/a/l/pump1/flow"))
    out = h.on_batch(Batch.from_rows([(0, 1.0, Quality.GOOD, 1_000_000_000)]))
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type

from . import host as sdk_host
from .config import Config
from .host import Level
from .types import (
    Batch,
    BatchOutput,
    Columns,
    Command,
    CommandDecision,
    Extra,
    LatestSample,
    Planes,
    PluginInfo,
    TagDecision,
    TagInfo,
)

#: The host's default `limits.max_output_bytes` (16 MiB).
DEFAULT_MAX_OUTPUT_BYTES = 16 << 20
_WRITABLE = Columns.VALUES | Columns.QUALITY | Columns.EXTRAS


class ContractViolation(AssertionError):
    """The plugin did something the host refuses (the host would fail the call)."""


@dataclass
class LogLine:
    level: Level
    message: str
    fields: List[Tuple[str, str]]


class ReferenceData:
    """Reference data for the stand-in host: `(table, key) -> key/values`."""

    def __init__(self) -> None:
        self.rows: Dict[Tuple[str, str], List[Tuple[str, str]]] = {}

    def row(
        self, table: str, key: str, values: Mapping[str, str] | Iterable[Tuple[str, str]]
    ) -> "ReferenceData":
        items = values.items() if isinstance(values, Mapping) else values
        self.rows[(table, key)] = [(str(k), str(v)) for k, v in items]
        return self

    @staticmethod
    def from_csv(table: str, text: str, key_column: str) -> "ReferenceData":
        """A table from CSV text with a header row, keyed by `key_column` (like the host's
        `[reference_data.<table>]` with `key`)."""
        import csv
        import io

        data = ReferenceData()
        for rec in csv.DictReader(io.StringIO(text)):
            key = rec[key_column]
            data.row(table, key, [(k, v) for k, v in rec.items() if k != key_column])
        return data


class NativeHost(sdk_host._Backend):
    """The stand-in host: what a plugin's `host.*` calls reach natively."""

    def __init__(
        self,
        reference: Optional[ReferenceData] = None,
        latest: Optional[Mapping[str, LatestSample]] = None,
    ) -> None:
        self.reference = reference or ReferenceData()
        self.latest_values: Dict[str, LatestSample] = dict(latest or {})
        self.logs: List[LogLine] = []
        self.counters: Dict[str, int] = {}

    def log(self, level, message, fields):
        self.logs.append(LogLine(level, message, list(fields)))

    def counter_add(self, name, delta):
        self.counters[name] = self.counters.get(name, 0) + delta

    def lookup(self, table, key):
        row = self.reference.rows.get((table, key))
        return None if row is None else list(row)

    def latest(self, path):
        return self.latest_values.get(path)


def check_info(info: PluginInfo) -> None:
    """The host's checks on a self-description (`plugin::instance::check_info`)."""
    if not isinstance(info, PluginInfo):
        raise ContractViolation(f"info() returned {info!r}, not a PluginInfo")
    if not info.name.strip():
        raise ContractViolation("name is empty")
    if not info.version.strip():
        raise ContractViolation("version is empty")
    if not info.planes & (Planes.TAG | Planes.SAMPLE):
        raise ContractViolation("implements neither the tag nor the sample plane")
    if info.writes & ~_WRITABLE:
        raise ContractViolation("writes columns other than values, quality and extras")
    if info.planes & Planes.SAMPLE and (info.writes & ~info.reads):
        raise ContractViolation("writes a column it does not read")
    codes = [r.code for r in info.reasons]
    for c in codes:
        if not (isinstance(c, int) and 0 <= c <= 0xFFFF):
            raise ContractViolation(f"reason code {c!r} is not a u16")
    if len(set(codes)) != len(codes):
        raise ContractViolation("declares a reason code twice")


def _extra_bytes(value: Any) -> int:
    return 16 + (len(value.value.encode()) if hasattr(value.value, "encode") else 8)


def check_output(
    info: PluginInfo, n: int, out: BatchOutput, max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> None:
    """The output invariants (`plugin::instance::check_output`): written columns present
    exactly when declared, one entry per input sample; extras name existing samples once;
    every rejection and drop names an existing sample, at most once across both, with a
    declared reason; the whole result fits the size limit."""
    declared = {r.code for r in info.reasons}
    size = 0
    for name, column, flag, per in (
        ("values", out.values, Columns.VALUES, 8),
        ("quality", out.quality, Columns.QUALITY, 4),
    ):
        if column is None:
            if info.writes & flag:
                raise ContractViolation(f"declared `{name}` in writes but returned no {name} column")
            continue
        if not info.writes & flag:
            raise ContractViolation(f"returned a {name} column it did not declare in `writes`")
        if len(column) != n:
            raise ContractViolation(f"{name} column has {len(column)} entries for {n} samples")
        size += len(column) * per
    if out.values is not None:
        for i, v in enumerate(out.values):
            if not isinstance(v, float):
                raise ContractViolation(f"values[{i}] is {v!r}, not a float")
    if out.quality is not None:
        for i, q in enumerate(out.quality):
            if not (isinstance(q, int) and not isinstance(q, bool) and 0 <= q <= 0xFFFF_FFFF):
                raise ContractViolation(f"quality[{i}] is {q!r}, not a 32-bit status code")
    if out.extras is not None:
        if not info.writes & Columns.EXTRAS:
            raise ContractViolation("returned extras it did not declare in `writes`")
        seen_extra = set()
        for e in out.extras:
            if not 0 <= e.index < n:
                raise ContractViolation(f"extra names sample {e.index} of a {n}-sample batch")
            if e.index in seen_extra:
                raise ContractViolation(f"sample {e.index} has two extras")
            seen_extra.add(e.index)
            size += _extra_bytes(e.value)
    elif info.writes & Columns.EXTRAS:
        raise ContractViolation("declared `extras` in writes but returned none")
    decided: Dict[int, str] = {}
    for kind, entries in (("rejection", out.rejected), ("drop", out.dropped)):
        for r in entries:
            i = r.index
            if not (isinstance(i, int) and 0 <= i < n):
                raise ContractViolation(f"{kind} names sample {i} of a {n}-sample batch")
            if i in decided:
                raise ContractViolation(f"sample {i} is in a {decided[i]} and a {kind}")
            decided[i] = kind
            if r.reason not in declared:
                raise ContractViolation(f"{kind} uses undeclared reason code {r.reason}")
            size += 16 + len((getattr(r, "detail", None) or "").encode())
    if size > max_bytes:
        raise ContractViolation(f"result of {size} bytes is over the {max_bytes} byte limit")


class Harness:
    """Runs one plugin natively the way the host runs its component: `info` (checked),
    `init` with `config` (a dict, like the stage's `config` table), then the planes with the
    host's checks applied. A new Harness resets the stand-in host."""

    def __init__(
        self,
        plugin_cls: Type[Any],
        config: Optional[Mapping[str, Any]] = None,
        reference: Optional[ReferenceData] = None,
        latest: Optional[Mapping[str, LatestSample]] = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    ) -> None:
        self.host = NativeHost(reference, latest)
        sdk_host._set_backend(self.host)
        self.info: PluginInfo = plugin_cls.info()
        check_info(self.info)
        # Through JSON, as the host passes it: a config that does not survive it is refused.
        self.plugin = plugin_cls.init(Config.from_json(json.dumps(dict(config or {}))))
        self.max_output_bytes = max_output_bytes

    def on_tag(self, tag: TagInfo) -> TagDecision:
        """Tag plane for one tag (raising, as in the component, rejects the tag)."""
        return self.on_tags([tag])[0]

    def on_tags(self, tags: Sequence[TagInfo]) -> List[TagDecision]:
        out = []
        for t in tags:
            try:
                d = self.plugin.on_tag(t)
            except Exception as e:  # noqa: BLE001 - as the component does
                d = TagDecision.reject(f"plugin raised on tag {t.path!r}: {type(e).__name__}: {e}")
            if not isinstance(d, TagDecision):
                raise ContractViolation(f"on_tag returned {d!r}, not a TagDecision")
            out.append(d)
        return out

    def on_batch(self, batch: Batch) -> BatchOutput:
        """Sample plane for one batch, with the host's output checks applied. The plugin's
        exceptions propagate (in the component they fail the batch)."""
        n = len(batch)
        if not self.info.planes & Planes.SAMPLE:
            return BatchOutput()
        # The host passes only the columns the plugin reads.
        reads = self.info.reads
        batch = Batch(
            list(batch.tag_ids),
            list(batch.values) if reads & Columns.VALUES else (),
            list(batch.quality) if reads & Columns.QUALITY else (),
            list(batch.timestamps) if reads & Columns.TIMESTAMPS else (),
            [Extra(i, v) for i, v in batch.extras.items()] if reads & Columns.EXTRAS else (),
        )
        result = self.plugin.on_batch(batch)
        if result is not None:
            raise ContractViolation(f"on_batch returned {result!r}; change the batch in place")
        out = batch.into_output(self.info.writes)
        check_output(self.info, n, out, self.max_output_bytes)
        return out

    def on_command(self, cmd: Command) -> CommandDecision:
        if not self.info.planes & Planes.COMMAND:
            raise ContractViolation("the plugin does not declare the command plane")
        d = self.plugin.on_command(cmd)
        if not isinstance(d, CommandDecision):
            raise ContractViolation(f"on_command returned {d!r}, not a CommandDecision")
        if d.refused is not None and d.refused[0] not in {r.code for r in self.info.reasons}:
            raise ContractViolation(f"refusal uses undeclared reason code {d.refused[0]}")
        if d.value is not None and not isinstance(d.value, float):
            raise ContractViolation(f"allowed value {d.value!r} is not a float")
        return d

    @property
    def logs(self) -> List[LogLine]:
        return list(self.host.logs)

    def counter(self, name: str) -> int:
        return self.host.counters.get(name, 0)


def readme_stage_config(readme: str) -> Dict[str, Any]:
    """The plugin config of the first `[[stages]]` example in a README's TOML blocks, as the
    host passes it to `init`. Lets a plugin test that its documented example works."""
    import tomllib

    for block in readme.split("```toml")[1:]:
        body = block.split("```")[0]
        if "[[stages]]" in body:
            return tomllib.loads(body)["stages"][0].get("config", {})
    raise AssertionError("README has no ```toml block with a [[stages]] example")


def nan_equal(a: Sequence[float], b: Sequence[float]) -> bool:
    """Column equality where NaN equals NaN (for assertions)."""
    return len(a) == len(b) and all(
        (math.isnan(x) and math.isnan(y)) or x == y for x, y in zip(a, b)
    )


__all__ = [
    "check_info",
    "check_output",
    "ContractViolation",
    "Harness",
    "LogLine",
    "nan_equal",
    "NativeHost",
    "readme_stage_config",
    "ReferenceData",
]
