import math

from ferrule_plugin import (
    Batch,
    Columns,
    Drop,
    Extra,
    Quality,
    Rejection,
    Signed,
    TagDecision,
    TagInfo,
    Text,
)


def test_quality_severity_bits():
    assert Quality.is_good(Quality.GOOD)
    assert Quality.is_uncertain(Quality.UNCERTAIN_EU_EXCEEDED)
    assert Quality.is_bad(Quality.BAD_OUT_OF_RANGE)
    assert not Quality.is_good(Quality.BAD)
    assert Quality.is_bad(0xC000_0000)


def test_missing_columns_are_filled_and_decisions_collected():
    batch = Batch([1, 2, 3])
    assert all(math.isnan(s.value) and Quality.is_good(s.quality) for s in batch.samples())
    for s in batch.samples():
        s.value = s.tag
        if s.tag == 2:
            s.reject(7, "two")
        if s.tag == 3:
            s.drop(9)
    out = batch.into_output(Columns.VALUES)
    assert out.values == [1.0, 2.0, 3.0]
    assert out.quality is None and out.extras is None
    assert out.rejected == [Rejection(1, 7, "two")]
    assert out.dropped == [Drop(2, 9)]


def test_extras_are_returned_only_when_written():
    batch = Batch([1, 2], [math.nan, 2.0**60], extras=[Extra(0, Text("on")), Extra(1, Signed(2**60 + 1))])
    assert batch.extras == {0: Text("on"), 1: Signed(2**60 + 1)}
    samples = list(batch.samples())
    samples[0].extra = Text("off")
    samples[1].extra = None
    assert batch.into_output(Columns.VALUES).extras is None
    assert batch.into_output(Columns.EXTRAS).extras == [Extra(0, Text("off"))]


def test_decision_builders_keep_rejections():
    assert TagDecision.reject("no").with_path("x") == TagDecision.reject("no")
    d = TagDecision.keep().with_path("a/b").enrich("k", "v")
    assert (d.path, d.enrichment, d.is_reject) == ("a/b", [("k", "v")], False)


def test_tag_info_defaults_and_metadata():
    t = TagInfo(3, "Line1.P1", metadata=[("deadband", "0.5"), ("deadband", "9")])
    assert t.vendor_path == "Line1.P1"
    assert t.meta("deadband") == "0.5"
    assert t.meta("missing") is None
