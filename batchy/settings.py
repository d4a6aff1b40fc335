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


def _non_negative_float(value: str) -> float:
    number = float(value)
    if number < 0:
        raise ValueError(f"must be >= 0: {value!r}")
    return number


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
        "their index entries when a new batch opens.",
        _positive_int,
    ),
    Setting(
        "BATCHY_EVENTS_KEEP",
        10000,
        "Audit events kept per workflow (a capped Redis stream).",
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
        "is) when a batch fails, a job becomes late or a batch stuck: once per event across all "
        "processes, in the background, retried while the receiver is down. Empty: none.",
    ),
    Setting(
        "BATCHY_WEBHOOK_INTERVAL",
        30.0,
        "Seconds between two rounds of the webhook process: checking lateness (even when no ETL "
        "calls the API) and delivering what is queued.",
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
    return values


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
