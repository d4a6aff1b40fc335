"""Chunk fencing (issue 21): a lease answers a lease_token of 128 random bits; renew, close and
fail of its attempt need it, so a rogue call guessing (chunk, attempt) changes nothing."""
from __future__ import annotations

import json

import pytest

from . import test_backfill
from .test_backfill import create, lease

any_client, jobs_cfg = test_backfill.any_client, test_backfill.jobs_cfg  # its fixtures: workflow bf, both stores


def test_a_lease_answers_a_random_token_of_128_bits_that_no_read_shows(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-03&job=customers")["backfill_id"]
    first, second = lease(any_client, bid), lease(any_client, bid)
    for got in (first, second):
        assert len(got["lease_token"]) == 32 and int(got["lease_token"], 16) >= 0
    assert first["lease_token"] != second["lease_token"]
    shown = json.dumps(any_client.get(f"/backfill/bf/{bid}").json) + json.dumps(any_client.get("/events/bf").json)
    assert first["lease_token"] not in shown and second["lease_token"] not in shown


@pytest.mark.parametrize("action", ["close", "fail", "renew"])
@pytest.mark.parametrize("token", [None, "", "0" * 32], ids=["missing", "empty", "guessed"])
def test_a_call_without_the_lease_token_is_a_409_that_changes_nothing(any_client, action, token):
    bid = create(any_client, "from=2024-03-01&to=2024-03-02&job=customers")["backfill_id"]
    held = lease(any_client, bid)
    before = any_client.get(f"/backfill/bf/{bid}").json
    events = any_client.get("/events/bf").json["events"]
    body = {"chunk": 0, "attempt": held["attempt"], "records_processed": 5}
    if token is not None:
        body["lease_token"] = token
    if action == "renew":
        body = {k: v for k, v in body.items() if k != "records_processed"} | {"lease_seconds": 7200}
    r = any_client.post(f"/backfill/bf/{bid}/{action}", json=body)
    assert r.status_code == 409 and r.json["error"] == "wrong_lease_token", r.json
    assert r.json["status"] == 409 and "lease_token" in r.json["message"] and "nothing changed" in r.json["message"]
    assert ("without the lease_token" in r.json["message"]) == (not token)
    assert any_client.get(f"/backfill/bf/{bid}").json == before
    assert any_client.get("/events/bf").json["events"] == events
    assert any_client.get("/coverage/bf?job=customers").json["customers"]["covered"] == []
    r = any_client.post(f"/backfill/bf/{bid}/close", json={"chunk": 0, "attempt": held["attempt"],
                                                          "lease_token": held["lease_token"]})
    assert r.status_code == 200 and r.json["status"] == "success"  # the holder still can


def test_a_retried_close_needs_the_token_too_and_an_old_attempts_token_is_stale(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-02&job=customers")["backfill_id"]
    first = lease(any_client, bid)
    any_client.post(f"/backfill/bf/{bid}/fail", json={"chunk": 0, "attempt": 1, "lease_token": first["lease_token"]})
    second = lease(any_client, bid)
    r = any_client.post(f"/backfill/bf/{bid}/close", json={"chunk": 0, "attempt": 2, "lease_token": first["lease_token"]})
    assert r.status_code == 409 and r.json["error"] == "wrong_lease_token"  # attempt 1's token is not attempt 2's
    ok = {"chunk": 0, "attempt": 2, "lease_token": second["lease_token"]}
    assert any_client.post(f"/backfill/bf/{bid}/close", json=ok).status_code == 200
    assert any_client.post(f"/backfill/bf/{bid}/close", json=ok).status_code == 200  # a retry: the same answer
    r = any_client.post(f"/backfill/bf/{bid}/close", json={"chunk": 0, "attempt": 2})
    assert r.status_code == 409 and r.json["error"] == "wrong_lease_token"


def test_random_rogue_closes_never_succeed(any_client):
    """The issue's attack: closes guessing (chunk, attempt) marked 10 % of running chunks success."""
    bid = create(any_client, "from=2024-03-01&to=2024-03-11&job=customers")["backfill_id"]
    held = [lease(any_client, bid) for _ in range(10)]
    for got in held:
        for attempt in (1, 2):
            r = any_client.post(f"/backfill/bf/{bid}/close?chunk={got['chunk']}&attempt={attempt}")
            assert r.status_code == 409
    assert any_client.get(f"/backfill/bf/{bid}").json["progress"]["success"] == 0
