"""Every BATCHY_* setting, declared once; docs/operations.md's configuration table is made from them."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping


def _bool(value: str) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"must be > 0: {value!r}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0 or number == float("inf"):
        raise ValueError(f"must be >= 0: {value!r}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"must be >= 1: {value!r}")
    return number


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"must be >= 0: {value!r}")
    return number


def _detail(value: str) -> str:
    text = str(value).strip().lower()
    if text not in ("job", "workflow"):
        raise ValueError(f"must be job or workflow: {value!r}")
    return text


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "BATCHY_REDIS_URL",
        "",
        "Redis to keep state in: `redis://[:password@]host:port/db`, `rediss://…` for TLS, "
        "or `redis+sentinel://host:26379,host2:26379/<primary-name>/<db>`. Falls back to "
        "`REDIS_URL`. Empty: an embedded in-memory store (one process, state lost on exit).",
    ),
    Setting("BATCHY_CFG_DIR", "cfg", "Folder holding the workflow files `<wf>.yaml`."),
    Setting(
        "BATCHY_API_TOKEN",
        "",
        "When set, every mutating endpoint (and `/wait`) requires "
        "`Authorization: Bearer <token>`; empty disables the check.",
    ),
    Setting(
        "BATCHY_API_TOKENS",
        "",
        "More write tokens, comma-separated, accepted like `BATCHY_API_TOKEN`: deploy the new "
        "token here, move the clients over, then drop the old one (rotation without downtime).",
    ),
    Setting(
        "BATCHY_READ_TOKENS",
        "",
        "Read tokens, comma-separated. When set, the reads named in `BATCHY_PROTECTED_READS` "
        "require `Authorization: Bearer <token>` with a read or a write token.",
    ),
    Setting(
        "BATCHY_TOKENS_FILE",
        "",
        "A file of `BATCHY_API_TOKEN=`, `BATCHY_API_TOKENS=` and `BATCHY_READ_TOKENS=` lines that, "
        "when set, replaces those three settings; the service reads it again within a second of a "
        "change, so tokens rotate without a restart ([steps](#rotating-tokens-without-a-restart)).",
    ),
    Setting(
        "BATCHY_PROTECTED_READS",
        "events,history",
        "Which reads the read tokens protect, comma-separated, from: `events` (/events: it holds "
        "callers' addresses), `history` (/history, /batch, /batches, /most_recent), `status` "
        "(/get_status, /workflows, /pause_status, /pause_history, /wait), `dashboard`, `metrics`.",
    ),
    Setting(
        "BATCHY_ALLOW_GET_MUTATIONS",
        True,
        "Accept GET on mutating endpoints, as the original URLs do. Set to false where "
        "crawlers or link previews could open a batch: mutations then need POST.",
        _bool,
    ),
    Setting(
        "BATCHY_REDIS_TIMEOUT",
        2.0,
        "Seconds to wait for Redis before answering 503 (connect and per command).",
        _positive_float,
    ),
    Setting(
        "BATCHY_REDIS_CLUSTER",
        False,
        "Run on a Redis Cluster: `BATCHY_REDIS_URL` names any node, and keys take the cluster "
        "style (the workflow name as a hash tag, `{wf1}`, so each commit stays in one slot). "
        "`batchy migrate-keys` moves a deployment between styles (docs/operations.md).",
        _bool,
    ),
    Setting(
        "BATCHY_REDIS_WAIT_REPLICAS",
        0,
        "After each state change, wait until this many replicas acknowledge it "
        "(Redis `WAIT`); 0 disables. With Sentinel, 1 means a failover cannot lose "
        "an acknowledged change.",
        _non_negative_int,
    ),
    Setting(
        "BATCHY_REDIS_WAIT_TIMEOUT_MS",
        1000,
        "How long `WAIT` may take before the call answers 503 (the change is applied "
        "on the primary but not confirmed on a replica).",
        _positive_int,
    ),
    Setting(
        "BATCHY_MAX_CFG_BYTES",
        1_048_576,
        "Largest workflow YAML file `load_cfg` reads.",
        _positive_int,
    ),
    Setting(
        "BATCHY_MAX_BODY_BYTES",
        1_048_576,
        "Largest request body accepted (larger: 413).",
        _positive_int,
    ),
    Setting(
        "BATCHY_HISTORY_KEEP",
        1000,
        "Batches kept per workflow; older `<wf>-<batch_id>` keys are deleted with "
        "their index entries when a new batch opens, except a batch some job still runs.",
        _positive_int,
    ),
    Setting(
        "BATCHY_EVENTS_KEEP",
        10000,
        "Audit events kept per workflow (a capped Redis stream), and chunk events kept per backfill "
        "(a stream of its own, so a backfill never evicts the workflow's audit trail).",
        _positive_int,
    ),
    Setting(
        "BATCHY_STATE_CACHE",
        1024,
        "Workflows each service process keeps in memory between state changes, so a "
        "change costs one Redis round trip instead of two. Never trusted blindly: the "
        "commit script checks the cached `version` and re-reads on a mismatch. 0 disables.",
        _non_negative_int,
    ),
    Setting(
        "BATCHY_LOAD_ON_START",
        False,
        "Load every workflow file of `BATCHY_CFG_DIR` when the service starts (a plain load: "
        "runtime state is kept), so a fresh deployment comes up with its workflows. The "
        "embedded store always does.",
        _bool,
    ),
    Setting(
        "BATCHY_WEBHOOK_URL",
        "",
        "POST a JSON event (with a `text` field, so a Slack or Teams incoming webhook takes it as "
        "is) when a batch fails, a job becomes late or a batch stuck: queued once per event across all "
        "processes, delivered at least once in the background (a repeat carries the same `id`), "
        "retried while the receiver is down. Empty: none.",
    ),
    Setting(
        "BATCHY_WEBHOOK_INTERVAL",
        30.0,
        "Seconds between two rounds of the webhook process: checking lateness (even when no ETL "
        "calls the API) and delivering what is queued.",
        _positive_float,
    ),
    Setting(
        "BATCHY_WEBHOOK_TIMEOUT",
        5.0,
        "Seconds a webhook POST may wait for the receiver (to connect, and for each read) before it "
        "counts as failed and is retried on a later round.",
        _positive_float,
    ),
    Setting(
        "BATCHY_WEBHOOK_VISIBILITY_TIMEOUT",
        0.0,
        "Seconds an event being posted is hidden from other processes: if its sender dies (kill -9, "
        "OOM, a worker timeout) the event is sent again after this. 0: twice BATCHY_WEBHOOK_TIMEOUT "
        "plus 5 s (15 s). Else it must be longer than BATCHY_WEBHOOK_TIMEOUT, so a slow but living "
        "post is not sent twice.",
        _non_negative_float,
    ),
    Setting(
        "BATCHY_OPENLINEAGE_URL",
        "",
        "Send every job's open, close, fail and abandonment, and every backfill chunk attempt, as an "
        "OpenLineage run event to `<url>/api/v1/lineage` (Marquez: `http://marquez:5000`), at least once, "
        "in the background ([lineage](lineage.md)). Empty: none.",
    ),
    Setting(
        "BATCHY_OPENLINEAGE_NAMESPACE",
        "batchy",
        "The OpenLineage namespace of the jobs (`<workflow>.<job>`) Batchy reports.",
    ),
    Setting(
        "BATCHY_OPENLINEAGE_INTERVAL",
        2.0,
        "Seconds between two rounds of the process (one at a time, elected through Redis) that "
        "sends OpenLineage events.",
        _positive_float,
    ),
    Setting(
        "BATCHY_OPENLINEAGE_TIMEOUT",
        5.0,
        "Seconds an OpenLineage POST may wait for the collector before it counts as failed and is "
        "retried on a later round (an event being sent is handed to another process after twice "
        "this plus 5 s, if its sender died).",
        _positive_float,
    ),
    Setting(
        "BATCHY_IDEMPOTENCY_HOURS",
        24.0,
        "How long an `Idempotency-Key` of `open_batch` is remembered: a retry with the same "
        "key within this time answers the batch the first call opened instead of opening another.",
        _positive_float,
    ),
    Setting(
        "BATCHY_WAIT_MAX_SECONDS",
        60.0,
        "Longest a single `/wait` request blocks before answering with the current verdict.",
        _positive_float,
    ),
    Setting(
        "BATCHY_WAIT_MAX_WAITERS",
        256,
        "Most `/wait` requests one service process holds at once (more get 503 "
        "`too_many_waiters`); `batchy serve` adds this many threads to BATCHY_THREADS, so "
        "waiters never take the threads other requests need.",
        _positive_int,
    ),
    Setting(
        "BATCHY_FLEET_INTERVAL",
        10.0,
        "Seconds each service process reuses what it read of the whole fleet: the dashboard's "
        "summary, order and filter, `/metrics` and `/late`. An older read is answered while the "
        "next is made in the background (one at a time per process); the rows the dashboard "
        "shows are always read fresh. 0: read the fleet on every request (small fleets, tests).",
        _non_negative_float,
    ),
    Setting(
        "BATCHY_AUTO_BACKFILL_INTERVAL",
        60.0,
        "Seconds between two rounds of the process (one at a time, elected through Redis) that "
        "turns the settled holes of `auto_backfill` jobs into backfills "
        "([self-repair](backfills.md#holes-that-repair-themselves)). 0: no process of this "
        "service does it.",
        _non_negative_float,
    ),
    Setting(
        "BATCHY_METRICS_DETAIL",
        "job",
        "`job`: `/metrics` has series per job (status, last success, late, holes, records); "
        "`workflow`: per workflow only, each job figure summed or counted per workflow, to bound "
        "the series of a large fleet ([how many](#series-per-detail)).",
        _detail,
    ),
    Setting("BATCHY_LOG_LEVEL", "INFO", "Python log level of the service."),
    Setting(
        "BATCHY_WORKERS",
        2,
        "gunicorn worker processes started by `batchy serve` (the embedded store always uses 1).",
        _positive_int,
    ),
    Setting(
        "BATCHY_THREADS",
        32,
        "Threads per gunicorn worker for ordinary requests; `batchy serve` adds "
        "BATCHY_WAIT_MAX_WAITERS more for `/wait` waiters.",
        _positive_int,
    ),
    Setting(
        "BATCHY_URL",
        "http://127.0.0.1:5000",
        "Where the `batchy` client commands, `batchy.client` and `waitsy` find the service.",
    ),
)

BY_NAME = {s.name: s for s in SETTINGS}


def load(environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Return the settings: defaults, then BATCHY_* environment, then overrides."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.name)
        if raw is None and setting.name == "BATCHY_REDIS_URL":
            raw = environ.get("REDIS_URL")
        if raw is None:
            values[setting.name] = setting.default
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise SystemExit(f"batchy: bad value for {setting.name}: {exc}") from None
    if overrides:
        values.update(overrides)
    if values.get("BATCHY_TOKENS_FILE"):
        try:
            values.update(read_tokens_file(values["BATCHY_TOKENS_FILE"]))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"batchy: BATCHY_TOKENS_FILE: {exc}") from None
    return values


TOKEN_SETTINGS = ("BATCHY_API_TOKEN", "BATCHY_API_TOKENS", "BATCHY_READ_TOKENS")


def read_tokens_file(path: str) -> dict[str, str]:
    """Return the token settings a BATCHY_TOKENS_FILE holds: each of TOKEN_SETTINGS, empty when absent.

    Lines are NAME=value (quotes around the value optional); blank lines and # comments are
    skipped; any other name is refused, so a typo cannot silently drop a token.
    """
    values = dict.fromkeys(TOKEN_SETTINGS, "")
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            name, value = name.strip(), value.strip()
            if not sep or name not in values:
                raise ValueError(f"{path}, line {number}: expected one of {', '.join(TOKEN_SETTINGS)}=...")
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[name] = value
    return values


def write_tokens(conf: Mapping[str, Any]) -> tuple[str, ...]:
    """Return the write tokens of settings conf (BATCHY_API_TOKEN, BATCHY_API_TOKENS)."""
    text = ",".join(str(conf.get(name) or "") for name in ("BATCHY_API_TOKEN", "BATCHY_API_TOKENS"))
    return tuple(t.strip() for t in text.split(",") if t.strip())


def markdown_table() -> str:
    """Return the configuration table of docs/operations.md, made from SETTINGS."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for s in SETTINGS:
        default = s.default
        if isinstance(default, bool):
            default = str(default).lower()
        shown = f"`{default}`" if default != "" else "(empty)"
        rows.append(f"| `{s.name}` | {shown} | {s.help} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
