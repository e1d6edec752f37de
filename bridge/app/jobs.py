"""The job queue: a bounded queue and the one worker thread that owns the engine.

Every front end (OSC, MIDI, the CLI) submits :class:`Job` s here, under its name and with its own
origin. The worker runs them one at a time through ``bridge.run`` and publishes each step to the
front end's :class:`JobListener` (:class:`~bridge.app.job_events.JobEvents`: each front end hears
its own jobs): ``queued`` first, ``progress`` at most ~10 times a second, ``chunk`` while
streaming, then exactly one ``done`` or ``fail``, always with the client's id. A full queue is
:class:`~bridge.errors.Busy` at :meth:`JobQueue.submit`; cancel takes a queued job out of the
queue, and stops a running one at its next step (a decoding step, or between post-processing
stages and variations). The last finished jobs are remembered, for ``/musicgen/job``.

With a :class:`~bridge.app.journal.Journal`, every accepted job is on disk (fsynced) before its
``queued`` goes out, its start and its end are recorded, and :meth:`JobQueue.restore` brings the
jobs a crash interrupted back into the queue in their order, with their ids, seeds and origins;
one that was running at two crashes in a row is failed (``internal``) instead of run a third time.

No disk write and no listener call happens under the queue's lock, and with a journal the
submitting thread (the OSC loop) does not wait for the disk either: :meth:`JobQueue.submit` checks
the request's place and hands the job to the intake thread, which journals it (fsync), queues it
and reports ``queued``, or ``fail storage`` when the disk refuses. Listener calls come from the
submitting thread (``queued`` without a journal; ``fail`` for a job cancelled while queued), the
intake thread and the worker, never two for one job at the same time; a listener must not call
back into the queue from ``queued``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.app.job_events import JobEvents
from bridge.app.job_restore import jobs_from_journal
from bridge.app.job_types import ALL, MAX_ID_LENGTH, Job, JobKind, JobListener, NullListener, Runner
from bridge.errors import BadArgs, BridgeError, Busy, Cancelled, Internal, NotFound

if TYPE_CHECKING:
    from bridge.app.journal import Journal, JournalEntry
    from bridge.app.results import Chunk, JobResult
    from bridge.options import Request

__all__ = ["ALL", "MAX_ID_LENGTH", "Job", "JobEvents", "JobKind", "JobListener", "JobQueue", "NullListener", "Runner"]

log = logging.getLogger(__name__)

ANNOUNCE_WAIT = 10.0
"""Seconds a job's end waits for its ``queued`` to go out first (another thread is sending it)."""

SHUTTING_DOWN = "the bridge is shutting down; send the job again once it is back"


