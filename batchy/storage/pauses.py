"""Pausing: refuse new batches of one workflow, or of the whole service, until resumed."""
from __future__ import annotations

from typing import Callable

import redis

from . import keys
from ..errors import Paused, WorkflowNotFound
from ..rules.times import format_time


class Pauses:
    """The pause records, their history, and the check every open makes."""

    def __init__(self, client: redis.Redis, events_keep: int, now, not_found: Callable[[str], WorkflowNotFound],
                 style: keys.KeyStyle = keys.CLASSIC):
        self.keys = style
        self.redis = client
        self.events_keep = events_keep
        self.now = now  # () -> Redis' clock
        self.not_found = not_found

    def pause(self, wf: str | None, message: str, actor: str = "") -> dict:
        """Refuse new batches of wf (None: of every workflow) until resumed."""
        if wf is not None and not self.redis.exists(self.keys.workflow(wf)):
            raise self.not_found(wf)
        record = {"message": message, "since": format_time(self.now()), "actor": actor, "scope": wf or "*"}
        self._write(wf, "pause", record, lambda pipe, key: pipe.hset(key, mapping=record))
        return {**record, "paused": True}

    def resume(self, wf: str | None, actor: str = "") -> dict:
        """Allow new batches again."""
        if wf is not None and not self.redis.exists(self.keys.workflow(wf), self.keys.pause(wf)):
            raise self.not_found(wf)
        record = {"message": "", "since": format_time(self.now()), "actor": actor, "scope": wf or "*"}
        self._write(wf, "resume", record, lambda pipe, key: pipe.delete(key))
        return {**record, "paused": False}

    def _write(self, wf, action, record, write) -> None:
        key = self.keys.pause(wf) if wf else self.keys.PAUSE
        cluster = self.keys.cluster
        # On a cluster the keys below live in several slots: no MULTI across them. Each write
        # is idempotent, and a pause or resume that fails half way answers an error to repeat.
        pipe = self.redis.pipeline(transaction=not cluster)
        if cluster and not wf:
            # The service pause as every slot's commit sees it: a marker per slot (keys.pause_marker).
            # A marker never outlives the record: a pause writes the record first, a resume
            # deletes it last, each in a step of its own (a pipeline's nodes answer in any order).
            # A pause or resume that fails half way leaves the service paused, to repeat.
            if action == "pause":
                write(pipe, key)
                pipe.execute()
            markers = self.redis.pipeline(transaction=False)
            for marker in self.keys.pause_markers():
                if action == "pause":
                    markers.set(marker, "1")
                else:
                    markers.delete(marker)
            markers.execute()
            if action != "pause":
                write(pipe, key)
        else:
            write(pipe, key)
        entry = {"time": record["since"], "action": action, "scope": record["scope"],
                 "message": record["message"], "actor": record["actor"]}
        pipe.xadd(self.keys.pause_history(), entry, maxlen=self.events_keep, approximate=True)
        if wf:
            pipe.xadd(self.keys.events(wf), {**entry, "batch_id": ""}, maxlen=self.events_keep, approximate=True)
            if cluster:
                pipe.execute_command("SPUBLISH", self.keys.channel(wf), action)
            else:
                pipe.publish(self.keys.channel(wf), action)
        pipe.execute()

    def status(self, names: list[str]) -> dict:
        """Return the service-wide pause and every paused workflow of names."""
        service = self.redis.hgetall(self.keys.PAUSE)
        pipe = self.redis.pipeline(transaction=False)
        for wf in names:
            pipe.hgetall(self.keys.pause(wf))
        paused = {wf: p for wf, p in zip(names, pipe.execute()) if p}
        return {"service": service or None, "workflows": paused}

    def history(self, limit: int = 100) -> list[dict]:
        """Return pause and resume events, newest first."""
        return [{"id": i, **f} for i, f in self.redis.xrevrange(self.keys.pause_history(), count=limit)]

    def check(self, wf: str) -> None:
        """Raise Paused if wf or the service is paused."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.keys.PAUSE)
        pipe.hgetall(self.keys.pause(wf))
        service, own = pipe.execute()
        pause = own or service
        if pause:
            scope = f"workflow {wf!r}" if own else "the service"
            raise Paused(
                f"{scope} is paused since {pause.get('since')}: {pause.get('message') or 'no reason given'}",
                workflow=wf,
                pause=pause,
            )
