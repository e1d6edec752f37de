"""The OSC addresses: one short function per address; its docstring is the spec.

Each route is registered with :meth:`RouteTable.add`, which declares the typed arguments (checked
against the function's signature at import) and whether trailing ``key value`` options follow.
The first docstring line is the README table's "meaning"; a ``Replies:`` line its "replies".
Routes know nothing of sockets: they get a :class:`Context` and call ``ctx.reply`` and the
application's services (the facade, the job queue, the output device, the jam); raising a
:class:`~bridge.errors.BridgeError` becomes ``/musicgen/fail`` in the server. A route never waits:
what takes time (a job, opening the audio device) runs elsewhere and replies when it is done.
``python -m bridge.frontends.osc.routes`` prints the README table.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.app.jobs import ALL, JobKind
from bridge.errors import BadArgs, BridgeError, NotFound
from bridge.frontends.osc.context import ADDRESS_OF, Context
from bridge.options import closest, parse_options
from bridge.saferepr import safe_repr

# -- argument converters ------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """A typed positional argument: how to show it in usage, and how to convert an OSC value."""

    placeholder: str
    convert: Callable[[Any], Any]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("wants text (OSC type s)")
    return value


def _job_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError('wants a job id: text, or "" to let the bridge pick one')
    return str(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("wants a number")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value.strip())  # a DAW script that sends everything as text still works
        except ValueError:
            raise ValueError("wants a number") from None
    else:
        raise ValueError("wants a number")
    if not math.isfinite(result):
        raise ValueError("wants a finite number")
    return result


def _port(value: Any) -> int:
    number = _number(value)
    if not number.is_integer() or not (1 <= number <= 65535):
        raise ValueError("wants a UDP port number from 1 to 65535")
    return int(number)


ID = Arg("<id>", _job_id)
TEXT = Arg("<text>", _text)
NUMBER = Arg("<number>", _number)
PORT = Arg("<port>", _port)


def arg(placeholder: str, base: Arg) -> Arg:
    """``base`` shown as ``placeholder`` in usage (``arg("<prompt>", TEXT)``)."""
    return Arg(placeholder, base.convert)


# -- the table ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    address: str
    params: tuple[tuple[str, Arg], ...]
    options: str  # "" none | "typed" key/value options | "raw" key/value pairs as given
    handler: Callable[..., None]

    @property
    def arguments(self) -> str:
        """The usage of the arguments, as the README table shows them."""
        words = [a.placeholder for _, a in self.params]
        if self.options:
            words.append("[key value ...]")
        return " ".join(words)

    @property
    def meaning(self) -> str:
        return (inspect.getdoc(self.handler) or "").splitlines()[0].strip()

    @property
    def replies(self) -> str:
        for line in (inspect.getdoc(self.handler) or "").splitlines():
            if line.startswith("Replies:"):
                return line.removeprefix("Replies:").strip()
        return ""

    @property
    def takes_job_id(self) -> bool:
        return bool(self.params) and self.params[0][0] == "job_id"

    def usage(self) -> str:
        return f"{self.address} {self.arguments}".strip()

    def call(self, ctx: Context, args: Sequence[Any]) -> None:
        """Convert ``args`` to the declared types and run the handler; BadArgs says how to call it."""
        need = len(self.params)
        if len(args) < need:
            missing = " ".join(a.placeholder for _, a in self.params[len(args) :])
            raise BadArgs(f"missing {missing}: use {self.usage()}")
        if len(args) > need and not self.options:
            raise BadArgs(f"{len(args) - need} argument(s) too many: use {self.usage()}")
        kwargs: dict[str, Any] = {}
        for position, ((name, spec), value) in enumerate(zip(self.params, args, strict=False), start=1):
            try:
                kwargs[name] = spec.convert(value)
            except ValueError as exc:
                shifted = self.takes_job_id and position > 1 and spec.convert is _text and not isinstance(value, str)
                hint = " (did you forget the <id> first?)" if shifted else ""
                raise BadArgs(f"argument {position} {spec.placeholder} {exc}, got {safe_repr(value)}{hint}: "
                              f"use {self.usage()}") from None
        rest = list(args[need:])
        if self.options == "typed":
            kwargs["options"] = parse_options(rest)
        elif self.options == "raw":
            if len(rest) % 2:
                raise BadArgs(f"settings come in key/value pairs; {safe_repr(rest[-1])} has no value: use {self.usage()}")
            kwargs["settings"] = rest
        self.handler(ctx, **kwargs)


class RouteTable:
    """Address -> route, each declared once (at import)."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add(self, address: str, /, *, options: str = "", **params: Arg) -> Callable[[Callable[..., None]], Callable[..., None]]:
        if not address.startswith("/musicgen/"):
            raise ValueError(f"route {address!r} must live under /musicgen/")
        if options not in ("", "typed", "raw"):
            raise ValueError(f"route {address}: options must be '', 'typed' or 'raw'")

        def register(handler: Callable[..., None]) -> Callable[..., None]:
            expected = ["ctx", *params, *({"typed": ["options"], "raw": ["settings"]}.get(options, []))]
            actual = list(inspect.signature(handler).parameters)
            if actual != expected:
                raise TypeError(f"route {address}: {handler.__name__} takes {actual}, the declaration says {expected}")
            if not inspect.getdoc(handler):
                raise TypeError(f"route {address}: {handler.__name__} needs a docstring (it is the spec)")
            if address in self._routes:
                raise ValueError(f"route {address} is registered twice")
            self._routes[address] = Route(address, tuple(params.items()), options, handler)
            return handler

        return register

    def get(self, address: str) -> Route | None:
        return self._routes.get(address)

    def addresses(self) -> list[str]:
        return list(self._routes)

    def suggest(self, address: str) -> str:
        return closest(address, self._routes)

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def markdown(self) -> str:
        """The README table: address | arguments | replies | meaning."""
        rows = ["| address | arguments | replies | meaning |", "|---|---|---|---|"]
        for route in self:
            cells = [f"`{route.address}`", f"`{route.arguments}`" if route.arguments else "", route.replies,
                     route.meaning]
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return "\n".join(rows)


