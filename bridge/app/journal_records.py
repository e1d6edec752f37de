"""The job journal's records: what one line means, how a job is rebuilt from its lines, what a replay found.

:mod:`bridge.app.journal` owns the file (append, fsync, repair, compaction); this module owns the
format it holds: the request as JSON and back (:func:`request_to_record`, :func:`request_from_record`),
which lines are well formed, one job's records (:class:`JobRecords`) and its view
(:class:`JournalEntry`), and what can still be read of a damaged journal (:func:`salvage`).

A ``started`` record carries ``attempt``: how many times the worker has taken the job. A job that
was running when the daemon died twice has ``attempts`` 2 and is not run a third time.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.app.requests import build_request
from bridge.errors import BadArgs, BridgeError
from bridge.options import Request, convert_option, names

FORMAT = "musicgen-bridge-journal"
VERSION = 1
ENDED_STATES = ("done", "failed", "cancelled")
MAX_ATTEMPTS = 2
"""Starts a job may have had: one running when the daemon died this often is failed, not run again."""
DAMAGED = "the job journal was damaged, so this job's record could not be read"


def request_to_record(request: Request) -> dict[str, Any]:
    """A request as plain JSON data (``dataclasses.asdict``)."""
    data = dataclasses.asdict(request)
    data["extra"] = dict(data.get("extra") or {})
    return data


def request_from_record(data: Any) -> Request:
    """Rebuild and re-validate a request written by :func:`request_to_record`; BadArgs says what is wrong."""
    if not isinstance(data, Mapping):
        raise BadArgs(f"the journal's request is not a mapping but {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Request)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadArgs(f"the journal's request has fields this bridge does not know: {', '.join(unknown)} "
                      "(written by another version?)")
    mode = data.get("mode", "text")
    prompt = data.get("prompt", "")
    clip = data.get("clip")
    seconds = data.get("seconds")
    extra = data.get("extra") or {}
    if not isinstance(mode, str) or not isinstance(prompt, str) or not (clip is None or isinstance(clip, str)):
        raise BadArgs("the journal's request has a mode, prompt or clip that is not text")
    if not (seconds is None or (isinstance(seconds, (int, float)) and not isinstance(seconds, bool))):
        raise BadArgs(f"the journal's request has seconds {seconds!r}, not a number")
    if not isinstance(extra, Mapping):
        raise BadArgs("the journal's request has extra that is not a mapping")
    options: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names("job"):
            continue
        if value is None:
            if fields[key].default is not None:
                raise BadArgs(f"the journal's request has no value for {key!r}")
            continue
        options[key] = convert_option(key, value)
    clip_after = data.get("clip_after")
    if not (clip_after is None or isinstance(clip_after, str)):
        raise BadArgs("the journal's request has a second clip that is not text")
    return build_request(mode, prompt, options, seconds=None if seconds is None else float(seconds), clip=clip,
                         clip_after=clip_after, extra=extra)


@dataclass(frozen=True)
class JournalEntry:
    """One job as the journal knows it."""

    id: str
    kind: str
    request: Request | None
    """What to run (its seed set); None when the record no longer validates (``error`` says why)."""
    seed: int | None
    reply: Any
    submitted: float
    state: str  # queued | running | done | failed | cancelled
    started_at: float | None = None
    ended_at: float | None = None
    paths: tuple[str, ...] = ()
    seconds: float | None = None
    code: str | None = None
    message: str | None = None
    error: str | None = None
    attempts: int = 0
    """How many times the worker took the job (``started`` records): 2 for one running at two crashes."""

    @property
    def unfinished(self) -> bool:
        return self.state in ("queued", "running")

    @property
    def resumable(self) -> bool:
        """True for a job that can run again from its record: readable, and not a jam (a jam is live)."""
        return self.request is not None and self.request.mode != "jam"

    @property
    def poisonous(self) -> bool:
        """True for a job that was running each of the last :data:`MAX_ATTEMPTS` times the daemon died."""
        return self.state == "running" and self.attempts >= MAX_ATTEMPTS


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Journal.open` found."""

    unfinished: list[JournalEntry]
    """Jobs accepted and not ended, in submit order (``state`` is queued or running); with them, the
    jobs of damaged records whose requester can still be read (``request`` None, ``error`` says why)."""
    ended: list[JournalEntry]
    """The most recent ended jobs, oldest first (for ``/musicgen/job`` answers across a restart)."""
    moved_aside: Path | None = None
    """Where an unreadable journal went (a fresh one was started), or None."""
    torn_bytes: int = 0
    """Bytes of a torn last line that were dropped."""
    skipped_lines: int = 0
    """Lines in the middle that were not records, skipped."""


