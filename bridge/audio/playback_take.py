"""One take: a playback child process from open to done, fed by credits, read by a reader thread, guarded by a watchdog."""

from __future__ import annotations

import contextlib
import json
import logging
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
    MARK,
    MARK_STRUCT,
    OPEN,
    PLACED,
    PLACED_STRUCT,
    READY,
    RECORD,
    START,
    STATUS,
    STATUS_STRUCT,
    STOP,
    STOPPED,
    TIMES,
    receive,
    send,
)
from bridge.audio.playback_devices import child_command
from bridge.audio.schedule import Placement
from bridge.errors import BadArgs, NoAudioDevice

__all__ = ["PlaybackStats", "Take"]

log = logging.getLogger(__name__)

_CHUNK_FRAMES = 4096  # audio goes over the pipe in pieces this big


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

    def __init__(self, spec: dict[str, Any], record: bool | str | Path, stall_timeout: float,
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
        self._last_heard = time.monotonic()
        self._record_keep = record is True
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
        self._message(OPEN, json.dumps(dict(spec, record=record is not False)).encode())
        threading.Thread(target=self._read_child, name="musicgen-playback-reader", daemon=True).start()
        if not self.ready.wait(open_timeout):
            self._end("error", f"the audio device did not open within {open_timeout:.0f} s (is the audio server "
                               "stuck?): restart it and try again")
        if self.error is not None:
            raise self.error
        self.open_seconds = time.monotonic() - opened_at
        self.sample_rate = int(self.info["sample_rate"])
        self.capacity = int(self.info["capacity"])
        if not isinstance(record, bool):
            try:
                self._record_file = _open_record_file(Path(record), self.sample_rate, self.channels)
            except BadArgs:
                self.stop(1.0)
                raise
        threading.Thread(target=self._watch, name="musicgen-playback-watchdog", daemon=True).start()

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
        try:
            while True:
                kind, payload = receive(self._out_fd)
                self._last_heard = time.monotonic()
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
                    self.info = json.loads(payload)
                    self.ready.set()
                elif kind == ERROR:
                    self._end("error", payload.decode(errors="replace"))
                elif kind in (DONE, STOPPED):
                    self._end("done" if kind == DONE else "stopped", None)
        except (EOFError, OSError, ValueError):
            pass
        self.process.wait()
        if self.outcome is None:
            self._end("error", f"the audio process exited with code {self.process.returncode} "
                               f"({self._stderr_tail()})")
        # This thread is the last one to touch these.
        for stream in (self.process.stdout, self._stderr):
            if stream is not None:
                stream.close()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no message"

    def _keep_record(self, frames: np.ndarray) -> None:
        with self._record_lock:
            if self._record_file is not None:
                self._record_file.write(frames)
            elif self._record_keep:
                self._record_parts.append(frames)

    def _watch(self) -> None:
        last_count, last_change = -1, time.monotonic()
        while not self.finished.wait(0.02):
            now = time.monotonic()
            c = self.counters
            if c[C_CALLBACKS] != last_count:
                last_count, last_change = c[C_CALLBACKS], now
            if now - self._last_heard > self.stall_timeout:
                self._end("error", f"the audio process for {self.info['name']} stopped responding "
                                   f"for {self.stall_timeout:.1f} s: restart the audio server and retry")
            elif c[C_STARTED] and not c[C_DRAINED] and now - last_change > self.stall_timeout:
                self._end("error", f"audio device {self.info['name']} stopped asking for audio (no callback for "
                                   f"{self.stall_timeout:.1f} s; was the JACK server stopped?): start it again "
                                   "and retry")

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
        while done < total and not self.finished.is_set():
            room = self.capacity - self.queued
            if room <= 0:
                with self._progress:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._progress.wait(0.05 if left is None else min(0.05, left))
                continue
            n = min(room, total - done, _CHUNK_FRAMES)
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

