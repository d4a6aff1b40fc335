"""Settings: defaults, then environment, then overrides."""
import pytest

from batchy import settings


def test_defaults():
    values = settings.load({})
    assert values["BATCHY_CFG_DIR"] == "cfg" and values["BATCHY_REDIS_URL"] == ""
    assert values["BATCHY_ALLOW_GET_MUTATIONS"] is True


def test_environment_then_overrides():
    env = {"BATCHY_HISTORY_KEEP": "7", "BATCHY_ALLOW_GET_MUTATIONS": "false", "REDIS_URL": "redis://r:1/0"}
    values = settings.load(env, {"BATCHY_CFG_DIR": "/x"})
    assert values["BATCHY_HISTORY_KEEP"] == 7 and values["BATCHY_ALLOW_GET_MUTATIONS"] is False
    assert values["BATCHY_REDIS_URL"] == "redis://r:1/0"  # REDIS_URL as a fallback
    assert values["BATCHY_CFG_DIR"] == "/x"
    both = settings.load({"BATCHY_REDIS_URL": "redis://a:1/0", "REDIS_URL": "redis://b:1/0"})
    assert both["BATCHY_REDIS_URL"] == "redis://a:1/0"


@pytest.mark.parametrize("name, value", [("BATCHY_HISTORY_KEEP", "0"), ("BATCHY_REDIS_TIMEOUT", "-1"),
                                         ("BATCHY_ALLOW_GET_MUTATIONS", "maybe"), ("BATCHY_WORKERS", "two")])
def test_bad_values_stop_with_the_setting_named(name, value):
    with pytest.raises(SystemExit) as err:
        settings.load({name: value})
    assert name in str(err.value)
