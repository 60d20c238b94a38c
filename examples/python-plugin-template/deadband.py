"""# Deadband filter: a template for your own Ferrule plugin in Python

Copy this directory, rename the module and the plugin, and replace the logic (README.md). It
is small but real: it drops samples that changed less than a `deadband` since the last value
forwarded for the same tag, so slowly drifting or noisy signals cost less to store and send.

It owns:
* the **tag plane**: each tag gets its deadband (the config's, or the tag's own metadata key
  `deadband` when a source provides one); `text` tags are never filtered;
* the **sample plane** (reads values, quality and timestamps, writes nothing): a sample is
  forwarded when it is the tag's first, when its quality differs from the last forwarded
  one, when `|value - last forwarded value| >= deadband`, or when `heartbeat_ms` of source
  time passed since the last forwarded sample; otherwise it is dropped with reason
  `1 suppressed-by-deadband`. NaN values are always forwarded.

Dropped samples are counted by the host per stage and reason; they never reach the
dead-letter, which stays for real errors.
"""

from __future__ import annotations

# The SDK: the Plugin base class, the tag-plane and sample-plane types, `host` (log,
# counters, reference data) and `export`.
from dataclasses import dataclass
from typing import List, Optional, Tuple

from ferrule_plugin import (
    Batch,
    Columns,
    Config,
    DataType,
    Plugin,
    PluginInfo,
    TagDecision,
    TagInfo,
    export,
)

#: Reason code for the samples this plugin holds back. Declared in `info()`; the host refuses
#: a drop or rejection whose code was not declared.
SUPPRESSED = 1


@dataclass
class DeadbandConfig:
    """The stage's `config` table. `Config.parse` checks types, refuses unknown keys and names
    the key at fault (`deadband: expected a number, got a string ("wide")`)."""

    #: Smallest change (in the tag's unit, absolute) that is forwarded; >= 0, 0 forwards all.
    deadband: float
    #: Forward a sample anyway when this many ms of source time passed since the last
    #: forwarded one, so consumers see the tag is alive. None by default.
    heartbeat_ms: Optional[int] = None

    def __post_init__(self) -> None:
        # A ValueError here refuses the config, reported at this table's path.
        if not self.deadband >= 0:  # also refuses NaN
            raise ValueError(f"deadband must be >= 0, got {self.deadband}")
        if self.heartbeat_ms is not None and self.heartbeat_ms <= 0:
            raise ValueError(f"heartbeat_ms must be > 0, got {self.heartbeat_ms}")


class Deadband(Plugin):
    @classmethod
    def info(cls) -> PluginInfo:
        """Self-description, read by the host (and `ferrule plugin inspect`) before `init`."""
        return (
            PluginInfo(
                "py-deadband",
                "0.1.0",
                "Drops samples that changed less than a deadband since the last forwarded one.",
            )
            .sample_plane(Columns.VALUES | Columns.QUALITY | Columns.TIMESTAMPS, Columns.NONE)
            .config_key("deadband", "Smallest absolute change that is forwarded (>= 0).", True)
            .config_key("heartbeat_ms", "Forward anyway after this many ms of source time.", False)
            .reason(
                SUPPRESSED,
                "suppressed-by-deadband",
                "Changed less than the deadband since the last forwarded value of the tag.",
            )
        )

    def __init__(self, config: Config) -> None:
        """Parse and check the config; raising here refuses the plugin (the running version,
        if any, stays)."""
        cfg = config.parse(DeadbandConfig)
        self.deadband = cfg.deadband
        self.heartbeat_ns = None if cfg.heartbeat_ms is None else cfg.heartbeat_ms * 1_000_000
        # Per tag id (ids are dense): its deadband (None never filters) and the last forwarded
        # (value, quality, timestamp), or None.
        self.band: List[Optional[float]] = []
        self.last: List[Optional[Tuple[float, int, int]]] = []

    def _grow(self, n: int) -> None:
        if n > len(self.band):
            self.band += [self.deadband] * (n - len(self.band))
            self.last += [None] * (n - len(self.last))

    def on_tag(self, tag: TagInfo) -> TagDecision:
        """Tag plane: called once per tag (and again after a swap or an upstream change)."""
        band: Optional[float] = self.deadband
        if tag.data_type == DataType.TEXT:
            band = None
        elif (text := tag.meta("deadband")) is not None:
            try:
                band = float(text)
            except ValueError:
                band = -1.0
            if not band >= 0:
                return TagDecision.reject(
                    f"tag '{tag.path}': metadata deadband '{text}' is not a number >= 0"
                )
        self._grow(tag.id + 1)
        self.band[tag.id] = band
        self.last[tag.id] = None  # forget the last value: the unit may have changed upstream
        return TagDecision.keep()

    def on_batch(self, batch: Batch) -> None:
        """Sample plane: one call per batch. Work on the columns; drop through the batch."""
        if batch.tag_ids:
            self._grow(max(batch.tag_ids) + 1)
        band, last, heartbeat = self.band, self.last, self.heartbeat_ns
        values, quality, ts = batch.values, batch.quality, batch.timestamps
        for i, t in enumerate(batch.tag_ids):
            v, q, now = values[i], quality[i], ts[i]
            prev = last[t]
            d = band[t]
            if d is None or prev is None:
                forward = True
            else:
                change = abs(v - prev[0])
                forward = (
                    q != prev[1]
                    or change != change  # NaN now or before: always forward
                    or change >= d
                    or (heartbeat is not None and now - prev[2] >= heartbeat)
                )
            if forward:
                last[t] = (v, q, now)
            else:
                batch.drop(i, SUPPRESSED)


# Exports `Deadband` as the component's `transform` interface when built with
# `python -m ferrule_plugin build`; natively it is a placeholder, so pytest can import this.
Transform = export(Deadband)