routes = RouteTable()
"""The addresses of OSC contract v1 (plus a few additions marked in the README)."""

PROMPT = arg("<prompt>", TEXT)
SECONDS = arg("<seconds>", NUMBER)


# -- the bridge -----------------------------------------------------------------------------------


@routes.add("/musicgen/ping")
def ping(ctx: Context) -> None:
    """Check that the bridge is up.

    Replies: `/musicgen/pong <version>`
    """
    ctx.reply("/musicgen/pong", [__version__])


@routes.add("/musicgen/status")
def status(ctx: Context) -> None:
    """What the bridge is doing: idle or busy, its model and device, jobs waiting, the running job.

    Replies: `/musicgen/status <idle|busy> <model> <device> <queued> <running id> <underruns>`
    """
    info = ctx.bridge.info()
    waiting, running = ctx.jobs.snapshot()
    state = "busy" if waiting or running is not None else "idle"
    ctx.reply("/musicgen/status", [state, str(info.get("model", "")), str(info.get("device", "")), waiting,
                                   running.id if running is not None else "", int(ctx.app.output.underruns)])


@routes.add("/musicgen/notify", port=arg("<reply port>", PORT))
def notify(ctx: Context, *, port: int) -> None:
    """Also send this host's replies to another UDP port (the default reply port always gets them).

    Replies: `/musicgen/notify <reply port>`
    """
    ctx.peers.register(port)
    ctx.reply("/musicgen/notify", [port])


@routes.add("/musicgen/unnotify", port=arg("<reply port>", PORT))
def unnotify(ctx: Context, *, port: int) -> None:
    """Stop sending this host's replies to a port registered with `/musicgen/notify` (addition).

    Replies: `/musicgen/unnotify <reply port>`
    """
    ctx.peers.unregister(port)
    ctx.reply("/musicgen/unnotify", [port])


# -- jobs -----------------------------------------------------------------------------------------


@routes.add("/musicgen/generate", options="typed", job_id=ID, prompt=PROMPT, seconds=SECONDS)
def generate(ctx: Context, *, job_id: str, prompt: str, seconds: float, options: dict[str, Any]) -> None:
    """Generate audio from a text prompt; `seconds` may be 0 when the options give `bpm` and `bars`.

    Replies: `/musicgen/queued <id> <position>`, `/musicgen/progress <id> <0..1>`, `/musicgen/chunk <id> <index> <path> <start> <seconds>` (with `stream 1`), then `/musicgen/done <address> <id> <path> <seconds> [<path> ...]` or `/musicgen/fail <address> <id> <code> <message>`
    """
    ctx.submit(job_id, ctx.bridge.make_request("text", prompt, seconds, None, options), JobKind.GENERATE)


@routes.add("/musicgen/continue", options="typed", job_id=ID, clip=arg("<clip path>", TEXT), prompt=PROMPT,
            seconds=SECONDS)
