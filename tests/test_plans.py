"""The pure plans: each state change computed from a State, no Redis involved."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from batchy.storage import bookkeeping, keys
from batchy.rules import plans
from batchy.rules.state import SNAPSHOT_NEW, SNAPSHOT_UPDATE, Book
from batchy.errors import JobNotFound, WorkflowExists
from batchy.rules.jobs import Status

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
EPOCH = int(NOW.timestamp())


def state(jobs, **meta):
    return bookkeeping.state("wf", NOW, jobs, {k: str(v) for k, v in meta.items()}, {})


def meta_of(change) -> dict[str, str]:
    """The meta hash fields a change writes, as storage encodes its values."""
    return bookkeeping.fields(change.book)


def test_batch_id_is_the_open_second_unless_taken():
    assert plans.next_batch_id(NOW, None) == EPOCH
    assert plans.next_batch_id(NOW, EPOCH) == EPOCH + 1  # a second open in the same second
    assert plans.next_batch_id(NOW, EPOCH + 40) == EPOCH + 41  # ids never go back
    assert plans.next_batch_id(NOW, EPOCH, floor=EPOCH + 5) == EPOCH + 5  # past a taken key


def test_open_writes_every_job_and_abandons_the_running_batch():
    jobs = {"a": {"status": "open", "batch_id": 7, "from_date": "2024-01-01T00:00:00+00:00",
                  "batch_start": "2024-02-01T00:00:00+00:00"},
            "b": {"status": "success", "batch_id": 7, "from_date": "2024-01-01T00:00:00+00:00",
                  "batch_start": "2024-02-01T00:00:00+00:00", "reprocess_hours": 1}}
    change = plans.plan_open(state(jobs, last_batch_id=7))
    assert change.batch_id == EPOCH and meta_of(change) == {keys.LAST_BATCH_ID: str(EPOCH)}
    assert {name: job["status"] for name, job in change.writes.items()} == {"a": "open", "b": "open"}
    assert change.writes["a"]["from_date"] == "2024-01-01T00:00:00+00:00"  # never closed: same window
    assert change.writes["b"]["from_date"] == "2024-01-31T23:00:00+00:00"  # success: start - 1 h
    new, old = change.snapshots
    assert (new.batch_id, new.mode) == (EPOCH, SNAPSHOT_NEW)
    assert (old.batch_id, old.mode) == (7, SNAPSHOT_UPDATE)
    assert old.jobs["a"]["status"] == Status.ABANDONED and "b" not in old.jobs


def test_close_records_a_success_mark_only_for_successes():
    window = {"from_date": "2024-03-01T00:00:00+00:00", "to_date": "2024-03-01T11:00:00+00:00"}
    jobs = {"a": {"status": "open", "batch_id": 9, "batch_start": "2024-03-01T11:00:00+00:00", **window},
            "b": {"status": "open", "batch_id": 9, "batch_start": "2024-03-01T11:00:00+00:00", **window}}
    closed = plans.plan_close(state(jobs, last_batch_id=9), Status.SUCCESS, job="a")
    assert list(closed.writes) == ["a"]
    assert sorted(meta_of(closed)) == [keys.coverage_field("a"), keys.success_field("a")]
    assert meta_of(closed)[keys.coverage_field("a")] == f"[[{EPOCH - 12 * 3600}.0,{EPOCH - 3600}.0]]"
    failed = plans.plan_close(state(jobs, last_batch_id=9), Status.FAILED)
    assert failed.action == "fail" and meta_of(failed) == {}


def test_rewind_targets_are_the_batch_windows():
    jobs = {"a": {}, "b": {}}
    snapshot = {"a": {"from_date": "2024-01-05T00:00:00+00:00"}}
    assert plans.rewind_targets("wf", jobs, snapshot, 5) == {"a": datetime(2024, 1, 5, tzinfo=timezone.utc)}
    with pytest.raises(JobNotFound):
        plans.rewind_targets("wf", jobs, snapshot, 5, job="b")  # b did not run in batch 5


def test_import_keeps_batch_ids_increasing_and_refuses_to_overwrite():
    batches = {"100": {"a": {"batch_start": "2024-01-01T00:00:00+00:00"}}, "90": {"a": {}}}
    change = plans.plan_import(state({}, last_batch_id=500), {"a": {}}, batches, Book(last_batch_id=120))
    assert meta_of(change)[keys.LAST_BATCH_ID] == "500"
    starts = {s.batch_id: s.score for s in change.snapshots}
    assert starts == {"100": datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp(), "90": 90.0}
    with pytest.raises(WorkflowExists):
        plans.plan_import(state({"a": {}}), {"a": {}}, {}, Book())


def test_the_audit_event_names_the_watermarks_moved():
    jobs = {"a": {"status": "success", "from_date": "2024-01-01T00:00:00+00:00"}}
    current = state(jobs)
    change = plans.plan_set_from_date(current, datetime(2023, 6, 1, tzinfo=timezone.utc))
    event = bookkeeping.event_fields(change.audit, "10.0.0.1")
    assert event["action"] == "set" and event["actor"] == "10.0.0.1"
    assert event["from_before"] == '{"a":"2024-01-01T00:00:00+00:00"}'
    assert event["from_after"] == '{"a":"2023-06-01T00:00:00+00:00"}'
