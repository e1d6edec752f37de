"""A tiny in-process front end: what adding one takes is this module and one line of wiring.

It subscribes to the app's job events as the OSC server does (its own name, its listener, how its
origins go into the journal and come back), submits jobs for named clients, and keeps every event
it hears, in order. The wiring is ``TinyFrontEnd(app)`` beside ``OscServer(app, config)``.
"""

from __future__ import annotations

import threading
from typing import Any

from bridge.app.jobs import Job, JobKind
from bridge.options import Request

NAME = "tiny"


class TinyFrontEnd:
    """Submits jobs for named clients (its origins) and hears the events of its own jobs only."""

    def __init__(self, app: Any) -> None:
        self.jobs = app.jobs
        self.heard: list[tuple[str, str, Any, Any]] = []
        """(event, job id, the job's origin, detail) in the order they came."""
        self._cv = threading.Condition()
        self.subscription = app.events.subscribe(NAME, self, describe=self.describe, restore=self.restore)

    def submit(self, client: str, request: Request, job_id: str = "") -> Job:
        return self.jobs.submit(request, job_id, JobKind.GENERATE, origin=client, frontend=NAME)

    def close(self) -> None:
        self.subscription.close()

    # its origins (a client's name) as plain data for the journal, and back after a restart
    @staticmethod
    def describe(client: Any) -> dict[str, Any]:
        return {"client": client}

    @staticmethod
    def restore(data: Any) -> Any:
        return data.get("client") if isinstance(data, dict) else None

    # what it heard
    def events_of(self, job_id: str) -> list[str]:
        with self._cv:
            return [event for event, heard_id, _origin, _detail in self.heard if heard_id == job_id]

    def job_ids(self) -> set[str]:
        with self._cv:
            return {heard_id for _event, heard_id, _origin, _detail in self.heard}

    def wait_end(self, job_id: str, timeout: float = 30.0) -> tuple[str, str, Any, Any]:
        """The ``done`` or ``fail`` of ``job_id``, once it has come."""
        def end() -> tuple[str, str, Any, Any] | None:
            return next((h for h in self.heard if h[1] == job_id and h[0] in ("done", "fail")), None)

        with self._cv:
            if not self._cv.wait_for(lambda: end() is not None, timeout):
                raise AssertionError(f"job {job_id} did not end; heard: {self.heard}")
            found = end()
            assert found is not None
            return found

    # the listener
    def queued(self, job: Job, position: int) -> None:
        self._hear("queued", job, position)

    def progress(self, job: Job, fraction: float) -> None:
        self._hear("progress", job, fraction)

    def chunk(self, job: Job, chunk: Any) -> None:
        self._hear("chunk", job, chunk.index)

    def warning(self, job: Job, message: str) -> None:
        self._hear("warning", job, message)

    def done(self, job: Job, result: Any) -> None:
        self._hear("done", job, [str(p) for p in result.paths])

    def fail(self, job: Job, error: Any) -> None:
        self._hear("fail", job, error.code)

    def _hear(self, event: str, job: Job, detail: Any) -> None:
        with self._cv:
            self.heard.append((event, job.id, job.origin, detail))
            self._cv.notify_all()
