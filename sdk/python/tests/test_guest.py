"""The component glue (`ferrule_plugin._guest`) against the bindings componentize-py generates
from the contract's WIT, run natively: what a plugin returns is converted to the WIT types,
what the host passes is converted to the SDK's, errors become the contract's `err` values.
For every contract version in wit/ (0.2.0 with drops and extras writes, and 0.1.0)."""

import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ferrule_plugin import (
    Batch,
    Columns,
    CommandDecision,
    ConfigError,
    Plugin,
    PluginInfo,
    Quality,
    TagDecision,
    Text,
    build,
    host,
)

WIT_DIR = build.DEFAULT_WIT
CONTRACTS = sorted({p.parent for p in WIT_DIR.rglob("plugin.wit")})


class Probe(Plugin):
    @classmethod
    def info(cls):
        return (
            PluginInfo("probe", "1.2.3", "glue probe")
            .sample_plane(Columns.VALUES | Columns.QUALITY | Columns.EXTRAS, Columns.VALUES | Columns.QUALITY)
            .config_key("k", "a key", True)
            .reason(4, "four", "the fourth")
        )

    def __init__(self, config):
        if "k" not in config.raw:
            raise ConfigError("k", "missing (required)")
        self.k = config.raw["k"]

    def on_tag(self, tag):
        if tag.path == "raise":
            raise KeyError("boom")
        if tag.path == "reject":
            return TagDecision.reject("no")
        host.counter_add("seen")
        return TagDecision.keep().with_unit(tag.unit + "!").enrich("dt", tag.data_type.name)

    def on_batch(self, batch: Batch):
        if self.k == "fail":
            raise ZeroDivisionError("division by zero")
        for s in batch.samples():
            s.value = s.value * 2
            if isinstance(s.extra, Text):
                s.quality = Quality.UNCERTAIN
            if s.tag == 9:
                s.reject(4, "nine")


@pytest.fixture(params=CONTRACTS, ids=lambda p: p.name)
def glue(request, tmp_path, monkeypatch):
    out = tmp_path / "bindings"
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, componentize_py; sys.argv[0] = 'componentize-py'; sys.exit(componentize_py.script())",
            "-d",
            str(request.param),
            "-w",
            "plugin",
            "bindings",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.syspath_prepend(str(out))
    for name in list(sys.modules):
        if name.startswith(("wit_world", "componentize_py_types", "ferrule_plugin._guest")):
            del sys.modules[name]
    guest = importlib.import_module("ferrule_plugin._guest")
    wit = importlib.import_module("wit_world.imports.types")
    saved = host._backend
    yield guest, wit, guest.make_transform(Probe)()
    host._set_backend(saved)


def test_describe_converts_the_self_description(glue):
    guest, wit, t = glue
    info = t.describe()
    assert (info.name, info.version, info.description) == ("probe", "1.2.3", "glue probe")
    assert info.planes == wit.Planes.TAG | wit.Planes.SAMPLE
    assert info.reads == wit.Columns.VALUES | wit.Columns.QUALITY | wit.Columns.EXTRAS
    assert info.writes == wit.Columns.VALUES | wit.Columns.QUALITY
    assert [(r.code, r.name) for r in info.reasons] == [(4, "four")]
    assert [(k.name, k.required) for k in info.config_keys] == [("k", True)]


def test_init_errors_are_err_values_naming_the_key(glue):
    guest, wit, t = glue
    from componentize_py_types import Err

    with pytest.raises(Err) as e:
        t.init("{}")
    assert e.value.value == "invalid config at `k`: missing (required)"
    with pytest.raises(Err) as e:
        t.init("{oops")
    assert "not valid JSON" in e.value.value
    t.init('{"k": 1}')


def test_tag_plane_conversions(glue, monkeypatch):
    guest, wit, t = glue
    counted = []
    monkeypatch.setattr(guest.wit_host, "counter_add", lambda name, delta: counted.append((name, delta)))
    tags = [
        wit.TagInfo(0, "a", "A", "bar", wit.DataType.FLOAT32, "src", [("m", "1")]),
        wit.TagInfo(1, "reject", "R", "", wit.DataType.TEXT, "src", []),
        wit.TagInfo(2, "raise", "X", "", wit.DataType.INT16, "src", []),
    ]
    # Before init: every tag refused, nothing raised.
    assert all(isinstance(d, wit.TagDecision_Reject) for d in t.on_tags(tags))
    t.init('{"k": 1}')
    d = t.on_tags(tags)
    assert isinstance(d[0], wit.TagDecision_Accept)
    assert d[0].value.unit == "bar!" and d[0].value.enrichment == [("dt", "FLOAT32")]
    assert d[0].value.path is None and d[0].value.limits is None
    assert d[1] == wit.TagDecision_Reject("no")
    assert isinstance(d[2], wit.TagDecision_Reject) and "KeyError" in d[2].value
    assert counted == [("seen", 1)], "host calls go through the component's imports"


def test_sample_plane_conversions(glue):
    guest, wit, t = glue
    from componentize_py_types import Err

    t.init('{"k": 1}')
    out = t.on_batch(
        [1, 9, 2],
        [1.5, 2.0, math.nan],
        [0, 0, 0],
        [],
        [wit.Extra(2, wit.ExtraValue_Text("on"))],
    )
    assert out.values[:2] == [3.0, 4.0] and math.isnan(out.values[2])
    assert out.quality == [0, 0, Quality.UNCERTAIN]
    assert out.rejected == [wit.Rejection(1, 4, "nine")]
    if guest.HAS_DROPS:
        assert out.dropped == [] and out.extras is None
    t.init('{"k": "fail"}')
    with pytest.raises(Err) as e:
        t.on_batch([1], [1.0], [0], [], [])
    assert e.value.value == "ZeroDivisionError: division by zero"


class Interlock(Plugin):
    @classmethod
    def info(cls):
        return PluginInfo("interlock", "1.0.0").command_plane().reason(7, "interlocked", "door open")

    def on_command(self, cmd):
        if cmd.requester == "bug":
            raise RuntimeError("oops")
        if cmd.dry_run:
            return CommandDecision.refuse(7, f"door open for {cmd.path}")
        return CommandDecision.allow(cmd.value * 10)


def test_command_plane_conversions(glue, monkeypatch):
    guest, wit, _ = glue
    if not hasattr(wit, "Command"):
        pytest.skip("contract 0.1.0 has no command plane")
    logged = []
    monkeypatch.setattr(guest.wit_host, "log", lambda level, msg, fields: logged.append((msg, fields)))
    t = guest.make_transform(Interlock)()
    assert t.describe().planes == wit.Planes.TAG | wit.Planes.COMMAND
    t.init("{}")
    cmd = lambda requester, dry: wit.Command("c1", 3, "plant/x", 2.5, None, None, requester, 99, dry)
    assert t.on_command(cmd("mes", False)) == wit.CommandDecision_Allow(25.0)
    assert t.on_command(cmd("mes", True)) == wit.CommandDecision_Refuse(wit.CommandRefusal(7, "door open for plant/x"))
    with pytest.raises(RuntimeError, match="oops"):
        t.on_command(cmd("bug", False))
    assert logged == [("on_command raised", [("command", "c1"), ("error", "RuntimeError: oops")])]


def test_command_plane_needs_contract_0_2_0(glue):
    guest, wit, _ = glue
    if hasattr(wit, "Command"):
        pytest.skip("contract 0.2.0 has the command plane")
    t = guest.make_transform(Interlock)()
    with pytest.raises(RuntimeError, match="command plane needs contract ferrule:plugin@0.2.0"):
        t.describe()