class JobQueue:
    """A bounded queue of jobs and the one worker thread that runs them on the engine."""

    def __init__(self, bridge: Runner, maxsize: int = 16, events: JobEvents | None = None, *,
                 progress_interval: float = 0.1, journal_size: int = 64, journal: Journal | None = None,
                 on_worker_start: Callable[[], object] | None = None) -> None:
        if maxsize < 1:
            raise BadArgs(f"the queue size must be 1 or more, got {maxsize}")
        self.bridge = bridge
        self.maxsize = maxsize
        self.events = events if events is not None else JobEvents()
        """Who hears which job's events: front ends subscribe here."""
        self.progress_interval = progress_interval
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._intake: deque[tuple[Job, Any]] = deque()  # accepted, not yet journaled (with where replies go)
        self._running: Job | None = None
        self._finished: deque[Job] = deque(maxlen=journal_size)  # the last ended jobs, for find()
        self.journal = journal
        self._closing = False
        self._thread: threading.Thread | None = None
        self._intake_thread: threading.Thread | None = None
        self._numbers = itertools.count(1)
        self._id_salt = secrets.token_hex(3)
        # run first on the worker thread: the daemon lowers its priority there (bridge/compute.py)
        self._on_worker_start = on_worker_start

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (and, with a journal, the intake thread) once; :meth:`submit` starts them too."""
        with self._lock:
            if self._closing:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="musicgen-worker", daemon=True)
                self._thread.start()
            if self.journal is not None and self._intake_thread is None:
                self._intake_thread = threading.Thread(target=self._take_in, name="musicgen-intake", daemon=True)
                self._intake_thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, cancel the queued and the running one (each reported), join the threads."""
        with self._lock:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            running = self._running
            if running is not None:
                self._request_cancel(running, f"job {running.id} was cancelled: {SHUTTING_DOWN}")
            self._wake.notify_all()
            thread, intake = self._thread, self._intake_thread
        for job in waiting:
            self._finish(job, error=Cancelled(f"job {job.id} was cancelled: {SHUTTING_DOWN}"))
        if intake is not None and intake is not threading.current_thread():
            intake.join(timeout)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive() and running is not None:
                log.warning("job %s did not stop within %.0f s of its cancel; reporting it cancelled", running.id,
                            timeout)
                self._finish(running, error=Cancelled(f"job {running.id} was cancelled: {SHUTTING_DOWN}"))

    # -- requests ---------------------------------------------------------------------------
    def submit(self, request: Request, job_id: str = "", kind: JobKind = JobKind.GENERATE,
               origin: Any = None, *, frontend: str = "") -> Job:
        """Accept a job and have it reported ``queued``; raise Busy when the queue is full.

        ``job_id`` "" lets the queue pick a unique one. An id that is still queued or running
        is refused (BadArgs), so replies and cancels always name one job. ``frontend`` names the
        front end whose listener hears the job's events, ``origin`` is its own (opaque here); ""
        is none (the job is unclaimed, see :mod:`bridge.app.job_events`). With a journal, the
        intake thread writes the job to disk before it is queued (a disk that refuses ends it
        ``fail storage``), with its origin as that front end describes it (for a restart) and its
        seed fixed, so running it again gives the same result.
        """
        if len(job_id) > MAX_ID_LENGTH:
            raise BadArgs(f"job id is {len(job_id)} characters long: keep it under {MAX_ID_LENGTH}")
        if job_id == ALL:
            raise BadArgs(f"{ALL!r} means every job and cannot be a job id: pick another id, or \"\"")
        self.start()
        reply = self.events.record(frontend, origin) if self.journal is not None else None
        with self._lock:
            if self._closing:
                raise Busy("the bridge is shutting down and takes no new jobs; send it again once it is back")
            if not job_id:
                job_id = f"job-{self._id_salt}-{next(self._numbers)}"
            elif self._find_active(job_id) is not None:
                raise BadArgs(f"job id {job_id!r} is already queued or running: use a new id for each job "
                              "(or \"\" and the bridge picks one)")
            if len(self._waiting) + len(self._intake) >= self.maxsize:
                raise Busy(f"the queue is full ({self.maxsize} jobs waiting): wait for a /musicgen/done, cancel "
                           "jobs, or start the bridge with a larger --queue")
            job = Job(id=job_id, request=request, kind=kind, frontend=frontend, origin=origin)
            if self.journal is not None:
                self._intake.append((job, reply))
                self._wake.notify_all()
                return job
            position = self._enqueue(job)
        self._announce(job, position)
        return job

    def cancel(self, job_id: str) -> list[Job]:
        """Cancel one job by id, or every job with ``*``; return the jobs hit.

        A queued job leaves the queue and is reported ``fail ... cancelled`` at once; a running one
        is reported when it stops, at its next step. An unknown id is NotFound (``*`` with nothing
        to cancel is not an error).
        """
        with self._lock:
            taken = [job for job in self._waiting if job_id in (ALL, job.id)]
            for job in taken:
                self._waiting.remove(job)
            flagged = [job for job, _reply in self._intake if job_id in (ALL, job.id) and not job.is_cancelled()]
            running = self._running
            if running is not None and job_id in (ALL, running.id) and not running.is_cancelled():
                flagged.append(running)
            if not taken and not flagged and job_id != ALL:
                raise NotFound(f"no queued or running job has id {job_id!r}: it may have finished already "
                               "(/musicgen/job tells how it ended)")
            for job in flagged:  # the intake or the worker reports these when they stop
                self._request_cancel(job, f"job {job.id} was cancelled by a client")
        for job in taken:
            self._finish(job, error=Cancelled(f"job {job.id} was cancelled by a client before it started"))
        return taken + flagged

    def restore(self, entries: list[JournalEntry], ended: list[JournalEntry], *, fresh: bool = False) -> list[Job]:
        """After a restart: queue the jobs the journal holds unfinished, in their order, and remember the ended ones.

        Each keeps its id, kind, request (with its seed), front end and origin (turned back by that
        front end's subscription: call this once the front ends have subscribed). A jam is not
        resumed, and with ``fresh`` nothing is: those end cancelled, told to their front end. A job
        whose record cannot be read (a damaged journal), and one that was running each of the
        last two times the bridge died, end ``fail internal`` saying so. Restored jobs may exceed
        the queue's bound: they were accepted before. Returns the jobs queued again.
        """
        finished, again, refused = jobs_from_journal(entries, ended, self.events, fresh=fresh)
        self.start()
        with self._lock:
            self._finished.extend(finished)
            queued = [(job, self._enqueue(job)) for job in again]
        for job, error in refused:
            if isinstance(error, Internal):
                log.warning("%s", error.message)
            self._finish(job, error=error)
        for job, position in queued:
            self._announce(job, position)
        if queued:
            log.info("restored %d job(s) from the journal: %s", len(queued), ", ".join(j.id for j, _ in queued))
        return [job for job, _ in queued]

    # -- facts ------------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, Job | None]:
        """(jobs waiting, the running job or None)."""
        with self._lock:
            return len(self._waiting) + len(self._intake), self._running

    def find(self, job_id: str) -> Job | None:
        """A queued or running job, or one of the recently finished ones, by id."""
        with self._lock:
            active = self._find_active(job_id)
            if active is not None:
                return active
            for job in reversed(self._finished):
                if job.id == job_id:
                    return job
            return None

    def recent(self) -> list[Job]:
        """The journal: recently finished jobs, oldest first."""
        with self._lock:
            return list(self._finished)

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Wait until ``job`` has ended (done, failed or cancelled); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while job.active:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._wake.wait(0.05 if left is None else min(left, 0.05))
            return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._waiting or self._intake or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
            return True

    # -- the intake (with a journal) ------------------------------------------------------------
    def _take_in(self) -> None:
        """Journal each accepted job (fsync, off the submitting thread), then queue and announce it."""
        journal = self.journal
        if journal is None:
            return
        while True:
            with self._lock:
                while not self._intake and not self._closing:
                    self._wake.wait()
                if not self._intake:
                    return
                job, reply = self._intake[0]
                closing = self._closing
            if closing:
                with self._lock:
                    self._intake.popleft()
                self._finish(job, error=Cancelled(f"job {job.id} was cancelled: {SHUTTING_DOWN}"))
                continue
            try:
                entry = journal.accept(job.id, job.request, job.kind.value, reply=reply)
            except BridgeError as exc:
                with self._lock:
                    self._intake.popleft()
                self._finish(job, error=exc)  # the disk refused it: the job was never queued
                continue
            with self._lock:
                self._intake.popleft()
                job.request = entry.request or job.request
                closing = self._closing
                position = -1 if closing else self._enqueue(job)
            if closing:  # close() came while it was being journaled: it ends cancelled, recorded so
                self._finish(job, error=Cancelled(f"job {job.id} was cancelled: {SHUTTING_DOWN}"))
                continue
            self._announce(job, position)
            if job.is_cancelled():  # cancelled while it was being journaled
                with self._lock:
                    taken = job in self._waiting
                    if taken:
                        self._waiting.remove(job)
                if taken:
                    self._finish(job, error=Cancelled(job._cancel_reason + " before it started"))

    def _enqueue(self, job: Job) -> int:
        """Put ``job`` at the back of the queue (the lock held); return its position."""
        job._enqueued = True
        position = len(self._waiting) + (1 if self._running is not None else 0)
        self._waiting.append(job)
        self._wake.notify_all()
        return position

    def _announce(self, job: Job, position: int) -> None:
        self._emit("queued", job, position)
        job._announced.set()

    # -- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
        if self._on_worker_start is not None:
            self._on_worker_start()
        while True:
            with self._lock:
                while not self._waiting and not self._closing:
                    self._wake.wait()
                if not self._waiting:
                    return
                job = self._waiting.popleft()
                self._running = job
                job.state = "running"
                job.started = time.monotonic()
            job._announced.wait(ANNOUNCE_WAIT)  # its "queued" goes out first
            self._record("start", job.id)
            try:
                self._run(job)
            finally:
                with self._lock:
                    self._running = None
                    self._wake.notify_all()

    def _run(self, job: Job) -> None:
        def progress(fraction: float) -> None:
            now = time.monotonic()
            if job.is_cancelled() or now - job._last_progress < self.progress_interval:
                return
            job._last_progress = now
            self._emit("progress", job, max(0.0, min(1.0, float(fraction))))

        def on_chunk(chunk: Chunk) -> None:
            self._emit("chunk", job, chunk)

        def on_warning(message: str) -> None:
            self._emit("warning", job, message)

        try:
            result = self.bridge.run(job.id, job.request, progress, job.is_cancelled, on_chunk, on_warning)
        except Cancelled as exc:
            self._finish(job, error=Cancelled(job._cancel_reason or exc.message))
        except BridgeError as exc:
            self._finish(job, error=exc)
        except Exception as exc:
            log.exception("job %s failed with an unexpected error", job.id)
            self._finish(job, error=Internal(f"job {job.id} hit a bug in the bridge ({type(exc).__name__}: {exc}); "
                                             "please report it with the daemon's log"))
        else:
            self._finish(job, result=result)

    def _request_cancel(self, job: Job, reason: str) -> None:
        job._cancel_reason = reason
        job._cancel.set()

    def _find_active(self, job_id: str) -> Job | None:
        if self._running is not None and self._running.id == job_id:
            return self._running
        for job in self._waiting:
            if job.id == job_id:
                return job
        for job, _reply in self._intake:
            if job.id == job_id:
                return job
        return None

    def _finish(self, job: Job, result: JobResult | None = None, error: BridgeError | None = None) -> None:
        """Record the end of a job and report it: exactly once per job, whoever gets here first.

        Never called with the lock held: the journal's fsync and the reply happen outside it.
        """
        with self._lock:
            if not job.active:
                return
            job.finished = time.monotonic()
            job.result = result
            job.error = error
            if error is None:
                job.state = "done"
            else:
                job.state = "cancelled" if isinstance(error, Cancelled) else "failed"
            self._finished.append(job)
            self._wake.notify_all()
        if job._enqueued:
            job._announced.wait(ANNOUNCE_WAIT)  # another thread may still be sending its "queued"
        # on disk before the requester hears it: a crash in between never runs the job twice
        if error is None and result is not None:
            self._record("end", job.id, "done", paths=[str(p) for p in result.paths], seconds=result.seconds)
            self._emit("done", job, result)
        else:
            err = error if error is not None else Internal("job ended without a result")
            self._record("end", job.id, job.state, code=err.code, message=err.message)
            self._emit("fail", job, err)

    def _record(self, what: str, *args: Any, **kwargs: Any) -> None:
        """Write a ``start`` or ``end`` record; a journal that cannot be written is logged, the job goes on."""
        if self.journal is None:
            return
        try:
            getattr(self.journal, what)(*args, **kwargs)
        except BridgeError as exc:
            log.error("the job journal could not be written (%s): %s", exc.code, exc.message)

    def _emit(self, event: str, job: Job, payload: Any) -> None:
        self.events.publish(event, job, payload)  # a listener that raises is logged there, never raised here
