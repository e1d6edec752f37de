"""Live playback: a sounddevice OutputStream in a child process, fed through a bounded ring buffer.

Why a child process: PortAudio cannot be trusted with the daemon's life. Measured with JACK's dummy
backend (jackd2 1.9.21, PortAudio 19.6): when the JACK server dies mid-stream, ``Stream.abort()`` and
``Stream.close()`` never return, and at interpreter exit ``Pa_Terminate`` fails an assertion and aborts
the process. PortAudio also lists devices once, when it is loaded, so a daemon that loaded it before
JACK started would never see JACK. So each take runs ``python -m bridge.audio.playback_child`` (a plain subprocess:
nothing of the caller's ``__main__`` is re-imported), which loads sounddevice, opens the device, and
plays from a ring buffer its callback only copies from. The daemon never loads PortAudio; a watchdog
thread here kills a child whose callback (or whose heartbeat) stopped, so a dead backend costs at most
``stall_timeout`` seconds and a ``no_audio_device`` error, never a hang. The callback also never waits
for the daemon's GIL while the daemon generates.

The two processes speak in framed messages (one type byte, a length, a payload) over the child's
stdin and stdout. The parent sends audio only into room the child has reported (credits), so the
child's reader thread never blocks and the bound on buffered audio is the ring's capacity.

Shapes follow the rest of the package: audio is (channels, samples) float32.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
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
    OutputDevice,
    receive,
    send,
)
from bridge.audio.schedule import Placement
from bridge.errors import BadArgs, BadAudio, NoAudioDevice

__all__ = ["OutputDevice", "PlaybackStats", "Player", "list_devices", "parse_device"]

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


def parse_device(value: str | int | None) -> str | int | None:
    """``--audio-device`` as sounddevice takes it: an index (``"3"``) or a part of the name (``"system"``)."""
    if value is None or isinstance(value, int):
        return value
    text = value.strip()
    if not text:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    return text


# ---------------------------------------------------------------------------------------------------
# The parent side.


def _child_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """``python -m bridge.audio.playback_child``, importing this very copy of the package (a checkout or an install)."""
    env = dict(os.environ)
    package_root = Path(__file__).resolve().parents[2]
    if package_root.name not in ("site-packages", "dist-packages"):  # never put site-packages before the stdlib
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", "bridge.audio.playback_child", *args], env


def list_devices(timeout: float = 15.0) -> list[OutputDevice]:
    """The output devices PortAudio sees now (asked in a fresh process, so a JACK server started late shows up).

    Raises NoAudioDevice when PortAudio itself cannot be loaded; no devices at all is an empty list.
    """
    command, env = _child_command("--list")
    try:
        done = subprocess.run(command, env=env, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise NoAudioDevice(f"listing audio devices took over {timeout:.0f} s (is the audio server stuck?): "
                            "restart it and try again") from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise NoAudioDevice(f"the audio device lister failed with code {done.returncode} ({tail[0]}): "
                            "check that PortAudio (libportaudio2) is installed") from None
    if "error" in answer:
        raise NoAudioDevice(answer["error"])
    return [OutputDevice(**d) for d in answer["devices"]]


class _Take:
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

        command, env = _child_command()
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


class Player:
    """Plays audio on one output device, one take at a time, gaplessly, without ever hanging its caller.

    Feed it yourself (``open``, ``write`` from your producer thread, ``finish``, ``wait``) or hand it a
    whole result (``play_array``, ``play_file``: a producer thread does the feeding). Playback starts once
    ``start_seconds`` are queued (or the buffer is full, or at ``finish``), so it does not begin with an
    underrun. Opening fails with NoAudioDevice (code ``no_audio_device``) and the reason when there is
    nothing to play on; so does ``write`` or ``wait`` when the device dies during a take.
    """

    def __init__(self, device: str | int | None = None, sample_rate: int | None = None, channels: int = 2,
                 blocksize: int = 0, latency: str | float = "high", buffer_seconds: float = 2.0,
                 start_seconds: float = 0.2, stall_timeout: float = 2.0, open_timeout: float = 15.0,
                 popen: Callable[..., subprocess.Popen[bytes]] = subprocess.Popen) -> None:
        if channels < 1:
            raise BadArgs(f"channels must be at least 1, got {channels}")
        if buffer_seconds <= 0 or start_seconds < 0 or stall_timeout <= 0:
            raise BadArgs("buffer_seconds and stall_timeout must be positive and start_seconds not negative")
        self._spec: dict[str, Any] = {"device": parse_device(device), "sample_rate": sample_rate, "channels": channels,
                      "blocksize": blocksize, "latency": latency, "buffer_seconds": buffer_seconds,
                      "start_seconds": start_seconds}
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self._popen = popen
        self._take: _Take | None = None
        self._underruns_before = 0
        self._lock = threading.Lock()  # one open/stop at a time

    # Feeding it yourself.
    def open(self, record: bool | str | Path = False, start_seconds: float | None = None,
             scheduled: bool = False) -> None:
        """Open the device for a new take (stopping the current one); ``record``: keep (True) or write (a path) what plays.

        ``start_seconds`` overrides the player's for this take: how much must be queued before playback
        starts by itself (a full buffer, ``start`` and ``finish`` start it too). ``scheduled``: the device
        plays from now on (silence until the first marked frame) and :meth:`mark` puts frames at host times.
        """
        spec = self._spec if start_seconds is None else dict(self._spec, start_seconds=max(0.0, start_seconds))
        spec = dict(spec, scheduled=scheduled)
        with self._lock:
            self._end_take()
            self._take = _Take(spec, record, self.stall_timeout, self.open_timeout, self._popen)
            log.info("audio device %s open at %d Hz in %.2f s", self._take.info["name"], self._take.sample_rate,
                     self._take.open_seconds)

    def write(self, audio: np.ndarray, timeout: float | None = None) -> int:
        """Queue (channels, samples) audio at ``sample_rate``; blocks while the buffer is full.

        Returns the samples queued: all of them, or fewer after ``timeout`` or ``stop``. Raises
        NoAudioDevice when the device failed during the take.
        """
        take = self._current()
        frames = self._as_frames(audio, take.channels)
        done = take.feed(frames, timeout)
        if done < frames.shape[0] and take.error is not None:
            raise take.error
        return done

    def start(self) -> None:
        """Start playing now, whatever is queued (playback also starts by itself once primed)."""
        self._current().start()

    def finish(self) -> None:
        """No more audio for this take: it ends once what is queued has played."""
        self._current().finish()

    # Scheduled takes (open(scheduled=True)): bridge.audio.schedule.
    def mark(self, frame: int, host_ns: int) -> None:
        """Frame ``frame`` of this take (counting every frame written) is to be heard at ``host_ns``
        (``CLOCK_MONOTONIC_RAW`` nanoseconds, Ableton Link's clock)."""
        self._current().mark(frame, host_ns)

    def flush(self) -> None:
        """Drop what is queued, unplayed (the set stopped); later marks place what is written after."""
        self._current().flush()

    @property
    def frames_written(self) -> int:
        """Frames written to this take so far: the number the next written frame will have."""
        return self._take.sent if self._take is not None else 0

    @property
    def placements(self) -> list[Placement]:
        """Where each marked frame came out in the device's sample clock, as the child reported it."""
        return list(self._take.placements) if self._take is not None else []

    @property
    def callback_times(self) -> np.ndarray:
        """Scheduled takes: every callback's (first device frame, host ns it is heard at), an (n, 2) array."""
        parts = self._take.callback_times if self._take is not None else []
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    @property
    def clock_line(self) -> tuple[float, float, float, float] | None:
        """The child's fit of host time on the device's frames: (frame, host ns, ns per frame, RMS residual ns)."""
        return self._take.clock_line if self._take is not None else None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the take is over; True when it is. Raises NoAudioDevice if the device failed."""
        take = self._take
        if take is None:
            return True
        if not take.finished.wait(timeout):
            return False
        if take.error is not None:
            raise take.error
        return True

    def stop(self) -> None:
        """Stop at once (what is queued is dropped); returns within a few seconds even if the backend is dead."""
        with self._lock:
            if self._take is not None:
                self._take.stop(timeout=max(1.0, self.stall_timeout))

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> Player:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Handing it a whole result.
    def play_array(self, audio: np.ndarray, sample_rate: int, record: bool | str | Path = False) -> None:
        """Play (channels, samples) or mono audio at any rate (resampled to the device's); returns at once."""
        data = np.asarray(audio, dtype=np.float32)
        if data.ndim == 1:
            data = data[np.newaxis, :]
        if data.ndim != 2 or data.shape[1] == 0:
            raise BadAudio(f"audio to play must be (channels, samples) with samples, got shape {data.shape}")
        if not np.isfinite(data).all():
            raise BadAudio("audio to play holds NaN or infinite samples: regenerate or re-export it")
        if sample_rate <= 0:
            raise BadArgs(f"sample rate must be positive, got {sample_rate}")
        self.open(record=record)
        take = self._current()
        from bridge.audio import match_channels, resample  # noqa: PLC0415

        data = resample(match_channels(data, take.channels), int(sample_rate), take.sample_rate)
        producer = threading.Thread(target=self._feed, args=(take, data.T), name="musicgen-playback-producer",
                                    daemon=True)
        producer.start()

    def play_file(self, path: str | os.PathLike[str], record: bool | str | Path = False) -> None:
        """Play an audio file (NotFound / BadAudio when it is missing or not audio); returns at once."""
        from bridge.audio import read_clip  # noqa: PLC0415

        clip = read_clip(path)
        self.play_array(clip.data, clip.sample_rate, record=record)

    @staticmethod
    def _feed(take: _Take, frames: np.ndarray) -> None:
        if take.feed(frames, None) == frames.shape[0]:
            take.finish()

    # What is going on.
    @property
    def sample_rate(self) -> int | None:
        """The device's rate during a take (what ``write`` expects), else the asked one."""
        if self._take is not None:
            return self._take.sample_rate
        asked = self._spec["sample_rate"]
        return int(asked) if asked is not None else None

    @property
    def channels(self) -> int:
        return int(self._spec["channels"])

    @property
    def device_name(self) -> str | None:
        return str(self._take.info["name"]) if self._take is not None else None

    @property
    def latency(self) -> float | None:
        """The output latency the device reported, in seconds."""
        return float(self._take.info["latency"]) if self._take is not None else None

    @property
    def playing(self) -> bool:
        take = self._take
        return take is not None and bool(take.counters[C_STARTED]) and not take.finished.is_set()

    @property
    def queued_frames(self) -> int:
        """Frames written and not yet handed to the device (the run-ahead), as of the child's last report."""
        take = self._take
        return take.queued if take is not None and not take.finished.is_set() else 0

    @property
    def delivered_frames(self) -> int:
        """Frames of this take handed to the device so far."""
        return self._take.counters[C_FRAMES_OUT] if self._take is not None else 0

    @property
    def underruns(self) -> int:
        """Times the callback found the buffer short while more audio was due, over this player's life."""
        return self._underruns_before + (self._take.counters[C_UNDERRUNS] if self._take is not None else 0)

    @property
    def error(self) -> NoAudioDevice | None:
        return self._take.error if self._take is not None else None

    def stats(self) -> PlaybackStats | None:
        return self._take.stats() if self._take is not None else None

    def recording(self) -> np.ndarray:
        """The take as delivered to the device, (channels, samples), for ``open(record=True)``; call after ``wait``.

        It is what the callback handed over, silence from underruns included, up to the end of the input
        (the padding of the last device block after the end is not part of it).
        """
        take = self._current()
        if not take._record_keep:
            raise BadArgs("this take was not recorded in memory: open it with record=True")
        return take.recording()

    # Helpers.
    def _current(self) -> _Take:
        if self._take is None:
            raise BadArgs("no take is open: call open() or play_array() first")
        return self._take

    def _end_take(self) -> None:
        if self._take is not None:
            self._take.stop(timeout=max(1.0, self.stall_timeout))
            self._underruns_before += self._take.counters[C_UNDERRUNS]
            self._take = None

    @staticmethod
    def _as_frames(audio: np.ndarray, channels: int) -> np.ndarray:
        data = np.asarray(audio, dtype=np.float32)
        if data.ndim == 1:
            data = data[np.newaxis, :]
        if data.ndim != 2 or data.shape[0] != channels:
            raise BadAudio(f"audio for this player must be ({channels}, samples), got shape {data.shape}")
        return data.T

