"""Export and import: every workflow's state, bookkeeping and history as one JSON document."""
from __future__ import annotations

import json

from ..rules import coverage, names, plans, workflows
from . import bookkeeping, keys
from ..errors import InvalidConfig, InvalidName, InvalidParameter, WorkflowExists
from ..rules.jobs import BATCH_STATUSES, decode, readable_mark
from ..rules.times import MIN_TIME, STORED_MIN_TIME, format_time
from ..rules.validation import check_sections, is_whole_number

FORMAT = "batchy-export/1"
MAX_WHOLE = 2**53  # the largest whole number a JSON reader keeps exact (validation.is_whole_number)


def export(store, wfs: list[str] | None = None, *, history: bool = True) -> dict:
    """Return the state of the named (default: all) workflows as a JSON-ready document."""
    client = store.redis
    wfs = wfs or store.workflows()
    doc = {"format": FORMAT, "exported_at": format_time(store.now()), "workflows": {}}
    for wf in wfs:
        pipe = client.pipeline(transaction=True)
        pipe.hgetall(store.keys.workflow(wf))
        pipe.hgetall(store.keys.meta(wf))
        pipe.zrange(store.keys.history(wf), 0, -1, withscores=True)
        raw, meta, ids = pipe.execute()
        if not raw:
            raise store.committer.not_found(wf)
        entry = {
            "jobs": decode(raw, wf, store.keys.workflow(wf)),
            "meta": {k: v for k, v in meta.items() if k != store.keys.VERSION},
            "batches": {},
        }
        if history:
            pipe = client.pipeline(transaction=False)
            for batch_id, _score in ids:
                pipe.hgetall(store.keys.batch(wf, batch_id))
            for (batch_id, _score), snap in zip(ids, pipe.execute()):
                if snap:
                    entry["batches"][batch_id] = decode(snap, wf, store.keys.batch(wf, batch_id), snapshot=True)
        doc["workflows"][wf] = entry
    return doc


def import_(store, doc: dict, *, replace: bool = False, actor: str = "import") -> list[str]:
    """Restore workflows from an export document; existing ones only with replace.

    The whole document is checked first, as a workflow file is: a bad one writes nothing.
    """
    entries = check_export(doc)
    if not replace:
        taken = sorted(set(entries) & set(store.workflows()))
        if taken:
            raise WorkflowExists(f"workflow {taken[0]!r} already exists here; import with --replace to overwrite",
                                 workflow=taken[0])
    for wf, (jobs, batches, meta) in entries.items():
        def plan(state, jobs=jobs, batches=batches, book=bookkeeping.book_of(meta)):
            return plans.plan_import(state, jobs, batches, book, replace=replace)

        store.committer.mutate(wf, plan, actor=actor, must_exist=False)
    return list(entries)


def check_export(doc) -> dict[str, tuple[dict, dict, dict]]:
    """Return {wf: (jobs, batches, meta)} of an export document, each checked, or raise."""
    if not isinstance(doc, dict) or not isinstance(doc.get("workflows"), dict):
        raise InvalidParameter("not a Batchy export: expected {\"workflows\": {...}}")
    if doc.get("format", FORMAT) != FORMAT:
        raise InvalidParameter(f"not a {FORMAT} document: format {str(doc['format'])[:40]!r}")
    entries = {}
    for wf, entry in doc["workflows"].items():
        names.check_workflow(wf)
        if not isinstance(entry, dict):
            raise InvalidParameter(f"workflow {wf!r} in the export is not a mapping", workflow=wf)
        meta = check_meta(wf, _mapping(wf, entry, "meta"))
        settings = workflows.check_settings(wf, json.loads(meta.get(keys.SETTINGS) or "{}"),
                                            f"the export of {wf!r}")
        entries[wf] = (check_jobs(wf, entry.get("jobs"), settings), check_batches(wf, _mapping(wf, entry, "batches")),
                       meta)
    return entries


def _mapping(wf: str, entry: dict, part: str) -> dict:
    value = entry.get(part)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParameter(f"{part} of workflow {wf!r} in the export must be a mapping", workflow=wf, field=part)
    return value


def check_jobs(wf: str, jobs, settings: dict) -> dict[str, dict]:
    """Return a workflow's jobs checked as a workflow file's are, runtime fields included."""
    if not isinstance(jobs, dict) or not jobs:
        raise InvalidParameter(f"workflow {wf!r} in the export has no jobs", workflow=wf, field="jobs")
    checked = {}
    for job, params in jobs.items():
        _job_name(wf, job, "jobs")
        if not isinstance(params, dict):
            raise InvalidParameter(f"job {job!r} of {wf!r} in the export is not a mapping", workflow=wf, job=job)
        try:
            checked[job] = workflows.fill_job(wf, job, params, settings.get("allow_params", ()), STORED_MIN_TIME)
        except InvalidConfig as exc:
            raise InvalidConfig(f"{exc.message} (in the export)", **exc.context) from None
    check_sections(wf, checked)
    return checked


def _job_name(wf: str, job, where: str) -> str:
    try:
        return names.check_job(job, wf)
    except InvalidName as exc:
        raise InvalidName(f"{exc.message} (in {where} of {wf!r} in the export)", **exc.context) from None


