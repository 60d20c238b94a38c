from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

import pytest

from ferrule_plugin import Config, ConfigError


@dataclass
class Rule:
    pattern: str
    low: Optional[float] = None
    high: Optional[float] = None

    def __post_init__(self):
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")


@dataclass
class Cfg:
    rules: List[Rule]
    mode: Literal["device", "path"] = "device"
    scale: float = 1.0
    count: int = 3
    aliases: Dict[str, str] = field(default_factory=dict)
    enabled: bool = True


def parse(text):
    return Config.from_json(text).parse(Cfg)


def test_a_valid_config_gets_defaults_and_types():
    cfg = parse('{"rules": [{"pattern": "a/*", "low": 1}], "scale": 2, "aliases": {"bar": "kPa"}}')
    assert cfg.rules == [Rule("a/*", 1.0, None)]
    assert isinstance(cfg.rules[0].low, float) and isinstance(cfg.scale, float)
    assert (cfg.mode, cfg.count, cfg.aliases, cfg.enabled) == ("device", 3, {"bar": "kPa"}, True)


@pytest.mark.parametrize(
    "text, path, message",
    [
        ('{"rules": [{"pattern": "a"}, {"pattern": "b", "low": "x"}]}', "rules[1].low", "expected a number"),
        ('{"rules": [{"pattern": "a", "lo": 1}]}', "rules[0].lo", "unknown key; expected one of `high`, `low`, `pattern`"),
        ("{}", "rules", "missing (required)"),
        ('{"rules": [], "mode": "tag"}', "mode", 'expected one of "device", "path", got a string ("tag")'),
        ('{"rules": [], "count": 1.5}', "count", "expected an integer"),
        ('{"rules": [], "enabled": 1}', "enabled", "expected a boolean"),
        ('{"rules": [], "aliases": {"psi": 3}}', "aliases.psi", "expected a string"),
        ('{"rules": [{"pattern": "a", "low": 5, "high": 1}]}', "rules[0]", "low 5.0 is above high 1.0"),
    ],
)
def test_errors_name_where(text, path, message):
    with pytest.raises(ConfigError) as e:
        parse(text)
    assert e.value.path == path
    assert message in e.value.message
    assert str(e.value).startswith(f"invalid config at `{path}`: ")


def test_not_json_and_not_a_table():
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_json("{")
    with pytest.raises(ConfigError, match="expected a table, got an array"):
        Config.from_json("[1]")
    assert Config.from_json("").raw == {}
