"""The job queue: a bounded queue and the one worker thread that owns the engine.

Every front end (OSC, MIDI, the CLI) submits :class:`Job` s here. The worker runs them one at a
time through ``bridge.run`` and reports each step to a :class:`JobListener`: ``queued`` at once,
``progress`` at most ~10 times a second, ``chunk`` while streaming, then exactly one ``done`` or
``fail``, always with the client's id. A full queue is :class:`~bridge.errors.Busy` at
:meth:`JobQueue.submit`; cancel takes a queued job out of the queue, and stops a running one at
its next decoding step. The last finished jobs are remembered, for ``/musicgen/job``.

With a :class:`~bridge.app.journal.Journal`, every accepted job is on disk (fsynced) before its
``queued`` goes out, its start and its end are recorded, and :meth:`JobQueue.restore` brings the
jobs a crash interrupted back into the queue in their order, with their ids, seeds and requesters.

Listener calls come from the submitting thread (``queued``; ``fail`` for a job cancelled while
queued) and from the worker (the rest), never two for one job at the same time; a listener
must not call back into the queue from ``queued``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bridge.errors import BadArgs, BridgeError, Busy, Cancelled, Internal, NotFound

if TYPE_CHECKING:
    from bridge.app.journal import Journal, JournalEntry
    from bridge.app.results import Chunk, JobResult
    from bridge.options import Request

log = logging.getLogger(__name__)

ALL = "*"
"""The job id that means every job, for :meth:`JobQueue.cancel`."""

MAX_ID_LENGTH = 128


class JobKind(enum.Enum):
    """How a job was asked for; front ends map it to their own words (OSC: the request's address)."""

    GENERATE = "generate"
    CONTINUE = "continue"
    MELODY = "melody"
    PRESET = "preset"
    JAM = "jam"
    LOOP = "loop"
    INFILL = "infill"


class Runner(Protocol):
    """What the queue needs of :class:`bridge.app.bridge.Bridge`."""

    def run(self, job_id: str, request: Request, progress: Callable[[float], None],
            is_cancelled: Callable[[], bool],
            on_chunk: Callable[[Chunk], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> JobResult: ...


class JobListener(Protocol):
    """Receives a job's events; the OSC server turns them into replies."""

    def queued(self, job: Job, position: int) -> None: ...

    def progress(self, job: Job, fraction: float) -> None: ...

    def chunk(self, job: Job, chunk: Chunk) -> None: ...

    def warning(self, job: Job, message: str) -> None: ...

    def done(self, job: Job, result: JobResult) -> None: ...

    def fail(self, job: Job, error: BridgeError) -> None: ...


class NullListener:
    """A listener that ignores everything (a queue nobody watches, e.g. in a one-shot CLI)."""

    def queued(self, job: Job, position: int) -> None:
        del job, position

    def progress(self, job: Job, fraction: float) -> None:
        del job, fraction

    def chunk(self, job: Job, chunk: Chunk) -> None:
        del job, chunk

    def warning(self, job: Job, message: str) -> None:
        del job, message

    def done(self, job: Job, result: JobResult) -> None:
        del job, result

    def fail(self, job: Job, error: BridgeError) -> None:
        del job, error


@dataclass(eq=False)
class Job:
    """One accepted request, from queued to done, failed or cancelled."""

    id: str
    request: Request
    kind: JobKind = JobKind.GENERATE
    origin: Any = None
    """Where replies go, as the front end that submitted it understands it; None: everyone."""
    state: str = "queued"  # queued | running | done | failed | cancelled
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    result: JobResult | None = None
    error: BridgeError | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancel_reason: str = field(default="", repr=False)
    _last_progress: float = field(default=-1.0, repr=False)

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


class JobQueue:
    """A bounded queue of jobs and the one worker thread that runs them on the engine."""

    def __init__(self, bridge: Runner, maxsize: int = 16, listener: JobListener | None = None, *,
                 progress_interval: float = 0.1, journal_size: int = 64, journal: Journal | None = None) -> None:
        if maxsize < 1:
            raise BadArgs(f"the queue size must be 1 or more, got {maxsize}")
        self.bridge = bridge
        self.maxsize = maxsize
        self.listener: JobListener = listener if listener is not None else NullListener()
        self.progress_interval = progress_interval
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._finished: deque[Job] = deque(maxlen=journal_size)  # the last ended jobs, for find()
        self.journal = journal
        self._closing = False
        self._thread: threading.Thread | None = None
        self._numbers = itertools.count(1)
        self._id_salt = secrets.token_hex(3)

    # -- life -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (once); :meth:`submit` starts it too."""
        with self._lock:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._work, name="musicgen-worker", daemon=True)
                self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Refuse new jobs, cancel the queued and the running one (each reported), join the worker."""
        with self._lock:
            self._closing = True
            reason = "the bridge is shutting down; send the job again once it is back"
            for job in list(self._waiting):
                self._waiting.remove(job)
                self._finish(job, error=Cancelled(f"job {job.id} was cancelled: {reason}"))
            running = self._running
            if running is not None:
                self._request_cancel(running, f"job {running.id} was cancelled: {reason}")
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive() and running is not None:
                log.warning("job %s did not stop within %.0f s of its cancel; reporting it cancelled", running.id,
                            timeout)
                self._finish(running, error=Cancelled(f"job {running.id} was cancelled: {reason}"))

    # -- requests ---------------------------------------------------------------------------
    def submit(self, request: Request, job_id: str = "", kind: JobKind = JobKind.GENERATE,
               origin: Any = None, reply: Any = None) -> Job:
        """Queue a job and report it ``queued``; raise Busy when the queue is full.

        ``job_id`` "" lets the queue pick a unique one. An id that is still queued or running
        is refused (BadArgs), so replies and cancels always name one job. With a journal, the
        job is written to disk first (StorageError when it cannot be: the job is refused), with
        ``reply`` (plain data from the front end saying where its replies go, for a restart)
        and its seed fixed, so running it again gives the same result.
        """
        if len(job_id) > MAX_ID_LENGTH:
            raise BadArgs(f"job id is {len(job_id)} characters long: keep it under {MAX_ID_LENGTH}")
        if job_id == ALL:
            raise BadArgs(f"{ALL!r} means every job and cannot be a job id: pick another id, or \"\"")
        self.start()
        with self._lock:
            if self._closing:
                raise Busy("the bridge is shutting down and takes no new jobs; send it again once it is back")
            if not job_id:
                job_id = f"job-{self._id_salt}-{next(self._numbers)}"
            elif self._find_active(job_id) is not None:
                raise BadArgs(f"job id {job_id!r} is already queued or running: use a new id for each job "
                              "(or \"\" and the bridge picks one)")
            if len(self._waiting) >= self.maxsize:
                raise Busy(f"the queue is full ({self.maxsize} jobs waiting): wait for a /musicgen/done, cancel "
                           "jobs, or start the bridge with a larger --queue")
            if self.journal is not None:
                request = self.journal.accept(job_id, request, kind.value, reply=reply).request or request
            job = Job(id=job_id, request=request, kind=kind, origin=origin)
            position = len(self._waiting) + (1 if self._running is not None else 0)
            self._waiting.append(job)
            # reported under the lock, so "queued" always goes out before the worker's first "progress"
            self._emit("queued", job, position)
            self._wake.notify()
            return job

    def cancel(self, job_id: str) -> list[Job]:
        """Cancel one job by id, or every job with ``*``; return the jobs hit.

        A queued job leaves the queue and is reported ``fail ... cancelled`` at once; a running one
        is reported when it stops, at its next decoding step. An unknown id is NotFound
        (``*`` with nothing to cancel is not an error).
        """
        with self._lock:
            hit = [job for job in self._waiting if job_id in (ALL, job.id)]
            running = self._running
            if running is not None and job_id in (ALL, running.id) and not running.is_cancelled():
                hit.append(running)
            if not hit and job_id != ALL:
                raise NotFound(f"no queued or running job has id {job_id!r}: it may have finished already "
                               "(/musicgen/job tells how it ended)")
            for job in hit:
                reason = f"job {job.id} was cancelled by a client"
                if job is running:
                    self._request_cancel(job, reason)
                else:
                    self._waiting.remove(job)
                    self._finish(job, error=Cancelled(reason + " before it started"))
            return hit

    def restore(self, entries: list[JournalEntry], ended: list[JournalEntry],
                origin_for: Callable[[Any], Any], *, fresh: bool = False) -> list[Job]:
        """After a restart: queue the jobs the journal holds unfinished, in their order, and remember the ended ones.

        Each keeps its id, kind, request (with its seed) and requester (``origin_for(entry.reply)``).
        A jam is not resumed, and with ``fresh`` nothing is: those end cancelled, told to their
        requester, as does a job whose request no longer validates. Restored jobs may exceed the
        queue's bound: they were accepted before. Returns the jobs queued again.
        """
        from bridge.app.results import JobResult  # noqa: PLC0415

        self.start()
        queued: list[Job] = []
        with self._lock:
            for entry in ended:
                job = Job(id=entry.id, request=entry.request or _placeholder(), kind=_kind(entry.kind),
                          state=entry.state)
                if entry.state == "done":
                    job.result = JobResult(paths=[Path(p) for p in entry.paths], seconds=entry.seconds or 0.0,
                                           sample_rate=0)
                else:
                    job.error = _error_of(entry.code or "internal", entry.message or "")
                self._finished.append(job)
            for entry in entries:
                job = Job(id=entry.id, request=entry.request or _placeholder(), kind=_kind(entry.kind),
                          origin=origin_for(entry.reply))
                if fresh or not entry.resumable:
                    if fresh:
                        why = "the bridge was restarted clean (--fresh), so it did not run it: send it again"
                    elif job.kind is JobKind.JAM:
                        why = "the bridge restarted, and a jam is not resumed: start it again"
                    else:
                        why = f"the bridge restarted and cannot run it again ({entry.error}): send it again"
                    self._finish(job, error=Cancelled(f"job {job.id} was not run again: {why}"))
                    continue
                self._waiting.append(job)
                queued.append(job)
                self._emit("queued", job, len(self._waiting) - 1 + (1 if self._running is not None else 0))
            self._wake.notify()
        if queued:
            log.info("restored %d job(s) from the journal: %s", len(queued), ", ".join(j.id for j in queued))
        return queued

    # -- facts ------------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, Job | None]:
        """(jobs waiting, the running job or None)."""
        with self._lock:
            return len(self._waiting), self._running

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
            while self._waiting or self._running is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
            return True

    # -- the worker -------------------------------------------------------------------------
    def _work(self) -> None:
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
        return None

    def _finish(self, job: Job, result: JobResult | None = None, error: BridgeError | None = None) -> None:
        """Record the end of a job and report it: exactly once per job, whoever gets here first."""
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
        try:
            getattr(self.listener, event)(job, payload)
        except Exception:
            # A listener that breaks (a closed socket, a bug) must not take the worker down with it.
            log.exception("the job listener failed on %s for job %s", event, job.id)


def _kind(value: str) -> JobKind:
    try:
        return JobKind(value)
    except ValueError:
        return JobKind.GENERATE


def _placeholder() -> Request:
    from bridge.options import Request  # noqa: PLC0415

    return Request()


def _error_of(code: str, message: str) -> BridgeError:
    """A BridgeError that reports ``code`` (as recorded in the journal) with ``message``."""
    error = BridgeError(message)
    error.code = code
    return error