def check_batches(wf: str, batches: dict) -> dict[str, dict]:
    """Return the batch snapshots checked: {batch_id: {job: {status, times...}}}."""
    for batch_id, jobs in batches.items():
        if not (batch_id.isascii() and batch_id.isdigit() and str(int(batch_id)) == batch_id
                and int(batch_id) <= MAX_WHOLE):
            raise InvalidParameter(f"batch {batch_id[:40]!r} of {wf!r} in the export: a batch id is a whole number "
                                   f"up to {MAX_WHOLE}",
                                   workflow=wf, batch_id=batch_id[:40])
        if not isinstance(jobs, dict) or not jobs:
            raise InvalidParameter(f"batch {batch_id} of {wf!r} in the export must map job names to their run",
                                   workflow=wf, batch_id=batch_id)
        for job, run in jobs.items():
            _job_name(wf, job, f"batch {batch_id}")
            check_run(wf, batch_id, job, run)
    return batches


def check_run(wf: str, batch_id: str, job: str, run) -> None:
    """Check one job's run in a batch snapshot: a known status (abandoned too), times that read."""
    where = f"batch {batch_id} of {wf!r} in the export: job {job!r}"
    if not isinstance(run, dict):
        raise InvalidParameter(f"{where} must be a mapping, not {run!r:.40}", workflow=wf, batch_id=batch_id, job=job)
    if run.get("status") not in BATCH_STATUSES:
        raise InvalidParameter(f"{where}: status must be one of {', '.join(BATCH_STATUSES)}, not "
                               f"{run.get('status')!r:.40}", workflow=wf, batch_id=batch_id, job=job, field="status")
    for key, value in run.items():
        if key != "status":
            try:
                workflows.check_value(wf, job, key, value, earliest=STORED_MIN_TIME)
            except InvalidConfig as exc:
                raise InvalidParameter(f"batch {batch_id} in the export: {exc.message}", workflow=wf,
                                       batch_id=batch_id, job=job, field=key) from None


def check_meta(wf: str, meta: dict) -> dict[str, str]:
    """Return a workflow's bookkeeping checked field by field, as the texts Redis keeps."""
    checked = {}
    for field, value in meta.items():
        text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text is None or not _meta_value_ok(wf, field, text):
            raise InvalidParameter(f"meta field {field[:80]!r} of {wf!r} in the export has a bad value "
                                   f"{value!r:.80}{_META_HELP.get(field.split(':')[0], '')}",
                                   workflow=wf, field=field[:80])
        checked[field] = text
    return checked


_META_HELP = {
    keys.LAST_BATCH_ID: " (a whole number up to 2**53)",
    keys.SETTINGS: " (the workflow settings as JSON)",
    "count": " (a whole number up to 2**53)",
    "success": " (JSON {batch_id, start, end})",
    "coverage": " (JSON [[start, end], ...] in epoch seconds, sorted and disjoint)",
    "dirty": " (JSON [[start, end], ...] in epoch seconds, sorted and disjoint)",
    "quality": " (JSON [[start, end], ...] in epoch seconds, sorted and disjoint)",
    "records": " (JSON [n or null, ...], one per coverage interval)",
}


def _meta_value_ok(wf: str, field: str, text: str) -> bool:
    if field in (keys.LAST_BATCH_ID,) or field.startswith(keys.COUNT_PREFIX):
        # What every caller can name again (a batch id, a JSON integer) and Redis' HINCRBY can add to.
        return text.isascii() and text.isdigit() and int(text) <= MAX_WHOLE
    if field == keys.SETTINGS:
        return isinstance(_json(text), dict)  # its content is checked as settings next
    if field.startswith(keys.SUCCESS_PREFIX):
        _job_name(wf, field[len(keys.SUCCESS_PREFIX):], f"meta field {field[:80]!r}")
        return _success_ok(_json(text))
    for prefix in (keys.COVERAGE_PREFIX, keys.DIRTY_PREFIX, keys.QUALITY_PREFIX):  # a ledger, dirty ranges, failures
        if field.startswith(prefix):
            _job_name(wf, field[len(prefix):], f"meta field {field[:80]!r}")
            try:
                ledger = coverage.loads(text)
            except ValueError:
                return False
            return all(a[1] < b[0] for a, b in zip(ledger, ledger[1:]))
    if field.startswith(keys.RECORDS_PREFIX):
        _job_name(wf, field[len(keys.RECORDS_PREFIX):], f"meta field {field[:80]!r}")
        counts = _json(text)
        return isinstance(counts, list) and all(c is None or is_whole_number(c) for c in counts)
    raise InvalidParameter(f"unknown meta field {field[:80]!r} of {wf!r} in the export", workflow=wf,
                           field=field[:80])


def _success_ok(mark) -> bool:
    """Return True for a job's last success as close_batch records it (jobs.readable_mark), its batch id
    a whole number JSON readers keep exact and its times in the range a request may give."""
    return readable_mark(mark, MIN_TIME) and (mark.get("batch_id") is None or is_whole_number(mark["batch_id"]))


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None