def continue_(ctx: Context, *, job_id: str, clip: str, prompt: str, seconds: float, options: dict[str, Any]) -> None:
    """Continue a clip: the new audio only, sample-aligned to follow it (`include_prompt 1`: clip + new).

    Replies: same as `/musicgen/generate`
    """
    ctx.submit(job_id, ctx.bridge.make_request("continue", prompt, seconds, ctx.clip(clip, "clip"), options),
               JobKind.CONTINUE)


@routes.add("/musicgen/melody", options="typed", job_id=ID, clip=arg("<melody path>", TEXT), prompt=PROMPT,
            seconds=SECONDS)
def melody(ctx: Context, *, job_id: str, clip: str, prompt: str, seconds: float, options: dict[str, Any]) -> None:
    """Generate in the prompt's style following a clip's melody (needs a melody model).

    Replies: same as `/musicgen/generate`
    """
    ctx.submit(job_id, ctx.bridge.make_request("melody", prompt, seconds, ctx.clip(clip, "melody clip"), options),
               JobKind.MELODY)


@routes.add("/musicgen/loop", options="typed", job_id=ID, prompt=PROMPT, seconds=SECONDS)
def loop(ctx: Context, *, job_id: str, prompt: str, seconds: float, options: dict[str, Any]) -> None:
    """Generate a loop that repeats without a seam: exactly `seconds`, or `bars` at `bpm` (`seconds` 0); `candidates` bridges are scored.

    Replies: same as `/musicgen/generate` (no chunks)
    """
    ctx.submit(job_id, ctx.bridge.make_request("loop", prompt, seconds, None, options), JobKind.LOOP)


@routes.add("/musicgen/infill", options="typed", job_id=ID, before=arg("<clip before>", TEXT),
            after=arg("<clip after>", TEXT), prompt=PROMPT, seconds=SECONDS)
def infill(ctx: Context, *, job_id: str, before: str, after: str, prompt: str, seconds: float,
           options: dict[str, Any]) -> None:
    """Fill the gap between two clips: continues the first, leads into the second, at the first's rate (`include_prompt 1`: before + fill + after).

    Replies: same as `/musicgen/generate` (no chunks)
    """
    request = ctx.bridge.make_request("infill", prompt, seconds, ctx.clip(before, "clip before"), options,
                                      clip_after=ctx.clip(after, "clip after"))
    ctx.submit(job_id, request, JobKind.INFILL)


@routes.add("/musicgen/preset", options="typed", job_id=ID, bank=arg("<bank>", TEXT), preset=arg("<preset>", TEXT))
def preset(ctx: Context, *, job_id: str, bank: str, preset: str, options: dict[str, Any]) -> None:
    """Run a preset from a bank; options override the preset's own.

    Replies: same as `/musicgen/generate`
    """
    ctx.submit(job_id, ctx.bridge.preset_request(bank, preset, options), JobKind.PRESET)


@routes.add("/musicgen/cancel", job_id=ID)
def cancel(ctx: Context, *, job_id: str) -> None:
    """Cancel a job by id (`*`: every job); a queued one leaves the queue, a running one stops at its next step.

    Replies: `/musicgen/fail <address> <id> cancelled <message>` for each job, to the job's requester
    """
    ctx.jobs.cancel(job_id)


@routes.add("/musicgen/job", job_id=ID)
def job(ctx: Context, *, job_id: str) -> None:
    """How a job is doing or how it ended; the last 64 finished jobs are remembered (addition).

    Replies: `/musicgen/job <id> <queued|running|done|failed|cancelled> <address> [<path> ... or <code> <message>]`
    """
    if job_id == ALL:
        raise BadArgs("/musicgen/job takes one job id; /musicgen/status shows the running job")
    found = ctx.jobs.find(job_id)
    if found is None:
        raise NotFound(f"no job with id {safe_repr(job_id)} is queued, running or among the recent ones")
    tail: list[Any] = []
    if found.state == "done" and found.result is not None:
        tail = [str(p) for p in found.result.paths]
    elif found.error is not None:
        tail = [found.error.code, found.error.message]
    ctx.reply("/musicgen/job", [found.id, found.state, ADDRESS_OF[found.kind], *tail])


# -- the jam and the output device ----------------------------------------------------------------


