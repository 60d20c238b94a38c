"""Plugin-side types over the columnar contract (wit/plugin.wit): what a plugin sees on the tag
plane (`TagInfo` -> `TagDecision`) and on the sample plane (`Batch`). Plain Python, no
bindings: the same code runs natively under pytest and inside the component."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple, Union


class DataType(enum.IntEnum):
    """Data type of a tag as its source declares it (same order as the WIT enum)."""

    FLOAT64 = 0
    FLOAT32 = 1
    INT64 = 2
    UINT64 = 3
    INT32 = 4
    UINT32 = 5
    INT16 = 6
    UINT16 = 7
    BOOLEAN = 8
    TEXT = 9


class Columns(enum.IntFlag):
    """Bit set of sample-plane columns (`tag_ids` is always passed)."""

    NONE = 0
    VALUES = 1
    QUALITY = 2
    TIMESTAMPS = 4
    EXTRAS = 8


class Planes(enum.IntFlag):
    """Bit set of the planes a plugin implements."""

    TAG = 1
    SAMPLE = 2
    COMMAND = 4


class Quality:
    """Sample quality: an OPC UA style status code (an `int`). Bits 31..30 carry the severity
    (00 good, 01 uncertain, 10 bad); the rest is the source's own code, kept as it came."""

    GOOD = 0
    UNCERTAIN = 0x4000_0000
    BAD = 0x8000_0000
    #: OPC UA Bad_OutOfRange.
    BAD_OUT_OF_RANGE = 0x803C_0000
    #: OPC UA Uncertain_EngineeringUnitsExceeded.
    UNCERTAIN_EU_EXCEEDED = 0x4094_0000
    _SEVERITY = 0xC000_0000

    @staticmethod
    def is_good(q: int) -> bool:
        return q & Quality._SEVERITY == 0

    @staticmethod
    def is_uncertain(q: int) -> bool:
        return q & Quality._SEVERITY == 0x4000_0000

    @staticmethod
    def is_bad(q: int) -> bool:
        """Bad, or the reserved severity 11 (treated as bad)."""
        return q & 0x8000_0000 != 0


