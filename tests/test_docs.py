"""The docs document every setting, endpoint and command, and their links lead somewhere.

Datasette's test_docs habit: the code is the list of what must be documented, so a new
setting, route or command without docs fails here, and so does a link to a file or a
heading that is gone.
"""
from __future__ import annotations

import re
from pathlib import Path

import fakeredis
import pytest

from batchy import create_app, settings
from batchy.rules import fields
from batchy.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)


def text_of(paths) -> str:
    return "\n".join(path.read_text() for path in paths)


def without_code(markdown: str) -> str:
    """Return the markdown with its fenced blocks blanked, so `#` comments are no headings."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), markdown)


def sh_blocks(markdown: str) -> list[str]:
    return [m.group(2) for m in FENCE.finditer(markdown) if m.group(1) == "sh"]


def anchors(path: Path) -> set[str]:
    """Return the #anchors GitHub makes for the headings of a markdown file."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", without_code(path.read_text()), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path):
    """Yield (target, fragment) for every relative markdown link outside code."""
    for target in re.findall(r"\]\(([^)\s]+)\)", without_code(path.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        yield file_part, fragment


LINKS = list(dict.fromkeys(
    (page, file_part, fragment)
    for page in PAGES
    for file_part, fragment in relative_links(page)
))


def test_docs_exist():
    names = {p.name for p in DOCS.glob("*.md")}
    assert {"api.md", "workflows.md", "waitsy.md", "operations.md", "reliability.md", "architecture.md"} <= names


def test_settings_table_is_current():
    operations = (DOCS / "operations.md").read_text()
    table = re.search(r"<!-- settings-table -->\n(.*?)\n<!-- /settings-table -->", operations, re.S).group(1)
    assert table == settings.markdown_table(), "run: python -m batchy.settings, paste into docs/operations.md"


@pytest.mark.parametrize("name", [s.name for s in settings.SETTINGS])
def test_every_setting_is_documented(name):
    assert f"`{name}`" in text_of(DOCS.glob("*.md")), f"{name} is not in docs/"


def routes():
    app = create_app({"REDIS_CLIENT": fakeredis.FakeRedis()})
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            yield re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)


def documented_form(route: str) -> str:
    """Return a regex of how a route is written in the docs: `GET /pause[/<wf>]` covers two."""
    parts = re.split(r"(/<\w+>)", route)
    body = "".join(rf"\[?{re.escape(p)}\]?" if p.startswith("/<") else re.escape(p) for p in parts)
    return rf"`GET {body}(\[/<\w+>\])*`"


@pytest.mark.parametrize("route", sorted(set(routes())))
def test_every_endpoint_is_documented(route):
    docs = text_of(DOCS.glob("*.md"))
    assert re.search(documented_form(route), docs), f"{route} is not in docs/ (as `GET {route}`)"
    # ...with an example that tests/test_doc_examples.py runs
    base = route.split("/<")[0] or "/"
    examples = "\n".join(block for page in PAGES for block in sh_blocks(page.read_text()))
    pattern = r"curl [^\n]*\$BATCHY_URL" + re.escape(base) + (r"[\"?]" if base == "/" else r"(?![\w.])")
    assert re.search(pattern, examples), f"no runnable curl example for {route}"


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_documented(command):
    assert f"batchy {command}" in text_of(DOCS.glob("*.md")), f"batchy {command} is not in docs/"


@pytest.mark.parametrize(
    "page, file_part, fragment", LINKS,
    ids=[f"{page.name}->{file_part}" + (f"#{fragment}" if fragment else "") for page, file_part, fragment in LINKS],
)
def test_relative_link_leads_somewhere(page, file_part, fragment):
    target = (page.parent / file_part).resolve() if file_part else page
    assert target.exists(), f"{page.relative_to(ROOT)} links to {file_part}, which does not exist"
    if fragment:
        assert target.suffix == ".md", f"{page.relative_to(ROOT)}: #{fragment} on a file that is not markdown"
        assert fragment in anchors(target), (
            f"{page.relative_to(ROOT)} links to {file_part or page.name}#{fragment}, "
            f"which has no such heading (it has: {', '.join(sorted(anchors(target)))})"
        )


def test_the_readme_links_every_page_of_docs():
    linked = {(ROOT / file_part).resolve() for page, file_part, _ in LINKS if page.name == "README.md" and file_part}
    for page in DOCS.glob("*.md"):
        assert page.resolve() in linked, f"README.md does not link to docs/{page.name}"


def test_the_readmes_documentation_table_lists_every_page_of_docs():
    # Linked somewhere is not enough: the table under "## Documentation" is where a newcomer looks.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Documentation\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| \[[^\]]*\]\(([^)#]+)\) \|", section, re.M)
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in rows, f"README.md's documentation table has no row for docs/{page.name}"


def command_list() -> str:
    """Return the command list of docs/api.md: the ```text block under "## Command line"."""
    section = (DOCS / "api.md").read_text().split("\n## Command line\n", 1)[1]
    return FENCE.search(section).group(2)


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_is_in_the_command_list(command):
    listed = re.findall(r"^batchy ([\w-]+)", command_list(), re.M)
    assert command in listed, f"batchy {command} is not in docs/api.md's command list (## Command line)"


def test_an_inline_copy_of_the_alert_rules_is_the_file():
    # One file, one truth: a page may show docs/batchy-alerts.yml, but only as it is.
    rules = (DOCS / "batchy-alerts.yml").read_text()
    copies = [m.group(2) for page in PAGES for m in FENCE.finditer(page.read_text()) if "- alert:" in m.group(2)]
    assert copies, "docs/operations.md shows the alert rules"
    for copy in copies:
        assert copy == rules, "an inline copy of the alert rules differs from docs/batchy-alerts.yml: paste the file"


@pytest.mark.parametrize("page", [*PAGES, *sorted(DOCS.glob("*.yml"))], ids=lambda p: p.name)
def test_every_test_file_the_docs_name_exists(page):
    for name in set(re.findall(r"\btests/[\w/]+\.py\b", page.read_text())):
        assert (ROOT / name).exists(), f"{page.name} names {name}, which does not exist"


def test_the_readme_stays_short():
    # The README is what a newcomer reads first; reference material belongs in docs/.
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


# Fences tests/test_doc_examples.py runs, and the ones it shows only.
RUN = {"sh", "python"}
SHOW = {"console", "text", "yaml", "json", "ini"}
# Commands a test cannot run: they install software, start servers or need Docker or root.
NEEDS_A_MACHINE = re.compile(r"\bpip install\b|\bbatchy serve\b|\bdocker\b|\bsystemctl\b|\bapt-get\b|"
                             r"\bbash \.ci/run\b|\bredis-server\b|\bsudo\b")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_code_block_says_whether_it_runs(page):
    for match in FENCE.finditer(page.read_text()):
        lang = match.group(1)
        assert lang in RUN | SHOW, f"{page.name}: a ```{lang} block: use sh/python (run by the tests) or {sorted(SHOW)}"
        if lang == "sh":
            found = NEEDS_A_MACHINE.search(match.group(2))
            assert not found, f"{page.name}: a ```sh block runs {found.group(0)!r}: mark it ```console"


@pytest.mark.parametrize("page, scopes", [
    ("README.md", (fields.RUNTIME, fields.JOB, fields.BOTH)),
    ("docs/workflows.md", (fields.WORKFLOW, fields.BOTH)),
])
def test_fields_tables_are_current(page, scopes):
    text = (DOCS.parent / page).read_text()
    table = re.search(r"<!-- fields-table -->\n(.*?)\n<!-- /fields-table -->", text, re.S).group(1)
    assert table == fields.markdown_table(scopes), f"run: python -m batchy.rules.fields, paste into {page}"


@pytest.mark.parametrize("field", fields.FIELDS, ids=lambda f: f.name)
def test_every_field_is_documented_in_one_line(field):
    assert field.doc.endswith(".") and "\n" not in field.doc and "|" not in field.doc
    documented = text_of([DOCS.parent / "README.md", DOCS / "workflows.md"])
    assert f"| `{field.name}` |" in documented, f"{field.name} is in no fields table"


def test_the_example_workflow_in_workflows_md_is_cfg_wf1_yaml():
    """docs/workflows.md shows cfg/wf1.yaml as it is (its header comment aside)."""
    page = (ROOT / "docs" / "workflows.md").read_text()
    shown = page.split("The example [`cfg/wf1.yaml`](../cfg/wf1.yaml):\n\n```yaml\n", 1)[1].split("```", 1)[0]
    lines = (ROOT / "cfg" / "wf1.yaml").read_text().splitlines(keepends=True)
    body = "".join(lines[next(i for i, line in enumerate(lines) if not line.startswith("#")):])
    assert shown == body