@dataclass
class JobRecords:
    """One job's lines: accepted, the last started (its ``attempt`` counts the starts), ended."""

    accepted: dict[str, Any]
    started: dict[str, Any] | None = None
    ended: dict[str, Any] | None = None
    attempts: int = 0
    _view: JournalEntry | None = None

    def start(self, record: dict[str, Any]) -> None:
        """Take a ``started`` record: the attempts are the starts seen, or its ``attempt`` (kept by compaction)."""
        attempt = record.get("attempt")
        self.attempts = max(self.attempts + 1, attempt if isinstance(attempt, int) else 0)
        self.started = record
        self._view = None

    @property
    def id(self) -> str:
        return str(self.accepted["id"])

    def records(self) -> list[dict[str, Any]]:
        return [r for r in (self.accepted, self.started, self.ended) if r is not None]

    def view(self) -> JournalEntry:
        if self._view is None:
            acc = self.accepted
            request: Request | None = None
            error: str | None = None
            try:
                request = request_from_record(acc.get("request"))
            except BridgeError as exc:
                error = exc.message
            end = self.ended or {}
            state = str(end.get("state")) if self.ended else ("running" if self.started else "queued")
            self._view = JournalEntry(
                id=self.id, kind=str(acc.get("kind", "")), request=request, seed=acc.get("seed"),
                reply=acc.get("reply"), submitted=float(acc.get("submitted", 0.0)), state=state,
                started_at=None if self.started is None else float(self.started.get("at", 0.0)),
                ended_at=None if self.ended is None else float(end.get("at", 0.0)),
                paths=tuple(str(p) for p in end.get("paths", ())), seconds=end.get("seconds"),
                code=end.get("code"), message=end.get("message"), error=error, attempts=self.attempts)
        return self._view


def is_torn_header(data: bytes) -> bool:
    """True when ``data`` (no newline in it) is the start of a header line: a crash as the journal was made."""
    expected = b'{"format":"' + FORMAT.encode() + b'"'
    return data[: len(expected)] == expected[: len(data)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_text_or_none(value: Any) -> bool:
    return value is None or isinstance(value, str)


def well_formed(record: Any) -> bool:
    """True for a record of a known type whose fields have the types the format says (the request aside)."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return False
    kind = record.get("type")
    if kind == "accepted":
        seed = record.get("seed")
        return (isinstance(record.get("kind"), str) and isinstance(record.get("request"), dict)
                and _is_number(record.get("submitted"))
                and (seed is None or (isinstance(seed, int) and not isinstance(seed, bool))))
    if kind == "started":
        attempt = record.get("attempt", 1)
        return _is_number(record.get("at")) and isinstance(attempt, int) and not isinstance(attempt, bool)
    if kind == "ended":
        paths = record.get("paths", [])
        seconds = record.get("seconds")
        return (record.get("state") in ENDED_STATES and _is_number(record.get("at"))
                and isinstance(paths, list) and all(isinstance(path, str) for path in paths)
                and (seconds is None or _is_number(seconds))
                and _is_text_or_none(record.get("code")) and _is_text_or_none(record.get("message")))
    return False


def line(record: Mapping[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")




def readable_requester(record: Any) -> bool:
    """True when a line looks like an ``accepted`` record whose id and requester can be read (it may be damaged).

    The requester is a front end's data (``{"frontend": name, "data": ...}``, data not null) or, in a
    record older than front-end names, the OSC server's reply address (``{"host": ...}``).
    """
    if not (isinstance(record, dict) and record.get("type") == "accepted" and isinstance(record.get("id"), str)
            and bool(record["id"]) and isinstance(record.get("reply"), dict)):
        return False
    reply = record["reply"]
    if isinstance(reply.get("frontend"), str):
        return reply.get("data") is not None
    return isinstance(reply.get("host"), str)


def damaged_entry(record: Mapping[str, Any], why: str) -> JournalEntry:
    """What the journal can tell of a damaged job: its id, kind and requester, and ``why`` it cannot run."""
    kind = record.get("kind")
    return JournalEntry(id=str(record["id"]), kind=kind if isinstance(kind, str) else "", request=None, seed=None,
                        reply=record.get("reply"), submitted=0.0, state="queued", error=why)


def salvage(lines: Iterable[bytes], why: str) -> list[JournalEntry]:
    """The unfinished jobs of ``lines`` (a journal that cannot be replayed) whose requesters can still be read.

    Lenient: any line that is JSON and looks like an ``accepted`` record counts, unless a later
    ``ended`` line names its id; so the requesters are told their job will not run, not left waiting.
    """
    found: dict[str, JournalEntry] = {}
    for raw in lines:
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            continue
        if readable_requester(record):
            found[record["id"]] = damaged_entry(record, why)
        elif isinstance(record, dict) and record.get("type") == "ended" and isinstance(record.get("id"), str):
            found.pop(record["id"], None)
    return list(found.values())
