"""What a route gets to work with: the :class:`Context` of one message and the services behind it.

The services are Protocols of what the composition root (:class:`bridge.app.root.App`) hands the
OSC front end, so routes are tested with stand-ins and never see the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bridge.app.jobs import Job, JobKind, JobQueue
from bridge.errors import BridgeError


class RouteIndex(Protocol):
    """The routes themselves, for the addresses that describe the API (:class:`~bridge.frontends.osc.routes.RouteTable`)."""

    def get(self, address: str) -> Any: ...

    def addresses(self) -> list[str]: ...

    def suggest(self, address: str) -> str: ...


class Peers(Protocol):
    """The reply ports registered for the sender's host (the server's reply router)."""

    def register(self, port: int) -> None: ...

    def unregister(self, port: int) -> None: ...


class Facts(Protocol):
    """What routes ask of the facade (:class:`bridge.app.bridge.Bridge`): facts and validated requests."""

    def info(self) -> dict[str, Any]: ...

    def make_request(self, mode: str, prompt: str, seconds: float | None, clip: str | None,
                     options: dict[str, Any], clip_after: str | None = None) -> Any: ...

    def preset_request(self, bank: str, preset: str, options: dict[str, Any]) -> Any: ...


class Output(Protocol):
    """The output device (:class:`bridge.app.output.OutputDevice`): its calls return at once."""

    @property
    def underruns(self) -> int: ...

    def play(self, path: str, done: Callable[[Path | None, BridgeError | None], None]) -> None: ...

    def stop(self, done: Callable[[BridgeError | None], None]) -> None: ...


class JamControl(Protocol):
    """The jam controller (:class:`bridge.app.jam.JamController`)."""

    def set(self, changes: dict[str, Any]) -> dict[str, Any]: ...

    def stop(self) -> None: ...


class Services(Protocol):
    """What the composition root hands the OSC front end (:class:`bridge.app.root.App`)."""

    @property
    def bridge(self) -> Facts: ...

    @property
    def jobs(self) -> JobQueue: ...

    @property
    def output(self) -> Output: ...

    @property
    def jam(self) -> JamControl: ...


ADDRESS_OF: dict[JobKind, str] = {
    JobKind.GENERATE: "/musicgen/generate",
    JobKind.CONTINUE: "/musicgen/continue",
    JobKind.MELODY: "/musicgen/melody",
    JobKind.PRESET: "/musicgen/preset",
    JobKind.JAM: "/musicgen/jam/start",
    JobKind.LOOP: "/musicgen/loop",
    JobKind.INFILL: "/musicgen/infill",
}
"""The request address of each kind of job: ``done``, ``fail`` and ``/musicgen/job`` name it."""


@dataclass
class Context:
    """Everything a route may touch while it handles one message."""

    address: str
    app: Services
    routes: RouteIndex
    reply: Callable[[str, Sequence[Any]], None]
    """Send a message back to the sender (the server decides where that is; safe from any thread)."""
    peers: Peers
    origin: Any = None
    describe: Callable[[Any], Any] | None = None
    """The requester as plain data, kept in the job journal so replies find it after a restart."""

    @property
    def bridge(self) -> Facts:
        return self.app.bridge

    @property
    def jobs(self) -> JobQueue:
        return self.app.jobs

    def submit(self, job_id: str, request: Any, kind: JobKind) -> Job:
        reply = self.describe(self.origin) if self.describe is not None else None
        return self.jobs.submit(request, job_id=job_id, kind=kind, origin=self.origin, reply=reply)

    def fail(self, error: BridgeError, job_id: str = "") -> None:
        """Answer this message with ``/musicgen/fail`` later, from another thread (what the server does for a raise)."""
        self.reply("/musicgen/fail", [self.address, job_id, error.code, error.message])
