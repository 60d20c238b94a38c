"""# Rate-of-change alarm (a Ferrule plugin in Python)

Owns the **tag plane** and the **sample plane** (reads values, quality and timestamps; writes
quality). It watches how fast a tag's value changes, per second of source time, and raises
an alarm on samples that change faster than the tag's limit.

* Tag plane: the tag's limit is the `max_per_second` of the first rule whose `match` fits its
  path (`*` stands for one path segment); a tag no rule fits is not watched and kept
  unchanged. The device's row in the host's reference data (table `table`, key the path's
  first five segments `plant/<site>/<area>/<line>/<device>`, through `host.lookup`) gives the
  asset's `criticality` and `asset_id`. A watched tag is enriched with
  `rate_alarm.max_per_second`, `rate_alarm.criticality` (`unknown` without a row) and, when
  known, `rate_alarm.asset_id`, and reports the limit as its `max_rate_per_second`. With
  `criticality` set, only tags of assets with one of those criticalities are watched.
* Sample plane: a sample of a watched tag is evaluated when its quality is good, its value
  a number and its source time after the last evaluated one; its rate is
  `|value - previous| / (time - previous time)` against the last evaluated sample of the
  tag. Over the limit, `action` decides: `flag` (default) sets its quality to uncertain
  (0x40000000), `reject` sends it to the dead-letter, `drop` drops it (counted, no
  dead-letter); reason code 1, `rate-exceeded`. Counters: `alarms` and
  `alarms.<criticality>`; a log line when a tag goes into alarm and when it clears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import List, Literal, Optional

from ferrule_plugin import (
    Batch,
    Columns,
    Config,
    Level,
    Limits,
    Plugin,
    PluginInfo,
    Quality,
    TagDecision,
    TagInfo,
    export,
    host,
)

#: Reason code of a sample over its tag's rate limit.
RATE_EXCEEDED = 1
#: Quality of a flagged sample: uncertain.
FLAGGED = Quality.UNCERTAIN
#: Number of path segments that name a device (`plant/<site>/<area>/<line>/<device>`).
DEVICE_SEGMENTS = 5
_NOT_GOOD = 0xC000_0000


@dataclass
class Rule:
    #: Path pattern, `*` for one segment (e.g. `plant/*/*/*/*/pressure`).
    match: str
    #: Largest accepted change per second of source time, in the tag's unit (> 0).
    max_per_second: float

    def __post_init__(self) -> None:
        if not self.max_per_second > 0:
            raise ValueError(f"max_per_second must be > 0, got {self.max_per_second}")
        if not self.match.strip():
            raise ValueError("match must not be empty")


@dataclass
class RateAlarmConfig:
    #: Rules in order; the first that fits a tag's path gives its limit.
    rules: List[Rule]
    #: What happens to a sample over the limit.
    action: Literal["flag", "reject", "drop"] = "flag"
    #: Host reference-data table with the assets (key: the device path).
    table: str = "assets"
    #: Watch only tags of assets with these criticalities (none: every tag a rule fits).
    criticality: Optional[List[str]] = None
    #: Log when a tag goes into alarm and when it clears.
    log_transitions: bool = True


def segment_match(pattern: str, path: str) -> bool:
    """`*` matches exactly one segment; other segments match as shell patterns."""
    ps, ss = pattern.split("/"), path.split("/")
    return len(ps) == len(ss) and all(fnmatchcase(s, p) for p, s in zip(ps, ss))


def device_key(path: str) -> str:
    return "/".join(path.split("/")[:DEVICE_SEGMENTS])


class RateAlarm(Plugin):
    VERSION = "0.1.0"

    @classmethod
    def info(cls) -> PluginInfo:
        return (
            PluginInfo(
                "rate-alarm",
                cls.VERSION,
                "Flags, rejects or drops samples that change faster than their tag's limit; "
                "enriches watched tags with the asset's criticality from reference data.",
            )
            .sample_plane(Columns.VALUES | Columns.QUALITY | Columns.TIMESTAMPS, Columns.QUALITY)
            .config_key("rules", "[{match, max_per_second}], first fit wins", True)
            .config_key("action", "flag (default) | reject | drop", False)
            .config_key("table", "reference-data table of the assets (default assets)", False)
            .config_key("criticality", "watch only assets of these criticalities", False)
            .config_key("log_transitions", "log entering and leaving alarm (default true)", False)
            .reason(RATE_EXCEEDED, "rate-exceeded", "Changed faster than the tag's max_per_second.")
        )

    def __init__(self, config: Config) -> None:
        self.config = config.parse(RateAlarmConfig)
        # Per tag id (dense): the limit (None: not watched), the last evaluated value and
        # time (-1: none yet), whether it is in alarm, its criticality and path.
        self.limit: List[Optional[float]] = []
        self.last_value: List[float] = []
        self.last_ts: List[int] = []
        self.in_alarm: List[bool] = []
        self.criticality: List[str] = []
        self.path: List[str] = []

    def _grow(self, n: int) -> None:
        extra = n - len(self.limit)
        if extra > 0:
            self.limit += [None] * extra
            self.last_value += [0.0] * extra
            self.last_ts += [-1] * extra
            self.in_alarm += [False] * extra
            self.criticality += [""] * extra
            self.path += [""] * extra

    def on_tag(self, tag: TagInfo) -> TagDecision:
        self._grow(tag.id + 1)
        i = tag.id
        # Called again after a swap or an upstream change: start the tag afresh.
        self.limit[i] = None
        self.last_ts[i] = -1
        self.in_alarm[i] = False
        self.path[i] = tag.path
        rule = next((r for r in self.config.rules if segment_match(r.match, tag.path)), None)
        if rule is None:
            return TagDecision.keep()
        asset = dict(host.lookup(self.config.table, device_key(tag.path)) or [])
        criticality = asset.get("criticality", "unknown")
        if self.config.criticality is not None and criticality not in self.config.criticality:
            return TagDecision.keep()
        self.limit[i] = rule.max_per_second
        self.criticality[i] = criticality
        d = (
            TagDecision.keep()
            .with_limits(Limits(max_rate_per_second=rule.max_per_second))
            .enrich("rate_alarm.max_per_second", repr(rule.max_per_second))
            .enrich("rate_alarm.criticality", criticality)
        )
        if "asset_id" in asset:
            d.enrich("rate_alarm.asset_id", asset["asset_id"])
        return d

    def on_batch(self, batch: Batch) -> None:
        tag_ids, values, quality, ts = batch.tag_ids, batch.values, batch.quality, batch.timestamps
        if tag_ids:
            self._grow(max(tag_ids) + 1)
        limit, last_value, last_ts, in_alarm = self.limit, self.last_value, self.last_ts, self.in_alarm
        action = self.config.action
        alarms: dict = {}
        for i, t in enumerate(tag_ids):
            lim = limit[t]
            if lim is None or quality[i] & _NOT_GOOD:
                continue
            v = values[i]
            if v != v:  # NaN
                continue
            now = ts[i]
            before = last_ts[t]
            if before >= 0:
                if now <= before:
                    continue
                rate = abs(v - last_value[t]) * 1e9 / (now - before)
                over = rate > lim
                if over:
                    c = self.criticality[t]
                    alarms[c] = alarms.get(c, 0) + 1
                    if action == "flag":
                        quality[i] = FLAGGED
                    elif action == "reject":
                        batch.reject(i, RATE_EXCEEDED, f"changed {rate:.6g}/s, limit {lim:g}/s")
                    else:
                        batch.drop(i, RATE_EXCEEDED)
                if over != in_alarm[t]:
                    in_alarm[t] = over
                    self._transition(t, over, rate, lim)
            last_value[t] = v
            last_ts[t] = now
        if alarms:
            host.counter_add("alarms", sum(alarms.values()))
            for c, n in alarms.items():
                host.counter_add(f"alarms.{c}", n)

    def _transition(self, t: int, over: bool, rate: float, lim: float) -> None:
        if not self.config.log_transitions:
            return
        fields = [("path", self.path[t]), ("rate", f"{rate:.6g}"), ("limit", f"{lim:g}")]
        if over:
            host.log(Level.WARN, "rate alarm", fields + [("criticality", self.criticality[t])])
        else:
            host.log(Level.INFO, "rate alarm cleared", fields)


Transform = export(RateAlarm)
