import pytest

from ferrule_plugin import Batch, ConfigError, Drop, Level, Limits, Quality, Rejection, TagInfo
from ferrule_plugin.testing import Harness, ReferenceData, readme_stage_config
from pathlib import Path

from rate_alarm import FLAGGED, RATE_EXCEEDED, RateAlarm, segment_match

S = 1_000_000_000
PRESSURE = "plant/site1/area1/line1/press1/pressure"
TEMPERATURE = "plant/site1/area1/line1/press1/temperature"
FLOW = "plant/site1/area2/line1/pump9/flow"
ASSETS = (
    ReferenceData()
    .row("assets", "plant/site1/area1/line1/press1", {"asset_id": "A-1", "criticality": "high"})
    .row("assets", "plant/site1/area2/line1/pump9", {"asset_id": "A-9", "criticality": "low"})
)
RULES = [
    {"match": "plant/*/*/*/*/pressure", "max_per_second": 10.0},
    {"match": "plant/*/*/*/*/*", "max_per_second": 100.0},
]


def harness(**config):
    h = Harness(RateAlarm, {"rules": RULES, **config}, reference=ASSETS)
    h.on_tag(TagInfo(0, PRESSURE))
    h.on_tag(TagInfo(1, TEMPERATURE))
    return h


def good(rows):
    return Batch.from_rows([(t, v, Quality.GOOD, ts) for t, v, ts in rows])


def flagged(out):
    return [i for i, q in enumerate(out.quality) if q == FLAGGED]


