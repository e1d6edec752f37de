"""The job journal: every accepted job on disk before it is acknowledged, so a crash loses none.

One append-only file of JSON lines (UTF-8, one object per line, ``\\n`` after each) in the state
folder, ``journal.jsonl`` by default::

    {"format": "musicgen-bridge-journal", "version": 1, "created": 1764580000.0}
    {"type": "accepted", "id": "j1", "kind": "generate", "request": {...}, "seed": 1234,
     "reply": {"frontend": "osc", "data": {...}}, "submitted": 1764580001.5}
    {"type": "started", "id": "j1", "at": 1764580001.6, "attempt": 1}
    {"type": "ended", "id": "j1", "state": "done", "at": 1764580003.0, "paths": ["/out/a.wav"], "seconds": 4.0}
    {"type": "ended", "id": "j2", "state": "failed", "at": 1764580004.0, "code": "model_error", "message": "..."}

- The header names the format and its version; a file whose first line is anything else is not
  read: it is moved aside (``journal.jsonl.bad-<time>``), one log line says so, and a fresh
  journal is started. The version goes up when a record changes meaning.
- ``accepted``: the job's id, its kind (``JobKind.value``: generate, continue, ...), the request as
  ``dataclasses.asdict`` of :class:`bridge.options.Request` (rebuilt and re-validated by
  :func:`request_from_record`), the seed it runs with (never null: :meth:`Journal.accept` picks
  one when the request left it to chance, so a re-run gives the asked result), where its replies
  go (its front end's name and data, opaque to the journal) and the wall time it was submitted. It is written and
  fsynced before :meth:`Journal.accept` returns, so before ``/musicgen/queued`` goes out.
- ``started`` when the worker takes the job, with ``attempt``: 1, then 2 when a crash made it run
  again (a job running at :data:`MAX_ATTEMPTS` crashes is failed, not run again); ``ended`` with ``state`` ``done`` (``paths``,
  ``seconds``), ``failed`` or ``cancelled`` (``code``, ``message``). Both fsynced too.
- An id can come back once its job has ended (clients reuse ids): ``started`` and ``ended`` apply
  to the one unfinished job of that id.

Opening (:meth:`Journal.open`) replays the file: a torn last line (a crash mid-write) is dropped
and the file truncated back to its last whole line; a line in the middle that is not a record is
skipped and counted in one log line, and when it still names a job and its requester, that job is
returned unfinished and unrunnable (the requester is told ``fail internal``, as are those a journal
moved aside still names: :mod:`bridge.app.journal_records`). It returns the unfinished jobs in submit order (``queued``, or
``running`` for the one that was running) and the most recent ended ones. When the file grows past
a bound it is compacted: rewritten to a temporary file (fsynced), renamed over the journal and the
folder fsynced, keeping only the unfinished jobs and the last ``keep_ended`` ended ones; a crash
mid-compaction leaves the old journal whole and a temporary that the next open removes.

A :class:`Journal` is thread-safe (one lock) and holds an exclusive lock on its file, so two
daemons never write one journal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.app.journal_records import (
    DAMAGED,
    ENDED_STATES,
    FORMAT,
    MAX_ATTEMPTS,
    VERSION,
    JobRecords,
    JournalEntry,
    Recovery,
    damaged_entry,
    is_torn_header,
    line,
    readable_requester,
    request_from_record,
    request_to_record,
    salvage,
    well_formed,
)
from bridge.app.storage import storage_error
from bridge.errors import BadArgs, Internal, StorageError
from bridge.options import Request, pick_seed

__all__ = ["FORMAT", "MAX_ATTEMPTS", "VERSION", "Journal", "JournalEntry", "Recovery", "default_state_folder",
           "request_from_record", "request_to_record"]

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
DEFAULT_KEEP_ENDED = 64
DEFAULT_MAX_BYTES = 1 << 20

_COMPACT_MARK = ".compact-"


def default_state_folder(output_dir: Path) -> Path:
    """Where the journal lives when not told: beside the output folder, named after it (``out`` -> ``out.state``)."""
    return output_dir.with_name(output_dir.name + ".state")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync(fd: int) -> None:
    os.fsync(fd)


def _replace(src: str, dst: str) -> None:
    os.replace(src, dst)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The append-only job journal in ``folder`` (see the module docstring for the format).

    Call :meth:`open` once, then :meth:`accept`, :meth:`start` and :meth:`end` as jobs move; each
    returns once its record is fsynced. Write errors are StorageError (the record is not kept,
    the file is left whole). :meth:`close` releases the file.
    """

    def __init__(self, folder: Path | str, *, name: str = JOURNAL_NAME, keep_ended: int = DEFAULT_KEEP_ENDED,
                 max_bytes: int = DEFAULT_MAX_BYTES, clock: Callable[[], float] = time.time) -> None:
        if keep_ended < 0 or max_bytes < 1:
            raise BadArgs("the journal keeps 0 or more ended jobs and needs a size bound above 0")
        self.folder = Path(os.path.expanduser(str(folder)))
        self.path = self.folder / name
        self.keep_ended = keep_ended
        self.max_bytes = max_bytes
        self.clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._compact_at = max_bytes
        self._created = 0.0
        self._active: OrderedDict[str, JobRecords] = OrderedDict()
        self._ended: deque[JobRecords] = deque(maxlen=keep_ended) if keep_ended else deque(maxlen=0)

    # -- life -------------------------------------------------------------------------------
    def open(self) -> Recovery:
        """Read (and repair) the journal, or start one; return what it holds. Raises StorageError, BadArgs."""
        with self._lock:
            if self._fd is not None:
                raise Internal("the journal is open already: open() it once")
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise self._error(exc, "create the state folder") from None
            self._remove_compaction_leftovers()
            fd = self._open_locked()
            try:
                recovery = self._load(fd)
            except BaseException:
                os.close(fd)
                raise
            if recovery.moved_aside is not None:
                os.close(fd)
                fd = self._open_locked()
                self._reset()
                self._start_fresh(fd)
            self._fd = fd
            self._compact_at = max(self.max_bytes, 2 * self._size)
            return recovery

    def close(self) -> None:
        """Release the file (and its lock). Safe to call twice."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records ----------------------------------------------------------------------------
    def accept(self, job_id: str, request: Request, kind: str, reply: Any = None,
               submitted: float | None = None) -> JournalEntry:
        """Record an accepted job, fsynced, before it is acknowledged; return its entry.

        The entry's ``request`` is what to run: ``request`` with its seed picked when it had
        none. ``reply`` is any JSON-able value saying where replies go. An id that is still
        unfinished is BadArgs; a full disk is StorageError (then the job must be refused).
        """
        if not job_id:
            raise BadArgs("a journaled job needs its id: pick it before accept()")
        request = dataclasses.replace(request, seed=pick_seed(request.seed))
        record = {"type": "accepted", "id": job_id, "kind": kind, "request": request_to_record(request),
                  "seed": request.seed, "reply": reply,
                  "submitted": self.clock() if submitted is None else float(submitted)}
        try:
            data = line(record)
        except (TypeError, ValueError) as exc:
            raise Internal(f"job {job_id} cannot be journaled ({exc}): its reply address or request is not "
                           "plain data; please report this") from exc
        with self._lock:
            if job_id in self._active:
                raise BadArgs(f"job id {job_id!r} is already queued or running: use a new id for each job")
            self._append(data)
            job = JobRecords(accepted=json.loads(data))
            self._active[job_id] = job
            self._maybe_compact()
            return job.view()

    def start(self, job_id: str) -> bool:
        """Record that the unfinished job ``job_id`` started; False when the journal does not know it."""
        with self._lock:
            job = self._active.get(job_id)
            if job is None:
                log.debug("journal: started for job %s, which it does not hold", job_id)
                return False
            record = {"type": "started", "id": job_id, "at": self.clock(), "attempt": job.attempts + 1}
            self._append(line(record))
            job.start(record)
            return True

    def end(self, job_id: str, state: str, *, paths: tuple[str, ...] | list[str] = (), seconds: float | None = None,
            code: str | None = None, message: str | None = None) -> bool:
        """Record how the unfinished job ``job_id`` ended; False when the journal does not know it.

        ``state`` is done (with ``paths`` and ``seconds``), failed or cancelled (with ``code`` and
        ``message``). Call it before sending the job's done or fail, so a crash in between never
        runs the job twice (``/musicgen/job`` still answers for it).
        """
        if state not in ENDED_STATES:
            raise BadArgs(f"a job ends done, failed or cancelled, not {state!r}")
        record: dict[str, Any] = {"type": "ended", "id": job_id, "state": state, "at": self.clock()}
        if state == "done":
            record["paths"] = [str(p) for p in paths]
            record["seconds"] = seconds
        else:
            record["code"] = code or ("cancelled" if state == "cancelled" else "internal")
            record["message"] = message or ""
        with self._lock:
            job = self._active.get(job_id)
            if job is None:
                log.debug("journal: ended for job %s, which it does not hold", job_id)
                return False
            self._append(line(record))
            job.ended = record
            job._view = None
            del self._active[job_id]
            self._ended.append(job)
            self._maybe_compact()
            return True

    # -- facts ------------------------------------------------------------------------------
    def find(self, job_id: str) -> JournalEntry | None:
        """The unfinished job ``job_id``, else the most recent ended one of that id, else None."""
        with self._lock:
            job = self._active.get(job_id)
            if job is None:
                job = next((j for j in reversed(self._ended) if j.id == job_id), None)
            return None if job is None else job.view()

    def unfinished(self) -> list[JournalEntry]:
        with self._lock:
            return [job.view() for job in self._active.values()]

    def recent(self) -> list[JournalEntry]:
        with self._lock:
            return [job.view() for job in self._ended]

    @property
    def size(self) -> int:
        """Bytes in the journal file now."""
        with self._lock:
            return self._size

    def compact(self) -> None:
        """Rewrite the journal with only the unfinished jobs and the last ``keep_ended`` ended ones."""
        with self._lock:
            self._compact()

    # -- inside -----------------------------------------------------------------------------
    def _error(self, exc: OSError, doing: str) -> StorageError:
        err = storage_error(exc, self.folder, doing)
        return StorageError(err.message.replace("--output-dir", "--state-dir"))

    def _open_locked(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._error(exc, "open the job journal in") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BadArgs(f"another musicgen-bridge uses the job journal {self.path}: stop it, or start this "
                              "one with another --state-dir (or --output-dir)") from None
            raise self._error(exc, "lock the job journal in") from None
        return fd

    def _remove_compaction_leftovers(self) -> None:
        prefix = f".{self.path.name}{_COMPACT_MARK}"
        for leftover in self.folder.glob(prefix + "*"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                log.info("removed %s, left by a compaction that did not finish", leftover)

    def _reset(self) -> None:
        self._active.clear()
        self._ended.clear()

    def _start_fresh(self, fd: int) -> None:
        self._created = self.clock()
        header = line({"format": FORMAT, "version": VERSION, "created": self._created})
        try:
            os.ftruncate(fd, 0)
            _write_all(fd, header)
            _fsync(fd)
            _fsync_folder(self.folder)
        except OSError as exc:
            raise self._error(exc, "start the job journal in") from None
        self._size = len(header)

    def _load(self, fd: int) -> Recovery:
        """Replay the file behind ``fd`` into memory; repair a torn tail; say when it must be moved aside."""
        self._reset()
        try:
            data = self._read_all(fd)
        except OSError as exc:
            raise self._error(exc, "read the job journal in") from None
        if data:
            # Whose file is this? Asked before any repair, so a foreign file is moved aside untouched.
            newline = data.find(b"\n")
            if newline < 0:
                problem = None if is_torn_header(data) else "not a musicgen-bridge journal (no line in it is whole)"
            else:
                problem = self._check_header(data[:newline])
            if problem is not None:
                aside = self._move_aside()
                told = salvage(data.split(b"\n"), f"{DAMAGED} ({problem}; moved to {aside})")
                log.warning("the job journal %s is %s: moved it to %s and started a fresh one; the jobs in it are "
                            "not run again (%d requester(s) told so)", self.path, problem, aside, len(told))
                return Recovery(unfinished=told, ended=[], moved_aside=aside)
        end = data.rfind(b"\n") + 1
        torn = len(data) - end
        if torn:
            log.warning("the job journal %s ended in a torn line (%d bytes, a crash mid-write): dropped it",
                        self.path, torn)
            try:
                os.ftruncate(fd, end)
                _fsync(fd)
            except OSError as exc:
                raise self._error(exc, "repair the job journal in") from None
            data = data[:end]
        if not data:
            self._start_fresh(fd)
            return Recovery(unfinished=[], ended=[], torn_bytes=torn)
        lines = data.split(b"\n")[:-1]
        skipped = 0
        damaged: dict[str, JournalEntry] = {}
        for raw in lines[1:]:
            if not self._apply(raw, damaged):
                skipped += 1
        if skipped:
            note = f" ({len(damaged)} requester(s) of damaged jobs told so)" if damaged else ""
            log.warning("the job journal %s had %d lines that are not records: skipped them%s", self.path, skipped, note)
        self._size = len(data)
        return Recovery(unfinished=[job.view() for job in self._active.values()] + list(damaged.values()),
                        ended=[job.view() for job in self._ended], torn_bytes=torn, skipped_lines=skipped)

    @staticmethod
    def _read_all(fd: int) -> bytes:
        chunks: list[bytes] = []
        offset = 0
        while True:
            chunk = os.pread(fd, 1 << 20, offset)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            offset += len(chunk)

    def _check_header(self, raw: bytes) -> str | None:
        """None for our header, else what the first line is, in a few words."""
        try:
            header = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return "not a musicgen-bridge journal (its first line is not JSON)"
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            return "not a musicgen-bridge journal (its first line names no journal format)"
        if header.get("version") != VERSION:
            return f"a journal of version {header.get('version')!r}, and this bridge reads version {VERSION}"
        self._created = float(header.get("created", 0.0)) if isinstance(header.get("created"), (int, float)) else 0.0
        return None

    def _apply(self, raw: bytes, damaged: dict[str, JournalEntry]) -> bool:
        """Replay one line; False when it is not a record (a damaged ``accepted`` one that still names its
        requester goes into ``damaged``, and leaves it when a later ``ended`` line names its id)."""
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return False
        if not well_formed(record):
            if readable_requester(record) and record["id"] not in self._active:
                damaged[record["id"]] = damaged_entry(record, f"{DAMAGED} (its accepted line is not well formed)")
            return False
        if record["type"] == "ended":
            damaged.pop(record["id"], None)
        kind, job_id = record["type"], record["id"]
        if kind == "accepted":
            if job_id in self._active:
                return False
            self._active[job_id] = JobRecords(accepted=record)
            return True
        job = self._active.get(job_id)
        if job is None:
            return False
        if kind == "started":
            job.start(record)
        else:
            del self._active[job_id]
            job.ended = record
            self._ended.append(job)
        return True

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(self.clock()))
        aside = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        n = 2
        while aside.exists():
            aside = self.path.with_name(f"{self.path.name}.bad-{stamp}-{n}")
            n += 1
        try:
            _replace(str(self.path), str(aside))
            _fsync_folder(self.folder)
        except OSError as exc:
            raise self._error(exc, "move the unreadable job journal aside in") from None
        return aside

    def _append(self, data: bytes) -> None:
        fd = self._fd
        if fd is None:
            raise Internal("the journal is not open: call open() first")
        try:
            _write_all(fd, data)
            _fsync(fd)
        except OSError as exc:
            # A partial line would glue itself to the next record: cut the file back to what it was.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            raise self._error(exc, "write the job journal in") from None
        self._size += len(data)

    def _maybe_compact(self) -> None:
        if self._size <= self._compact_at:
            return
        try:
            self._compact()
        except StorageError as exc:
            log.warning("could not compact the job journal (%s); it keeps growing until it can", exc.message)
            self._compact_at = int(self._size * 1.5)

    def _compact(self) -> None:
        old = self._fd
        if old is None:
            raise Internal("the journal is not open: call open() first")
        jobs = list(self._ended) + list(self._active.values())
        body = [line({"format": FORMAT, "version": VERSION, "created": self._created, "compacted": self.clock()})]
        body += [line(r) for job in jobs for r in job.records()]
        data = b"".join(body)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}{_COMPACT_MARK}", dir=self.folder)
        except OSError as exc:
            raise self._error(exc, "compact the job journal in") from None
        try:
            _write_all(fd, data)
            _fsync(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the new file is ours before anyone can open it
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
            os.fchmod(fd, 0o644)
            _replace(tmp, str(self.path))
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._error(exc, "compact the job journal in") from None
        # From the rename on, the new file is the journal: append to it whatever happens next.
        self._fd = fd
        os.close(old)
        try:
            _fsync_folder(self.folder)
        except OSError as exc:
            log.warning("compacted the job journal but could not fsync its folder %s: %s", self.folder,
                        exc.strerror or exc)
        self._size = len(data)
        self._compact_at = max(self.max_bytes, 2 * self._size)
        log.debug("compacted the job journal to %d bytes (%d jobs)", self._size, len(jobs))