@routes.add("/musicgen/jam/start", options="typed", job_id=ID, prompt=PROMPT)
def jam_start(ctx: Context, *, job_id: str, prompt: str, options: dict[str, Any]) -> None:
    """Start a live jam: the bridge keeps continuing its own output through the speakers, in segments of `bars` bars at `bpm` (`play 0`: files only).

    Replies: `/musicgen/queued <id> <position>`, `/musicgen/jam/segment <id> <index> <path> <beat>` per segment (the Link session's beat its first sample is heard on with `sync link`, else -1), `/musicgen/warning <id> <message>` when the machine generates slower than real time (it pre-rolls, saying how long), then `/musicgen/done /musicgen/jam/start <id> <path of the whole take> <seconds>` after `/musicgen/jam/stop`
    """
    request = ctx.bridge.make_request("jam", prompt, None, None, {"play": True} | options)
    ctx.submit(job_id, request, JobKind.JAM)


@routes.add("/musicgen/jam/set", options="raw")
def jam_set(ctx: Context, *, settings: list[Any]) -> None:
    """Change the jam (prompt, preset bank/name, temperature, guidance, bpm, bars, ...) from its next segment on (`glide_bars N`: glide there over N bars).

    Replies: `/musicgen/jam/set <key> <value> ...` with the settings the next segment will use
    """
    if len(settings) % 2:
        raise BadArgs(f"jam settings come in key/value pairs; {safe_repr(settings[-1])} has no value")
    changes = {str(k): v for k, v in zip(settings[0::2], settings[1::2], strict=True)}
    applied = ctx.app.jam.set(changes)
    ctx.reply("/musicgen/jam/set", [x for key, value in applied.items() for x in (key, value)])


@routes.add("/musicgen/link")
def link_state(ctx: Context) -> None:
    """The Ableton Link session the bridge is in (`serve --link`): enabled, other peers, tempo, beat now (4-beat bars), playing.

    Replies: `/musicgen/link <enabled 0/1> <peers> <tempo> <beat> <playing 0/1>` (`0 0 0 -1 0` without --link; `1 0 0 -1 0` with it but out of a session: no DAW in one, and no `sync link` jam)
    """
    session = ctx.app.link
    if session is None:
        ctx.reply("/musicgen/link", [0, 0, 0.0, -1.0, 0])
        return
    state = session.state()
    ctx.reply("/musicgen/link", [int(state.enabled), state.peers, state.tempo, state.beat, int(state.playing)])


@routes.add("/musicgen/jam/stop")
def jam_stop(ctx: Context) -> None:
    """Stop the jam at the end of the segment being made and write the whole take.

    Replies: `/musicgen/done /musicgen/jam/start <id> <path of the whole take> <seconds>` (to the jam's starter)
    """
    ctx.app.jam.stop()


@routes.add("/musicgen/play", path=arg("<path>", TEXT))
def play(ctx: Context, *, path: str) -> None:
    """Play an audio file (a result) on the bridge's output device, once it has opened; `busy` while a jam plays, `no_audio_device` when there is none.

    Replies: `/musicgen/play <path>` once it plays, or `/musicgen/fail /musicgen/play "" <code> <message>`
    """
    path = ctx.clip(path, "the file to play")

    def done(played: Path | None, error: BridgeError | None) -> None:
        if error is not None:
            ctx.fail(error)
        else:
            ctx.reply("/musicgen/play", [str(played)])

    ctx.app.output.play(path, done)


@routes.add("/musicgen/stop")
def stop(ctx: Context) -> None:
    """Stop playback at once; during a jam this stops the jam too (its starter gets `done` with the take so far).

    Replies: `/musicgen/stop` once the output is silent
    """

    def done(error: BridgeError | None) -> None:
        if error is not None:
            ctx.fail(error)
        else:
            ctx.reply("/musicgen/stop", [])

    ctx.app.output.stop(done)


# -- the API itself -------------------------------------------------------------------------------


@routes.add("/musicgen/api/list")
def api_list(ctx: Context) -> None:
    """List every address the bridge answers.

    Replies: `/musicgen/api/list <address> ...`
    """
    ctx.reply("/musicgen/api/list", ctx.routes.addresses())


@routes.add("/musicgen/api/help", address=arg("<address>", TEXT))
def api_help(ctx: Context, *, address: str) -> None:
    """How to call one address, and what it does (addition).

    Replies: `/musicgen/api/help <address> <arguments> <replies> <meaning>`
    """
    route = ctx.routes.get(address)
    if route is None:
        raise NotFound(f"no address {safe_repr(address)}{ctx.routes.suggest(address)}: /musicgen/api/list lists them")
    ctx.reply("/musicgen/api/help", [route.address, route.arguments, route.replies, route.meaning])


if __name__ == "__main__":
    print(routes.markdown())
