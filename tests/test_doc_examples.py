"""Every example in the README and docs/ runs as written (issue 16).

Each page's ```sh and ```python blocks run in the page's order against a live service
(`batchy serve` on its own redis-server) that has loaded the real example workflow
cfg/wf1.yaml, with BATCHY_URL and BATCHY_REDIS_URL pointing at it. Each block runs in a
fresh process, so a block may rely on the service's state and the exported variables, not
on the shell variables of an earlier block. The first block that fails fails the test,
named by page and line. Other fences (console, text, yaml, json, ini) are illustrations
and never run; tests/test_docs.py checks that commands which install or serve are not
marked ```sh.

Three rules, applied by this runner only:
- a `curl` must answer 2xx (it runs with --fail-with-body), unless its comment starts with
  the status and error code it shows on purpose (`curl ... # 409 not_open: ...`): then it
  must answer exactly that;
- a `curl` whose comment starts with `{` or `[` (`curl ... # {"workflows": [...]}`) must
  answer a JSON object or a JSON list, as the comment shows;
- blocks run with `set -euo pipefail`, so any other failing command fails the block.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.M | re.S)
RUNNABLE = ("sh", "python")
BLOCK_TIMEOUT = 120

# `curl ARGS   # 409 not_open: why` -> `expect_status 409 not_open ARGS`
EXPECTED_ERROR = re.compile(r"^([ \t]*)curl[ \t]+(.*?)[ \t]+#[ \t]*([1-5][0-9][0-9])[ \t]+([a-z_]+)\b.*$", re.M)
# `curl ARGS   # {"workflows": ...}` -> `expect_json '{' ARGS`
EXPECTED_JSON = re.compile(r"^([ \t]*)curl[ \t]+(.*?)[ \t]+#[ \t]*([\[{]).*$", re.M)

PRELUDE = r"""
set -euo pipefail
curl() { command curl --fail-with-body --silent --show-error "$@"; }
expect_status() {  # expect_status STATUS ERROR_CODE CURL_ARGS...
  local want=$1 code=$2 out status body
  shift 2
  out=$(command curl --silent --show-error --write-out '\n%{http_code}' "$@")
  status=${out##*$'\n'}
  body=${out%$'\n'*}
  printf '%s\n' "$body"
  if [ "$status" != "$want" ]; then
    echo "expected HTTP $want $code, got HTTP $status" >&2; return 1
  fi
  if ! printf '%s' "$body" | grep -Eq "\"error\": ?\"$code\""; then
    echo "expected error $code in the body" >&2; return 1
  fi
}
expect_json() {  # expect_json '{'|'[' CURL_ARGS...: the answer is a JSON object, or a list
  local want=$1 body
  shift
  body=$(curl "$@")
  printf '%s\n' "$body"
  printf '%s' "$body" | python3 -c '
import json, sys
kind = dict if sys.argv[1] == "{" else list
if not isinstance(json.load(sys.stdin), kind):
    sys.exit(f"the comment shows a JSON {kind.__name__}, the answer is not one")' "$want"
}
"""


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Return the runnable fenced blocks of a page, in order."""
    markdown = page.read_text()
    found = []
    for match in FENCE.finditer(markdown):
        if match.group(1) in RUNNABLE:
            line = markdown.count("\n", 0, match.start()) + 1
            found.append(Block(page, line, match.group(1), match.group(2)))
    return found


def script(block: Block) -> str:
    """Return the bash script that runs a sh block under the two rules."""
    body = EXPECTED_ERROR.sub(r"\1expect_status \3 \4 \2", block.text)
    body = EXPECTED_JSON.sub(r"\1expect_json '\3' \2", body)
    return PRELUDE + body


@pytest.fixture
def cfg_dir(tmp_path):
    """The real example workflow, not conftest's test wf1: the docs are written for it."""
    folder = tmp_path / "cfg"
    folder.mkdir()
    shutil.copy(ROOT / "cfg" / "wf1.yaml", folder / "wf1.yaml")
    return folder


@pytest.fixture
def example_env(service, redis_server, tmp_path):
    """Environment and working folder of the examples; wf1 loaded, as a reader would have it."""
    with urllib.request.urlopen(service.url + "/load_cfg/wf1", timeout=10) as resp:
        assert resp.status == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_") and k != "REDIS_URL"}
    env.update(
        BATCHY_URL=service.url,
        BATCHY_REDIS_URL=redis_server.url,
        # the venv's batchy, waitsy and python3 come first, as after `source .venv/bin/activate`
        PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
    )
    work = tmp_path / "work"
    work.mkdir()
    return env, work


def run(block: Block, env: dict, work: Path) -> subprocess.CompletedProcess:
    if block.lang == "sh":
        command = ["bash", "-c", script(block)]
    else:
        command = [sys.executable, "-c", block.text]
    return subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT)


PAGES_WITH_EXAMPLES = [page for page in PAGES if blocks(page)]


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=[p.name for p in PAGES_WITH_EXAMPLES])
def test_examples_run_top_to_bottom(page, example_env, service):
    env, work = example_env
    for block in blocks(page):
        done = run(block, env, work)
        if done.returncode != 0:
            pytest.fail(
                f"the ```{block.lang} block at {block.where} failed (exit {done.returncode}):\n"
                f"{block.text}\n--- stdout:\n{done.stdout[-3000:]}\n--- stderr:\n{done.stderr[-3000:]}"
                f"\n--- service log (end):\n{service.log()[-2000:]}",
                pytrace=False,
            )


def test_the_page_list_is_not_empty():
    # A fence regex that stops matching would otherwise pass silently.
    assert {p.name for p in PAGES_WITH_EXAMPLES} >= {"README.md", "api.md", "operations.md", "waitsy.md"}
