"""Job events for the front ends: each subscribes, and hears only its own jobs.

A front end (the OSC server, the CLI, a test's) subscribes once under its name with a
:class:`~bridge.app.job_types.JobListener`, and submits its jobs under that name:
``JobQueue.submit(request, frontend=name, origin=...)``. The origin is the front end's own (the OSC
server's: the peer a request came from); the app never looks inside it. The listener hears
``queued``, ``progress``, ``chunk``, ``warning``, then ``done`` or ``fail`` of its own jobs only.

A job whose front end has no subscription is *unclaimed* (MIDI fires presets without one, and a job
submitted with no front end name): it goes to the subscribers that asked for those
(``unclaimed=True``). The OSC server does, so a preset fired from MIDI is announced to every peer.

With a journal, the queue keeps each job's origin as ``{"frontend": name, "data": ...}``, the data
from its subscription's ``describe``; after a restart that subscription's ``restore`` turns it back
into an origin. A record written before front ends had names (the OSC server's reply address, or
None) is the OSC server's.

Listeners are called outside every lock, from the thread that publishes (the OSC loop, the intake
thread or the worker: ``docs/threads.md``); one that raises is logged and the others still hear.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bridge.errors import Internal

if TYPE_CHECKING:
    from bridge.app.job_types import Job, JobListener

log = logging.getLogger(__name__)

OSC = "osc"
"""The OSC server's front-end name; journal records older than front-end names are its."""


class Subscription:
    """One front end's place among the job events; :meth:`close` ends it."""

    def __init__(self, events: JobEvents, frontend: str, listener: JobListener, *, unclaimed: bool,
                 describe: Callable[[Any], Any] | None, restore: Callable[[Any], Any] | None) -> None:
        self.frontend = frontend
        self.listener = listener
        self.unclaimed = unclaimed
        """Hear the jobs no subscribed front end submitted, too."""
        self.describe = describe
        """The front end's origin as plain JSON-able data, for the journal (None: keep nothing)."""
        self.restore = restore
        """The origin back from what ``describe`` gave (None: the job has no origin after a restart)."""
        self._events = events

    def close(self) -> None:
        """Stop hearing events (a publish already under way may still reach the listener once)."""
        self._events._remove(self)


class JobEvents:
    """The front ends subscribed to job events, and who hears which job."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the subscriptions; no listener is called under it
        self._subscriptions: list[Subscription] = []

    def subscribe(self, frontend: str, listener: JobListener, *, unclaimed: bool = False,
                  describe: Callable[[Any], Any] | None = None,
                  restore: Callable[[Any], Any] | None = None) -> Subscription:
        """Hear the events of the jobs submitted as ``frontend`` (and the unclaimed ones with ``unclaimed``)."""
        subscription = Subscription(self, frontend, listener, unclaimed=unclaimed, describe=describe, restore=restore)
        with self._lock:
            if not frontend or self._find(frontend) is not None:
                raise Internal(f"front end name {frontend!r} is empty or subscribed already: each front end "
                               "subscribes once, under its own name")
            self._subscriptions.append(subscription)
        return subscription

    def publish(self, event: str, job: Job, payload: Any) -> None:
        """Call ``event`` (``queued`` ... ``fail``) on the listeners that hear ``job``."""
        with self._lock:
            hearers = [s for s in self._subscriptions if s.frontend == job.frontend]
            if not hearers:
                hearers = [s for s in self._subscriptions if s.unclaimed]
        for subscription in hearers:
            try:
                getattr(subscription.listener, event)(job, payload)
            except Exception:
                # A listener that breaks (a closed socket, a bug) must not take the worker down with it.
                log.exception("the %s front end's job listener failed on %s for job %s", subscription.frontend,
                              event, job.id)

    def record(self, frontend: str, origin: Any) -> dict[str, Any]:
        """What the journal keeps of a job's origin: ``{"frontend": name, "data": <its describe(origin)>}``."""
        with self._lock:
            subscription = self._find(frontend)
        describe = subscription.describe if subscription is not None else None
        return {"frontend": frontend, "data": describe(origin) if describe is not None else None}

    def origin_of(self, record: Any) -> tuple[str, Any]:
        """(front end, origin) of a journaled job, from :meth:`record`'s data or a record older than it.

        The origin is None when that front end has not subscribed or cannot read its data back.
        """
        if isinstance(record, dict) and isinstance(record.get("frontend"), str):
            frontend, data = record["frontend"], record.get("data")
        else:
            frontend, data = OSC, record  # before front ends had names, only the OSC server's replies were kept
        with self._lock:
            subscription = self._find(frontend)
        restore = subscription.restore if subscription is not None else None
        if restore is None:
            return frontend, None
        try:
            return frontend, restore(data)
        except Exception:
            log.exception("the %s front end could not read a journaled job's origin back; the job runs without one",
                          frontend)
            return frontend, None

    def _find(self, frontend: str) -> Subscription | None:
        """The subscription of ``frontend`` (the lock held)."""
        return next((s for s in self._subscriptions if s.frontend == frontend), None)

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
