"""What a route gets to work with: the :class:`Context` of one message and the services behind it.

The services are Protocols of what the composition root (:class:`bridge.app.root.App`) hands the
OSC front end, so routes are tested with stand-ins and never see the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bridge.app.job_events import OSC, JobEvents
from bridge.app.jobs import Job, JobKind, JobQueue
from bridge.errors import BadArgs, BridgeError, NotFound
from bridge.frontends.osc.fail import FAIL, fail_args

if TYPE_CHECKING:
    from bridge.config import Config


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


class LinkView(Protocol):
    """The Ableton Link session (:class:`bridge.app.link.LinkSession`): its state now."""

    def state(self) -> Any: ...


class Services(Protocol):
    """What the composition root hands the OSC front end (:class:`bridge.app.root.App`)."""

    @property
    def bridge(self) -> Facts: ...

    @property
    def jobs(self) -> JobQueue: ...

    @property
    def events(self) -> JobEvents: ...

    @property
    def output(self) -> Output: ...

    @property
    def jam(self) -> JamControl: ...

    @property
    def link(self) -> LinkView | None: ...


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


@dataclass(frozen=True)
class ClipRoots:
    """The folders a client's clip paths must lie in (after links are resolved); ``None``: anywhere.

    A path outside them gets one ``not_found`` that says nothing about the file (whether it
    exists, is a folder, or is audio), so a client cannot probe the machine's files through it.
    """

    roots: tuple[Path, ...] | None = None

    @classmethod
    def from_config(cls, config: Config, guarded: bool) -> ClipRoots:
        """``--allow-dir`` folders plus the output folder; by default off loopback (``guarded``) the
        output folder only, on loopback anywhere (the user's own machine, as before)."""
        if config.allow_dirs is None and not guarded:
            return cls(None)
        roots = [config.resolved_output_dir(),
                 *(Path(os.path.expanduser(str(d))).resolve() for d in config.allow_dirs or ())]
        return cls(tuple(dict.fromkeys(roots)))

    def check(self, path: str, what: str) -> str:
        """``path`` as the bridge will read it (resolved when roots apply), or NotFound/BadArgs."""
        if not path:
            raise BadArgs(f"{what} path is empty: give the full path of an audio file")
        if self.roots is None:
            if not Path(path).expanduser().exists():
                raise NotFound(f"{what} {path} does not exist on the bridge's machine: give a full path it can read")
            return path
        try:
            resolved = Path(path).expanduser().resolve()
            inside = any(resolved.is_relative_to(root) for root in self.roots)
        except (OSError, RuntimeError, ValueError):
            inside = False
        if not inside:
            raise NotFound(f"{what}: no file this bridge may read at that path. Clips must be under "
                           f"{', '.join(str(r) for r in self.roots)} (the output folder and `serve --allow-dir` folders)")
        if not resolved.exists():
            raise NotFound(f"{what} {path} does not exist on the bridge's machine: give a full path it can read")
        return str(resolved)


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
    """The sender, as the server's replies understand it: the origin of the jobs this message submits."""
    clips: ClipRoots = ClipRoots()
    """Where the client may read clips from (``serve --allow-dir``)."""

    @property
    def bridge(self) -> Facts:
        return self.app.bridge

    @property
    def jobs(self) -> JobQueue:
        return self.app.jobs

    def clip(self, path: str, what: str = "clip") -> str:
        """A clip path the client may read (see :class:`ClipRoots`), as the bridge will read it."""
        return self.clips.check(path, what)

    def submit(self, job_id: str, request: Any, kind: JobKind) -> Job:
        clip = getattr(request, "clip", None)
        if isinstance(clip, str) and self.clips.roots is not None:
            self.clips.check(clip, "clip")  # a preset's own clip too
        return self.jobs.submit(request, job_id=job_id, kind=kind, origin=self.origin, frontend=OSC)

    def fail(self, error: BridgeError, job_id: str = "") -> None:
        """Answer this message with ``/musicgen/fail`` later, from another thread (what the server does for a raise)."""
        self.reply(FAIL, fail_args(self.address, job_id, error))
