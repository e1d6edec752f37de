"""One take: a playback child process from open to done, fed by credits, read and watched by one reader thread.

The reader waits on the child's stdout with a deadline: the child heartbeats every 10 ms, so a child
that stops talking, or a device that stops asking for audio, is noticed there and the child is killed
(``no_audio_device``); a message that breaks the protocol ends the take the same way, saying so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import select
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bridge.audio.playback_child import (
    AUDIO,
    C_CALLBACKS,
    C_CONSUMED,
    C_DRAINED,
    C_FRAMES_OUT,
    C_HOST_UNDERFLOWS,
    C_MAX_CALLBACK_NS,
    C_MAX_GAP_NS,
    C_RECORD_DROPPED,
    C_STARTED,
    C_UNDERRUN_FRAMES,
    C_UNDERRUNS,
    CLOCK,
    CLOCK_STRUCT,
    COUNTERS,
    DONE,
    ERROR,
    FINISH,
    FLUSH,
    HEADER,
    MARK,
    MARK_STRUCT,
    OPEN,
    PLACED,
    PLACED_STRUCT,
    READY,
    RECORD,
    START,
    STARTED,
    STATUS,
    STATUS_STRUCT,
    STOP,
    STOPPED,
    TIMES,
    send,
)
from bridge.audio.playback_devices import child_command
from bridge.audio.schedule import Placement
from bridge.errors import BadArgs, NoAudioDevice

__all__ = ["PlaybackStats", "Recording", "Take"]

log = logging.getLogger(__name__)

_CHUNK_FRAMES = 4096  # audio goes over the pipe in pieces this big
_READ_BYTES = 1 << 16  # a pipe's buffer
_MAX_MESSAGE = 1 << 28  # bytes: far above the largest record batch (2 s of 32 channels at 384 kHz is 98 MB)
_NAMES = {READY: "ready", ERROR: "error", STARTED: "started", STATUS: "status", RECORD: "record", DONE: "done",
          STOPPED: "stopped", PLACED: "placed", CLOCK: "clock", TIMES: "times"}
_SIZES = {STATUS: STATUS_STRUCT.size, CLOCK: CLOCK_STRUCT.size, PLACED: PLACED_STRUCT.size, STARTED: 0, DONE: 0,
          STOPPED: 0}
_INFO_KEYS = ("name", "sample_rate", "capacity", "latency")


@dataclass(frozen=True)
class Recording:
    """What a take keeps of the audio it hands the device: all of it, in memory (``file`` None) or in ``file``.

    In memory it is :meth:`Player.recording <bridge.audio.playback.Player.recording>`'s; a file is written
    as the take plays and closed when it ends.
    """

    file: Path | None = None

    @classmethod
    def of(cls, record: bool | str | os.PathLike[str] | Recording | None) -> Recording | None:
        """The Player's ``record`` argument: False or None keeps nothing, True keeps it in memory, a path writes it there."""
        if isinstance(record, Recording):
            return record
        if record is True:
            return cls()
        if record is None or record is False:
            return None
        return cls(Path(record))


@dataclass(frozen=True)
class PlaybackStats:
    """What the child measured during one take (refreshed every 10 ms while it plays)."""

    callbacks: int
    frames_delivered: int
    underruns: int
    underrun_frames: int
    host_underflows: int
    max_callback_ms: float
    max_gap_ms: float
    record_dropped: int


