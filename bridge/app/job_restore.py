"""Jobs back from the journal after a restart: which run again, which end instead, and why.

:meth:`bridge.app.jobs.JobQueue.restore` queues and reports what :func:`jobs_from_journal` sorts.
Each job keeps its id, kind, request (with its seed), front end and origin (turned back by that
front end's subscription, :meth:`bridge.app.job_events.JobEvents.origin_of`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bridge.app.job_types import Job, JobKind
from bridge.errors import BridgeError, Cancelled, Internal, error_for

if TYPE_CHECKING:
    from bridge.app.job_events import JobEvents
    from bridge.app.journal import JournalEntry
    from bridge.options import Request


def jobs_from_journal(entries: list[JournalEntry], ended: list[JournalEntry], events: JobEvents, *,
                      fresh: bool) -> tuple[list[Job], list[Job], list[tuple[Job, BridgeError]]]:
    """(the ended jobs, as they ended; the unfinished ones to run again, in order; those that end instead, and why)."""
    from bridge.app.results import JobResult  # noqa: PLC0415

    finished = []
    for entry in ended:
        job = Job(id=entry.id, request=entry.request or _placeholder(), kind=_kind(entry.kind), state=entry.state)
        if entry.state == "done":
            job.result = JobResult(paths=[Path(p) for p in entry.paths], seconds=entry.seconds or 0.0, sample_rate=0)
        else:
            job.error = error_for(entry.code or "internal", entry.message or "")
        finished.append(job)
    again: list[Job] = []
    refused: list[tuple[Job, BridgeError]] = []
    for entry in entries:
        frontend, origin = events.origin_of(entry.reply)
        job = Job(id=entry.id, request=entry.request or _placeholder(), kind=_kind(entry.kind), frontend=frontend,
                  origin=origin)
        error = _not_run_again(job, entry, fresh)
        if error is not None:
            refused.append((job, error))
        else:
            again.append(job)
    return finished, again, refused


def _not_run_again(job: Job, entry: JournalEntry, fresh: bool) -> BridgeError | None:
    """Why a job the journal held unfinished ends instead of running again, or None when it runs."""
    if fresh:
        return Cancelled(f"job {job.id} was not run again: the bridge was restarted clean (--fresh), so it did not "
                         "run it: send it again")
    if entry.request is None:
        return Internal(f"job {job.id} was not run again: {entry.error}; send it again")
    if job.kind is JobKind.JAM or entry.request.mode == "jam":
        return Cancelled(f"job {job.id} was not run again: the bridge restarted, and a jam is not resumed: "
                         "start it again")
    if entry.poisonous:
        return Internal(f"job {job.id} was running each of the last {entry.attempts} times the bridge stopped "
                        "without finishing it (a crash, or the system killing it for memory), so it is not run "
                        "again: it may be what brings the bridge down. Send it again with a shorter length, fewer "
                        "variations or a lower sample_rate, and report it with the daemon's log")
    return None


def _kind(value: str) -> JobKind:
    try:
        return JobKind(value)
    except ValueError:
        return JobKind.GENERATE


def _placeholder() -> Request:
    from bridge.options import Request  # noqa: PLC0415

    return Request()
