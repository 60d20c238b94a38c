import re
from pathlib import Path

import pytest

from ferrule_plugin import build

SDK = Path(__file__).resolve().parents[1]


def test_the_pin_is_the_same_everywhere():
    req = (SDK / "requirements.txt").read_text()
    assert f"componentize-py=={build.COMPONENTIZE_PY_VERSION}" in req.splitlines()
    pyproject = (SDK / "pyproject.toml").read_text()
    assert f'"componentize-py=={build.COMPONENTIZE_PY_VERSION}"' in pyproject


def test_the_shipped_wit_is_the_contract():
    wit = (build.DEFAULT_WIT / "plugin.wit").read_text()
    assert re.search(r"^package ferrule:plugin@\d+\.\d+\.\d+;", wit, re.M)
    assert "world plugin" in wit


def test_build_refuses_a_missing_module_and_reserved_names(tmp_path):
    with pytest.raises(build.BuildError, match="name the module"):
        build.build(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[tool.ferrule]\napp = "nothere"\n')
    with pytest.raises(build.BuildError, match="module `nothere` not found"):
        build.build(tmp_path)
    with pytest.raises(build.BuildError, match="reserves"):
        build.build(tmp_path, app="plugin")
    (tmp_path / "pyproject.toml").write_text('[tool.ferrule]\napp = "x"\ncolour = 1\n')
    with pytest.raises(build.BuildError, match="tool.ferrule.colour"):
        build.build(tmp_path)


def test_inputs_digest_follows_the_plugin_source(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    d1 = build.inputs_digest(tmp_path, "a", build.DEFAULT_WIT)
    assert d1 == build.inputs_digest(tmp_path, "a", build.DEFAULT_WIT)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert build.inputs_digest(tmp_path, "a", build.DEFAULT_WIT) != d1
