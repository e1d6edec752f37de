"""What a job is, as every layer sees it: its kind, its state, who hears about it (the listener).

:class:`Job` is one accepted request from queued to done, failed or cancelled; a front end's
:class:`JobListener` receives the events of its jobs (the OSC server turns them into replies;
:mod:`bridge.app.job_events` says who hears which job); :class:`Runner` is what the queue needs of
the facade. The queue that moves jobs is :mod:`bridge.app.jobs`.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bridge.errors import BridgeError

if TYPE_CHECKING:
    from bridge.app.results import Chunk, JobResult
    from bridge.options import Request

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
    """Receives a front end's job events (:meth:`bridge.app.job_events.JobEvents.subscribe`)."""

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
    frontend: str = ""
    """The name of the front end that submitted it ("": none; its events go to those hearing unclaimed jobs)."""
    origin: Any = None
    """Where replies go, as the front end that submitted it understands it (opaque to the app)."""
    state: str = "queued"  # queued | running | done | failed | cancelled
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    result: JobResult | None = None
    error: BridgeError | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancel_reason: str = field(default="", repr=False)
    _last_progress: float = field(default=-1.0, repr=False)
    _announced: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set once ``queued`` went out: the worker waits for it, so ``queued`` is always a job's first reply."""
    _enqueued: bool = field(default=False, repr=False)

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")
