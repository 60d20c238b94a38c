import math
import re

import pytest

from ferrule_plugin import (
    Batch,
    BatchOutput,
    Columns,
    Command,
    CommandDecision,
    Config,
    Drop,
    Extra,
    LatestSample,
    Level,
    Plugin,
    PluginInfo,
    Quality,
    Rejection,
    TagDecision,
    TagInfo,
    Text,
    export,
    host,
)
from ferrule_plugin.testing import (
    ContractViolation,
    Harness,
    ReferenceData,
    check_info,
    check_output,
    readme_stage_config,
)


class Echo(Plugin):
    """Does whatever the test config tells it, to exercise the harness's checks."""

    @classmethod
    def info(cls):
        return (
            PluginInfo("echo", "1.0.0")
            .sample_plane(Columns.VALUES | Columns.QUALITY | Columns.EXTRAS, Columns.VALUES)
            .command_plane()
            .reason(1, "one", "first")
            .reason(2, "two", "second")
        )

    def __init__(self, config: Config):
        self.mode = config.raw.get("mode", "ok")

    def on_tag(self, tag):
        if tag.path == "boom":
            raise KeyError("no such asset")
        row = host.lookup("assets", tag.path)
        host.counter_add("tags")
        host.log(Level.INFO, "tag seen", [("path", tag.path)])
        d = TagDecision.keep()
        for k, v in row or []:
            d.enrich(k, v)
        return d

    def on_batch(self, batch):
        if self.mode == "int-value":
            batch.values[0] = 1
        elif self.mode == "short":
            batch.values = batch.values[:-1]
        elif self.mode == "reject-and-drop":
            batch.reject(0, 1, "bad")
            batch.drop(0, 2)
        elif self.mode == "undeclared":
            batch.drop(0, 99)
        elif self.mode == "return":
            return BatchOutput()
        elif self.mode == "raise":
            raise RuntimeError("bad batch")
        else:
            for s in batch.samples():
                s.value = s.value * 10
                if s.extra is not None:
                    s.drop(2)

    def on_command(self, cmd):
        latest = host.latest(cmd.path)
        if latest is None or latest.value > 5:
            return CommandDecision.refuse(1, "interlock")
        return CommandDecision.allow(cmd.value / 10)


def rows(*values):
    return Batch.from_rows([(i, v, Quality.GOOD, i) for i, v in enumerate(values)])


def test_planes_and_host_calls_go_through_the_stand_in():
    h = Harness(Echo, reference=ReferenceData().row("assets", "p1", {"site": "s1"}))
    assert h.on_tag(TagInfo(0, "p1")).enrichment == [("site", "s1")]
    assert h.on_tag(TagInfo(1, "p2")) == TagDecision.keep()
    assert h.counter("tags") == 2
    assert h.logs[0].level == Level.INFO and h.logs[0].fields == [("path", "p1")]
    batch = Batch([0, 1], [1.0, math.nan], [0, 0], [1, 2], [Extra(1, Text("x"))])
    out = h.on_batch(batch)
    assert out.values[0] == 10.0 and math.isnan(out.values[1])
    assert out.dropped == [Drop(1, 2)] and out.quality is None and out.extras is None


def test_raising_on_a_tag_rejects_it_naming_the_error():
    d = Harness(Echo).on_tag(TagInfo(0, "boom"))
    assert d.is_reject and "KeyError" in d.rejected and "boom" in d.rejected


@pytest.mark.parametrize(
    "mode, message",
    [
        ("int-value", "values[0] is 1, not a float"),
        ("short", "values column has 1 entries for 2 samples"),
        ("reject-and-drop", "sample 0 is in a rejection and a drop"),
        ("undeclared", "drop uses undeclared reason code 99"),
        ("return", "change the batch in place"),
    ],
)
def test_the_host_checks_apply(mode, message):
    h = Harness(Echo, {"mode": mode})
    with pytest.raises(ContractViolation, match=re.escape(message)):
        h.on_batch(rows(1.0, 2.0))


def test_plugin_errors_propagate():
    with pytest.raises(RuntimeError, match="bad batch"):
        Harness(Echo, {"mode": "raise"}).on_batch(rows(1.0))


def test_command_plane_with_latest_values():
    h = Harness(Echo, latest={"a": LatestSample(3.0, 0, 1)})
    cmd = Command("c1", 0, "a", 50.0)
    assert h.on_command(cmd) == CommandDecision.allow(5.0)
    assert h.on_command(Command("c2", 1, "b", 1.0)).refused == (1, "interlock")


def test_check_info_mirrors_the_host():
    check_info(Echo.info())
    with pytest.raises(ContractViolation, match="twice"):
        check_info(PluginInfo("x", "1").reason(1, "a", "").reason(1, "b", ""))
    with pytest.raises(ContractViolation, match="does not read"):
        check_info(PluginInfo("x", "1").sample_plane(Columns.VALUES, Columns.QUALITY))
    with pytest.raises(ContractViolation, match="name is empty"):
        check_info(PluginInfo(" ", "1"))


def test_check_output_limits_size_and_columns():
    info = PluginInfo("x", "1").sample_plane(Columns.VALUES, Columns.NONE).reason(1, "r", "")
    with pytest.raises(ContractViolation, match="did not declare"):
        check_output(info, 1, BatchOutput(values=[1.0]))
    big = BatchOutput(rejected=[Rejection(0, 1, "x" * 100)])
    with pytest.raises(ContractViolation, match="over the 50 byte limit"):
        check_output(info, 1, big, max_bytes=50)
    with pytest.raises(ContractViolation, match="names sample 3 of a 2-sample batch"):
        check_output(info, 2, BatchOutput(dropped=[Drop(3, 1)]))


def test_unread_columns_are_not_passed():
    seen = {}

    class Reader(Plugin):
        @classmethod
        def info(cls):
            return PluginInfo("r", "1").sample_plane(Columns.VALUES)

        def on_batch(self, batch):
            seen["q"] = list(batch.quality)
            seen["t"] = list(batch.timestamps)

    Harness(Reader).on_batch(Batch.from_rows([(0, 1.0, Quality.BAD, 7)]))
    assert seen == {"q": [Quality.GOOD], "t": [0]}


def test_export_natively_is_a_placeholder():
    t = export(Echo)
    assert t.plugin is Echo
    with pytest.raises(RuntimeError, match="Harness"):
        t()
    with pytest.raises(TypeError):
        export(object)


def test_readme_stage_config():
    readme = "x\n```toml\n[[stages]]\nname = \"a\"\nconfig = { k = 1.5 }\n```\n"
    assert readme_stage_config(readme) == {"k": 1.5}