def test_flags_samples_faster_than_the_limit():
    h = harness()
    # Pressure: +5 in 1 s ok, +20 in 1 s over 10/s, -5 in 0.25 s = 20/s over, +1 in 1 s ok.
    out = h.on_batch(good([(0, 100.0, S), (0, 105.0, 2 * S), (0, 125.0, 3 * S), (0, 120.0, 3 * S + S // 4), (0, 121.0, 4 * S + S // 4)]))
    assert flagged(out) == [2, 3]
    assert out.rejected == [] and out.dropped == []
    # The temperature's rule is the second one (100/s); state carries across batches.
    out = h.on_batch(good([(1, 0.0, S), (1, 99.0, 2 * S), (0, 150.0, 5 * S + S // 4), (1, 300.0, 3 * S)]))
    assert flagged(out) == [2, 3]
    assert h.counter("alarms") == 4 and h.counter("alarms.high") == 4


def test_bad_quality_nan_and_old_samples_are_not_evaluated():
    h = harness()
    batch = Batch.from_rows(
        [
            (0, 0.0, Quality.GOOD, S),
            (0, 1000.0, Quality.BAD, 2 * S),  # bad: skipped, kept as it came
            (0, float("nan"), Quality.GOOD, 3 * S),  # NaN: skipped
            (0, 1000.0, Quality.GOOD, S),  # not after the last evaluated: skipped
            (0, 5.0, Quality.GOOD, 4 * S),  # 5 in 3 s against the first sample: ok
            (0, 50.0, Quality.UNCERTAIN, 5 * S),  # uncertain: skipped
            (0, 100.0, Quality.GOOD, 6 * S),  # 95 in 2 s: over
        ]
    )
    out = h.on_batch(batch)
    assert out.quality == [0, Quality.BAD, 0, 0, 0, Quality.UNCERTAIN, FLAGGED]


def test_reject_and_drop_actions():
    rows = [(0, 0.0, S), (0, 50.0, 2 * S), (0, 51.0, 3 * S)]
    out = harness(action="reject").on_batch(good(rows))
    assert out.rejected == [Rejection(1, RATE_EXCEEDED, "changed 50/s, limit 10/s")]
    assert flagged(out) == [] and out.dropped == []
    out = harness(action="drop").on_batch(good(rows))
    assert out.dropped == [Drop(1, RATE_EXCEEDED)] and out.rejected == []


def test_tags_are_enriched_from_reference_data():
    h = Harness(RateAlarm, {"rules": RULES}, reference=ASSETS)
    d = h.on_tag(TagInfo(0, PRESSURE))
    assert d.enrichment == [
        ("rate_alarm.max_per_second", "10.0"),
        ("rate_alarm.criticality", "high"),
        ("rate_alarm.asset_id", "A-1"),
    ]
    assert d.limits == Limits(max_rate_per_second=10.0)
    d = h.on_tag(TagInfo(1, "plant/site9/area1/line1/oven1/temperature"))
    assert d.enrichment == [("rate_alarm.max_per_second", "100.0"), ("rate_alarm.criticality", "unknown")]
    # No rule fits: not watched, unchanged, and never flagged.
    h2 = Harness(RateAlarm, {"rules": RULES[:1]}, reference=ASSETS)
    assert h2.on_tag(TagInfo(2, FLOW)).enrichment == []
    out = h2.on_batch(good([(2, 0.0, S), (2, 1e9, 2 * S)]))
    assert flagged(out) == []


def test_criticality_filter_uses_the_asset_row():
    h = Harness(RateAlarm, {"rules": RULES, "criticality": ["high"]}, reference=ASSETS)
    assert h.on_tag(TagInfo(0, PRESSURE)).enrichment != []
    assert h.on_tag(TagInfo(1, FLOW)).enrichment == []
    out = h.on_batch(good([(0, 0.0, S), (1, 0.0, S), (0, 500.0, 2 * S), (1, 500.0, 2 * S)]))
    assert flagged(out) == [2]


def test_transitions_are_logged_once_each_way():
    h = harness()
    h.on_batch(good([(0, 0.0, S), (0, 50.0, 2 * S), (0, 100.0, 3 * S), (0, 101.0, 4 * S)]))
    lines = [(l.level, l.message, dict(l.fields)["path"]) for l in h.logs]
    assert lines == [(Level.WARN, "rate alarm", PRESSURE), (Level.INFO, "rate alarm cleared", PRESSURE)]
    h = harness(log_transitions=False)
    h.on_batch(good([(0, 0.0, S), (0, 50.0, 2 * S)]))
    assert h.logs == []


def test_a_tag_seen_again_starts_afresh():
    h = harness()
    h.on_batch(good([(0, 0.0, S)]))
    h.on_tag(TagInfo(0, PRESSURE))
    out = h.on_batch(good([(0, 1000.0, 2 * S), (0, 1001.0, 3 * S)]))
    assert flagged(out) == []


@pytest.mark.parametrize(
    "config, where",
    [
        ({"rules": [{"match": "a", "max_per_second": 1}, {"match": "b", "max_per_second": "x"}]}, "rules[1].max_per_second"),
        ({"rules": [{"match": "a", "max_per_second": 0}]}, "rules[0]"),
        ({"rules": [{"match": "a", "max_per_second": 1, "max": 2}]}, "rules[0].max"),
        ({"rules": [], "action": "alarm"}, "action"),
        ({}, "rules"),
    ],
)
def test_config_errors_name_the_key(config, where):
    with pytest.raises(ConfigError) as e:
        Harness(RateAlarm, config)
    assert e.value.path == where


def test_segment_match():
    assert segment_match("plant/*/*/*/*/pressure", PRESSURE)
    assert not segment_match("plant/*/*/*/pressure", PRESSURE)
    assert segment_match("plant/site1/*/line?/*/*", PRESSURE)


def test_readme_example_config_is_accepted():
    config = readme_stage_config((Path(__file__).parents[1] / "README.md").read_text())
    assert config["action"] == "flag" and len(config["rules"]) == 2
    h = Harness(RateAlarm, config, reference=ASSETS)
    h.on_tag(TagInfo(0, PRESSURE))
    out = h.on_batch(good([(0, 0.0, S), (0, 6000.0, 2 * S)]))
    assert flagged(out) == [1]