@dataclass
class TagInfo:
    """A tag as it reaches a stage on the tag plane."""

    id: int
    #: Path as it reaches this stage (vendor path, or what an earlier stage made of it).
    path: str
    #: The source's own name for the tag; never changes.
    vendor_path: str = ""
    #: Engineering unit as it reaches this stage; empty when unknown.
    unit: str = ""
    data_type: DataType = DataType.FLOAT64
    #: Name of the source (from the host config) that produced the tag.
    source: str = "test"
    #: Source metadata plus enrichment added by earlier stages.
    metadata: List[Tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.vendor_path:
            self.vendor_path = self.path

    def meta(self, key: str) -> Optional[str]:
        """First metadata value under `key`, or None."""
        for k, v in self.metadata:
            if k == key:
                return v
        return None


@dataclass
class Limits:
    """Limits a stage checks for a tag (reported to the host for status pages)."""

    low: Optional[float] = None
    high: Optional[float] = None
    max_rate_per_second: Optional[float] = None


@dataclass
class TagDecision:
    """A stage's answer for one tag: accepted (with the changes in the fields; None keeps what
    came in), or rejected with `rejected` as the reason (every sample of the tag then goes to
    the dead-letter). Build it with `keep()` / `reject()` and the `with_*` / `enrich` methods."""

    path: Optional[str] = None
    unit: Optional[str] = None
    limits: Optional[Limits] = None
    enrichment: List[Tuple[str, str]] = field(default_factory=list)
    rejected: Optional[str] = None

    @staticmethod
    def keep() -> "TagDecision":
        """Accept the tag unchanged."""
        return TagDecision()

    @staticmethod
    def reject(reason: str) -> "TagDecision":
        return TagDecision(rejected=reason)

    @property
    def is_reject(self) -> bool:
        return self.rejected is not None

    def with_path(self, path: str) -> "TagDecision":
        if not self.is_reject:
            self.path = path
        return self

    def with_unit(self, unit: str) -> "TagDecision":
        if not self.is_reject:
            self.unit = unit
        return self

    def with_limits(self, limits: Limits) -> "TagDecision":
        if not self.is_reject:
            self.limits = limits
        return self

    def enrich(self, key: str, value: str) -> "TagDecision":
        if not self.is_reject:
            self.enrichment.append((str(key), str(value)))
        return self


@dataclass(frozen=True)
class Text:
    """A text value (its `values` entry is NaN)."""

    value: str


@dataclass(frozen=True)
class Signed:
    """A signed integer a double cannot hold exactly (its `values` entry is the nearest double)."""

    value: int


@dataclass(frozen=True)
class Unsigned:
    """An unsigned integer a double cannot hold exactly."""

    value: int


ExtraValue = Union[Text, Signed, Unsigned]


@dataclass(frozen=True)
class Extra:
    """Side-channel entry for sample `index` of a batch."""

    index: int
    value: ExtraValue


@dataclass(frozen=True)
class Rejection:
    """A sample a stage refuses; goes to the dead-letter with the plugin's reason."""

    index: int
    reason: int
    detail: Optional[str] = None


@dataclass(frozen=True)
class Drop:
    """A sample a stage drops on purpose; counted per stage and reason, never dead-lettered."""

    index: int
    reason: int


@dataclass
class ConfigKey:
    name: str
    description: str
    required: bool


@dataclass
class Reason:
    code: int
    name: str
    description: str


@dataclass
class PluginInfo:
    """Self-description. A tag-plane plugin by default; chain `sample_plane(reads, writes)`,
    `command_plane()`, `config_key(...)` and `reason(...)`."""

    name: str
    version: str
    description: str = ""
    planes: Planes = Planes.TAG
    reads: Columns = Columns.NONE
    writes: Columns = Columns.NONE
    config_keys: List[ConfigKey] = field(default_factory=list)
    reasons: List[Reason] = field(default_factory=list)

    def sample_plane(self, reads: Columns, writes: Columns = Columns.NONE) -> "PluginInfo":
        """The plugin is called per batch, reading `reads` and returning `writes`."""
        self.planes |= Planes.SAMPLE
        self.reads = Columns(reads)
        self.writes = Columns(writes)
        return self

    def command_plane(self) -> "PluginInfo":
        """The plugin is called with write requests (`Plugin.on_command`)."""
        self.planes |= Planes.COMMAND
        return self

    def config_key(self, name: str, description: str, required: bool = False) -> "PluginInfo":
        self.config_keys.append(ConfigKey(name, description, required))
        return self

    def reason(self, code: int, name: str, description: str) -> "PluginInfo":
        """Declares a reason code for rejected or dropped samples and refused commands."""
        self.reasons.append(Reason(code, name, description))
        return self


@dataclass
class BatchOutput:
    """What a stage hands back for a batch (the contract's `batch-output`)."""

    values: Optional[List[float]] = None
    quality: Optional[List[int]] = None
    extras: Optional[List[Extra]] = None
    rejected: List[Rejection] = field(default_factory=list)
    dropped: List[Drop] = field(default_factory=list)


class Sample:
    """One sample of a batch: `value`, `quality` and `extra` are writable (they write into
    the batch's columns); `reject` and `drop` decide its fate."""

    __slots__ = ("_batch", "index")

    def __init__(self, batch: "Batch", index: int) -> None:
        self._batch = batch
        self.index = index

    @property
    def tag(self) -> int:
        return self._batch.tag_ids[self.index]

    @property
    def value(self) -> float:
        return self._batch.values[self.index]

    @value.setter
    def value(self, v: float) -> None:
        self._batch.values[self.index] = float(v)

    @property
    def quality(self) -> int:
        return self._batch.quality[self.index]

    @quality.setter
    def quality(self, q: int) -> None:
        self._batch.quality[self.index] = int(q)

    @property
    def timestamp_ns(self) -> int:
        return self._batch.timestamps[self.index]

    @property
    def extra(self) -> Optional[ExtraValue]:
        return self._batch.extras.get(self.index)

    @extra.setter
    def extra(self, value: Optional[ExtraValue]) -> None:
        self._batch.set_extra(self.index, value)

    def reject(self, reason: int, detail: str = "") -> None:
        """Send this sample to the dead-letter with `reason` (a declared code)."""
        self._batch.reject(self.index, reason, detail)

    def drop(self, reason: int) -> None:
        """Drop this sample on purpose (filter, deadband): no dead-letter, counted."""
        self._batch.drop(self.index, reason)

    def __repr__(self) -> str:
        return (
            f"Sample(index={self.index}, tag={self.tag}, value={self.value!r}, "
            f"quality={self.quality:#x}, timestamp_ns={self.timestamp_ns})"
        )


def _own(column: Sequence) -> list:
    return column if type(column) is list else list(column)


class Batch:
    """A batch on the sample plane: columns of equal length as plain lists. A column the
    plugin did not declare in `reads` arrives empty from the host and is filled here (NaN
    values, good quality, time 0), so every column always has one entry per sample.

    Fast path for value-only transforms: work on `batch.tag_ids` and `batch.values` directly.
    `extras` is a dict from sample index to `Text`/`Signed`/`Unsigned`."""

    __slots__ = ("tag_ids", "values", "quality", "timestamps", "extras", "_rejected", "_dropped")

    def __init__(
        self,
        tag_ids: Sequence[int],
        values: Sequence[float] = (),
        quality: Sequence[int] = (),
        timestamps: Sequence[int] = (),
        extras: Sequence[Extra] = (),
    ) -> None:
        # Lists are taken as they are (no copy: the component hands over fresh ones per call).
        n = len(tag_ids)
        self.tag_ids: List[int] = _own(tag_ids)
        self.values: List[float] = _own(values) if len(values) == n else [math.nan] * n
        self.quality: List[int] = _own(quality) if len(quality) == n else [0] * n
        self.timestamps: List[int] = _own(timestamps) if len(timestamps) == n else [0] * n
        self.extras = {e.index: e.value for e in extras}
        self._rejected: List[Rejection] = []
        self._dropped: List[Drop] = []

    @staticmethod
    def from_rows(
        rows: Sequence[Tuple[int, float, int, int]], extras: Sequence[Extra] = ()
    ) -> "Batch":
        """A batch from `(tag, value, quality, timestamp_ns)` rows; for tests."""
        return Batch(
            [r[0] for r in rows],
            [float(r[1]) for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
            extras,
        )

    def __len__(self) -> int:
        return len(self.tag_ids)

    def samples(self) -> Iterator[Sample]:
        """Samples in order, with writable value, quality and extra."""
        for i in range(len(self.tag_ids)):
            yield Sample(self, i)

    def reject(self, index: int, reason: int, detail: str = "") -> None:
        """Refuse sample `index` with `reason`: it goes to the dead-letter."""
        self._rejected.append(Rejection(index, reason, detail or None))

    def drop(self, index: int, reason: int) -> None:
        """Drop sample `index` on purpose with `reason`: counted, never dead-lettered."""
        self._dropped.append(Drop(index, reason))

    def set_extra(self, index: int, value: Optional[ExtraValue]) -> None:
        """Sets (or with None removes) the extra of sample `index`; returned only when the
        plugin declares `Columns.EXTRAS` in `writes`."""
        if value is None:
            self.extras.pop(index, None)
        elif isinstance(value, (Text, Signed, Unsigned)):
            self.extras[index] = value
        else:
            raise TypeError(f"extra of sample {index} must be Text, Signed or Unsigned, got {value!r}")

    @property
    def rejected(self) -> List[Rejection]:
        return list(self._rejected)

    @property
    def dropped(self) -> List[Drop]:
        return list(self._dropped)

    def into_output(self, writes: Columns) -> BatchOutput:
        """The output columns the plugin declared it writes, plus rejections and drops."""
        return BatchOutput(
            values=self.values if writes & Columns.VALUES else None,
            quality=self.quality if writes & Columns.QUALITY else None,
            extras=[Extra(i, v) for i, v in sorted(self.extras.items())]
            if writes & Columns.EXTRAS
            else None,
            rejected=self._rejected,
            dropped=self._dropped,
        )


@dataclass
class Command:
    """A write request on its way to a device (the command plane)."""

    id: str
    tag_id: int
    path: str
    value: float
    extra: Optional[ExtraValue] = None
    expected_current: Optional[float] = None
    requester: str = ""
    deadline: int = 0
    dry_run: bool = False


@dataclass
class CommandDecision:
    """A stage's answer to a command: allow (optionally with the value in the unit the stage
    receives) or refuse with a declared reason code."""

    value: Optional[float] = None
    refused: Optional[Tuple[int, str]] = None

    @staticmethod
    def allow(value: Optional[float] = None) -> "CommandDecision":
        return CommandDecision(value=value)

    @staticmethod
    def refuse(reason: int, detail: str) -> "CommandDecision":
        return CommandDecision(refused=(reason, detail))

    @property
    def is_refused(self) -> bool:
        return self.refused is not None


@dataclass
class LatestSample:
    """The latest sample the host holds for a tag (`host.latest`)."""

    value: float
    quality: int
    timestamp: int
    extra: Optional[ExtraValue] = None
