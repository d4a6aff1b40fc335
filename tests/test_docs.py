"""The README documents every setting, endpoint and command (Datasette's test_docs habit)."""
import re
from pathlib import Path

import pytest

from batchy import create_app, settings
from batchy.cli import cli

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_settings_table_is_current():
    table = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", README, re.S).group(1)
    assert table == settings.markdown_table(), "run: python -m batchy.settings, paste into README.md"


@pytest.mark.parametrize("name", [s.name for s in settings.SETTINGS])
def test_every_setting_is_documented(name):
    assert f"`{name}`" in README


def routes():
    app = create_app({"REDIS_CLIENT": __import__("fakeredis").FakeRedis()})
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            yield re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)


@pytest.mark.parametrize("route", sorted(set(routes())))
def test_every_endpoint_is_documented(route):
    # "/open_batch/<wf>/<fmt>" is documented as "/open_batch/<wf>[/<fmt>]"
    base = route.split("/<")[0]
    assert f"`GET {base}" in README or f"`GET {route}" in README, route
    assert re.search(r"curl [^\n]*" + re.escape(base), README), f"no curl example for {route}"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_documented(command):
    assert f"batchy {command}" in README