class Take:
    """One child process playing one stream from open to done; the Player owns at most one at a time."""

    def __init__(self, spec: dict[str, Any], record: Recording | None, stall_timeout: float,
                 open_timeout: float, popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        self.stall_timeout = stall_timeout
        self.error: NoAudioDevice | None = None
        self.outcome: str | None = None
        self.finished = threading.Event()  # played out, stopped or failed
        self.ready = threading.Event()
        self.info: dict[str, Any] = {}
        self.counters = [0] * COUNTERS
        self.sent = 0  # frames sent to the child
        self.placements: list[Placement] = []  # scheduled takes: where each marked frame came out
        self.clock_line: tuple[float, float, float, float] | None = None  # the child's host-time filter
        self.callback_times: list[np.ndarray] = []  # scheduled takes: each callback's (device frame, host ns)
        self.start_sent = False
        self._progress = threading.Condition()  # notified on each status from the child
        self._send_lock = threading.Lock()
        self._stdin_closed = False
        self._end_lock = threading.Lock()
        self.record = record  # None: nothing is kept
        self._record_parts: list[np.ndarray] = []
        self._record_file: Any = None
        self._record_lock = threading.Lock()
        self.channels = int(spec["channels"])

        command, env = child_command()
        self._stderr = tempfile.TemporaryFile()
        opened_at = time.monotonic()
        # popen: the daemon's launcher, so the child keeps normal priority (bridge/compute.py)
        self.process = popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=self._stderr, bufsize=0)
        assert self.process.stdin is not None and self.process.stdout is not None  # internal: asked for above
        self._in_fd = self.process.stdin.fileno()
        self._out_fd = self.process.stdout.fileno()
        self._message(OPEN, json.dumps(dict(spec, record=record is not None)).encode())
        threading.Thread(target=self._read_child, name="musicgen-playback-reader", daemon=True).start()
        if not self.ready.wait(open_timeout):
            self._end("error", f"the audio device did not open within {open_timeout:.0f} s (is the audio server "
                               "stuck?): restart it and try again")
        if self.error is not None:
            raise self.error
        self.open_seconds = time.monotonic() - opened_at
        self.sample_rate = int(self.info["sample_rate"])
        self.capacity = int(self.info["capacity"])
        if record is not None and record.file is not None:
            try:
                self._record_file = _open_record_file(record.file, self.sample_rate, self.channels)
            except BadArgs:
                self.stop(1.0)
                raise

    # Talking to the child.
    def _message(self, kind: bytes, payload: bytes = b"") -> bool:
        with self._send_lock:
            if self._stdin_closed:
                return False
            try:
                send(self._in_fd, kind, payload)
            except OSError:
                return False  # the child is gone; its reader reports why
        return True

    def _read_child(self) -> None:
        """The take's one thread: reads the child's messages and ends the take when the child goes silent."""
        frames = _Frames(self.channels)
        watch = _Silence(self.stall_timeout)
        pipe = select.poll()
        pipe.register(self._out_fd, select.POLLIN)
        try:
            while True:
                due = None if self.finished.is_set() else watch.due(self.counters)
                wait_ms = None
                if due is not None:
                    now = time.monotonic()
                    if now >= due:
                        self._end("error", self._silence_message(watch, now))
                        continue  # ended: read on until the killed child's pipe closes
                    wait_ms = math.ceil((due - now) * 1000)
                if not pipe.poll(wait_ms):
                    continue  # the deadline came first: checked at the top
                data = os.read(self._out_fd, _READ_BYTES)
                if not data:
                    break
                for kind, payload in frames.feed(data):
                    self._take_message(kind, payload)
                    watch.heard(kind, self.counters, time.monotonic())
        except _Malformed as exc:
            self._end("error", f"the audio process sent a malformed message ({exc}), so it was stopped: play "
                               "again, and report it with the log if it happens again")
        except OSError:
            pass
        self.process.wait()
        if self.outcome is None:
            self._end("error", f"the audio process exited with code {self.process.returncode} "
                               f"({self._stderr_tail()})")
        # This thread is the last one to touch these.
        for stream in (self.process.stdout, self._stderr):
            if stream is not None:
                stream.close()

    def _take_message(self, kind: bytes, payload: bytes) -> None:
        if kind == STATUS:
            self.counters = list(STATUS_STRUCT.unpack(payload))
            with self._progress:
                self._progress.notify_all()
        elif kind == RECORD:
            self._keep_record(np.frombuffer(payload, dtype=np.float32).reshape(-1, self.channels))
        elif kind == CLOCK:
            self.clock_line = CLOCK_STRUCT.unpack(payload)
        elif kind == TIMES:
            self.callback_times.append(np.frombuffer(payload, dtype=np.int64).reshape(-1, 2))
        elif kind == PLACED:
            self.placements.append(Placement(*PLACED_STRUCT.unpack(payload)))
        elif kind == READY:
            self.info = _device_info(payload)
            self.ready.set()
        elif kind == ERROR:
            self._end("error", payload.decode(errors="replace"))
        elif kind in (DONE, STOPPED):
            self._end("done" if kind == DONE else "stopped", None)
        # STARTED: the status's C_STARTED says it too

    def _silence_message(self, watch: _Silence, now: float) -> str:
        if watch.heard_at is not None and now - watch.heard_at >= self.stall_timeout:
            return (f"the audio process for {self.info['name']} stopped responding "
                    f"for {self.stall_timeout:.1f} s: restart the audio server and retry")
        return (f"audio device {self.info['name']} stopped asking for audio (no callback for "
                f"{self.stall_timeout:.1f} s; was the JACK server stopped?): start it again and retry")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def _keep_record(self, frames: np.ndarray) -> None:
        with self._record_lock:
            if self._record_file is not None:
                self._record_file.write(frames)
            elif self.record is not None and self.record.file is None:
                self._record_parts.append(frames)

    def _end(self, outcome: str, message: str | None) -> None:
        """Settle the take once: record the outcome, make sure the child is gone, wake everyone."""
        with self._end_lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
            if outcome == "error":
                self.error = NoAudioDevice(message or "the audio device failed")
                log.warning("playback failed: %s", self.error.message)
        if outcome == "error" and self.process.poll() is None:
            self.process.kill()
        threading.Thread(target=self._reap, name="musicgen-playback-reaper", daemon=True).start()
        with self._record_lock:
            if self._record_file is not None:
                self._record_file.close()
                self._record_file = None
        dropped = self.counters[C_RECORD_DROPPED]
        if dropped:
            log.warning("the recording misses %d frames: the daemon was too busy to collect them", dropped)
        self.ready.set()
        self.finished.set()
        with self._progress:
            self._progress.notify_all()

    def _reap(self) -> None:
        try:
            self.process.wait(max(1.0, self.stall_timeout))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with self._send_lock, contextlib.suppress(OSError):
            self._stdin_closed = True  # before the close: the fd number may be reused at once
            if self.process.stdin is not None:
                self.process.stdin.close()

    # Feeding.
    @property
    def queued(self) -> int:
        return max(0, self.sent - self.counters[C_CONSUMED])

    def feed(self, frames: np.ndarray, timeout: float | None) -> int:
        """Send (n, channels) frames as room in the child's ring allows; returns how many went."""
        total = frames.shape[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        done = 0
        while done < total:
            with self._progress:  # woken by each status from the child and by the end
                left = None if deadline is None else deadline - time.monotonic()
                if not self._progress.wait_for(lambda: self.finished.is_set() or self.queued < self.capacity, left):
                    break
            if self.finished.is_set():
                break
            n = min(self.capacity - self.queued, total - done, _CHUNK_FRAMES)
            if not self._message(AUDIO, np.ascontiguousarray(frames[done:done + n], dtype=np.float32).tobytes()):
                break
            self.sent += n
            done += n
        return done

    def finish(self) -> None:
        self._message(FINISH)

    def mark(self, ring_frame: int, host_ns: int) -> None:
        self._message(MARK, MARK_STRUCT.pack(int(ring_frame), int(host_ns)))

    def flush(self) -> None:
        self._message(FLUSH)

    def start(self) -> None:
        if not self.start_sent:
            self.start_sent = True
            self._message(START)

    def stop(self, timeout: float) -> None:
        if self.finished.is_set():
            return
        self._message(STOP)
        if not self.finished.wait(timeout):
            self._end("error", f"the audio process did not stop within {timeout:.1f} s (a stuck audio server?); "
                               "it was killed")

    def recording(self) -> np.ndarray:
        with self._record_lock:
            parts = self._record_parts or [np.zeros((0, self.channels), dtype=np.float32)]
            return np.ascontiguousarray(np.concatenate(parts, axis=0).T)

    def stats(self) -> PlaybackStats:
        c = self.counters
        return PlaybackStats(callbacks=c[C_CALLBACKS], frames_delivered=c[C_FRAMES_OUT],
                             underruns=c[C_UNDERRUNS], underrun_frames=c[C_UNDERRUN_FRAMES],
                             host_underflows=c[C_HOST_UNDERFLOWS], max_callback_ms=c[C_MAX_CALLBACK_NS] / 1e6,
                             max_gap_ms=c[C_MAX_GAP_NS] / 1e6, record_dropped=c[C_RECORD_DROPPED])


def _open_record_file(path: Path, rate: int, channels: int) -> Any:
    import soundfile as sf  # noqa: PLC0415

    subtype = "FLOAT" if path.suffix.lower() in (".wav", ".w64", ".caf", ".aiff", ".aif") else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, subtype=subtype)
    except (OSError, sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadArgs(f"cannot write the recording to {path} ({exc}): give a .wav or .flac path in a "
                      "writable folder") from None


class _Malformed(Exception):
    """A message from the child that breaks the protocol; says what was wrong."""


class _Frames:
    """The child's framed messages (``playback_child.HEADER``, then the payload) from the pipe's pieces, checked."""

    def __init__(self, channels: int) -> None:
        self._buffer = bytearray()
        self._multiple = {RECORD: 4 * channels, TIMES: 16}  # float32 frames; (int64, int64) pairs

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= HEADER.size:
            kind, length = HEADER.unpack_from(self._buffer)
            self._check(kind, length)
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            messages.append((kind, bytes(self._buffer[HEADER.size:end])))
            del self._buffer[:end]
        return messages

    def _check(self, kind: bytes, length: int) -> None:
        name = _NAMES.get(kind)
        if name is None:
            raise _Malformed(f"an unknown message type {kind!r} of {length} bytes")
        size, multiple = _SIZES.get(kind), self._multiple.get(kind)
        if size is not None and length != size:
            raise _Malformed(f"a {name} message of {length} bytes, not {size}")
        if multiple is not None and length % multiple:
            raise _Malformed(f"a {name} message of {length} bytes, not a multiple of {multiple}")
        if length > _MAX_MESSAGE:
            raise _Malformed(f"a {name} message of {length} bytes, over the limit of {_MAX_MESSAGE}")


def _device_info(payload: bytes) -> dict[str, Any]:
    """The READY message: the device the child opened, as JSON."""
    try:
        info = json.loads(payload)
    except ValueError:
        info = None
    if not isinstance(info, dict) or any(key not in info for key in _INFO_KEYS):
        raise _Malformed(f"a ready message that is not the device's description: {payload[:80]!r}")
    return info


class _Silence:
    """The reader's watch on the child: when it has said nothing, or its device asked for nothing, for too long.

    It starts at the child's READY (from then on the child sends its status every 10 ms).
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.heard_at: float | None = None
        self._callbacks = -1
        self._started = False
        self._changed_at = 0.0

    def heard(self, kind: bytes, counters: list[int], now: float) -> None:
        if kind != READY and self.heard_at is None:
            return
        self.heard_at = now
        # the device's silence counts from its start at the earliest: priming the buffer can take longer
        # than the limit, and the first callback may come a while after the start on a busy machine
        started = bool(counters[C_STARTED])
        if counters[C_CALLBACKS] != self._callbacks or started != self._started:
            self._callbacks, self._started, self._changed_at = counters[C_CALLBACKS], started, now

    def due(self, counters: list[int]) -> float | None:
        """When silence ends the take (``time.monotonic``); None before the child is ready."""
        if self.heard_at is None:
            return None
        due = self.heard_at + self.limit
        if counters[C_STARTED] and not counters[C_DRAINED]:
            due = min(due, self._changed_at + self.limit)
        return due
