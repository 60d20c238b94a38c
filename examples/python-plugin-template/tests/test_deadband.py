"""Native tests: `Harness` plays the host (and applies the checks it applies to a component)."""

from pathlib import Path

import pytest

from ferrule_plugin import Batch, ConfigError, DataType, Drop, Quality, TagDecision, TagInfo
from ferrule_plugin.testing import Harness, readme_stage_config

from deadband import SUPPRESSED, Deadband

S = 1_000_000_000


def harness(config):
    h = Harness(Deadband, config)
    assert h.on_tag(TagInfo(0, "plant/s/a/l/d/pressure")) == TagDecision.keep()
    return h


def dropped(h, rows):
    """Indices of the dropped samples of a batch of (tag, value, ts), all good quality."""
    out = h.on_batch(Batch.from_rows([(t, v, Quality.GOOD, ts) for t, v, ts in rows]))
    assert out.values is None and out.quality is None, "writes nothing"
    assert out.rejected == [], "a filter drops, it does not dead-letter"
    assert all(d.reason == SUPPRESSED for d in out.dropped)
    return [d.index for d in out.dropped]


def test_small_changes_are_dropped():
    h = harness({"deadband": 0.5})
    rows = [(0, 10.0, S), (0, 10.2, 2 * S), (0, 10.49, 3 * S), (0, 10.5, 4 * S), (0, 10.1, 5 * S)]
    # 10.2 and 10.49 are within 0.5 of 10.0; 10.5 is not; 10.1 is within 0.5 of 10.5.
    assert dropped(h, rows) == [1, 2, 4]
    # The reference is the last *forwarded* value, across batches too.
    assert dropped(h, [(0, 10.9, 6 * S), (0, 11.0, 7 * S)]) == [0]


def test_tags_are_independent():
    h = harness({"deadband": 1.0})
    h.on_tag(TagInfo(1, "plant/s/a/l/d/temperature"))
    assert dropped(h, [(0, 1.0, S), (1, 1.2, S), (0, 1.5, 2 * S), (1, 2.5, 2 * S)]) == [2]


def test_quality_changes_and_nan_are_always_forwarded():
    h = harness({"deadband": 1.0})
    rows = [
        (0, 1.0, Quality.GOOD, S),
        (0, 1.0, Quality.UNCERTAIN, 2 * S),
        (0, 1.0, Quality.UNCERTAIN, 3 * S),
        (0, float("nan"), Quality.UNCERTAIN, 4 * S),
        (0, 1.0, Quality.UNCERTAIN, 5 * S),
    ]
    assert h.on_batch(Batch.from_rows(rows)).dropped == [Drop(2, SUPPRESSED)]


def test_heartbeat_forwards_unchanged_values():
    h = harness({"deadband": 1.0, "heartbeat_ms": 10000})
    assert dropped(h, [(0, 1.0, S), (0, 1.0, 5 * S), (0, 1.0, 11 * S), (0, 1.0, 12 * S)]) == [1, 3]


def test_per_tag_deadband_from_metadata_and_text_tags():
    h = harness({"deadband": 100.0})
    h.on_tag(TagInfo(1, "fine", metadata=[("deadband", "0.1")]))
    h.on_tag(TagInfo(2, "label", data_type=DataType.TEXT))
    nan = float("nan")
    assert dropped(h, [(1, 1.0, S), (1, 1.2, 2 * S), (2, nan, S), (2, nan, 2 * S)]) == []
    assert h.on_tag(TagInfo(3, "bad", metadata=[("deadband", "wide")])).is_reject


def test_zero_deadband_forwards_everything():
    assert dropped(harness({"deadband": 0.0}), [(0, 1.0, S), (0, 1.0, 2 * S)]) == []


@pytest.mark.parametrize(
    "config, where, message",
    [
        ({}, "deadband", "missing (required)"),
        ({"deadband": -1.0}, "", ">= 0"),
        ({"deadband": 1.0, "dead_band": 2}, "dead_band", "unknown key"),
        ({"deadband": "wide"}, "deadband", "expected a number"),
    ],
)
def test_config_is_checked(config, where, message):
    with pytest.raises(ConfigError) as e:
        Harness(Deadband, config)
    assert e.value.path == where and message in e.value.message


def test_info_declares_the_reason():
    info = Deadband.info()
    assert info.name == "py-deadband"
    assert [(r.code, r.name) for r in info.reasons] == [(SUPPRESSED, "suppressed-by-deadband")]


def test_readme_example_config_is_accepted():
    config = readme_stage_config((Path(__file__).parents[1] / "README.md").read_text())
    assert config == {"deadband": 0.5, "heartbeat_ms": 60000}
    assert dropped(harness(config), [(0, 1.0, S), (0, 1.2, 2 * S)]) == [1]
