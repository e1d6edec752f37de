"""The audio child process of bridge.audio.playback: the only code that loads PortAudio (sounddevice).

``python -m bridge.audio.playback_child`` reads its settings from stdin, opens the output device, and plays
what the parent sends into a bounded ring buffer its callback only copies from; it reports status,
the record tap and the end on stdout. ``--list`` prints the output devices as JSON instead. The two
processes speak in framed messages: one type byte, a little-endian uint32 length, the payload.
See bridge.audio.playback for why this is a process of its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bridge.audio.ringbuffer import RingBuffer
from bridge.audio.schedule import HostTimeFilter, Placer

HEADER = struct.Struct("<cI")
# Parent to child (MARK and FLUSH: scheduled takes, bridge.audio.schedule).
OPEN, AUDIO, FINISH, START, STOP, MARK, FLUSH = b"O", b"A", b"F", b"S", b"X", b"M", b"L"
# Child to parent (PLACED and CLOCK: scheduled takes).
READY, ERROR, STARTED, STATUS, RECORD, DONE, STOPPED, PLACED, CLOCK, TIMES = (
    b"R", b"E", b"T", b"P", b"C", b"D", b"Q", b"W", b"K", b"J")
MARK_STRUCT = struct.Struct("<qq")  # ring frame, host ns (CLOCK_MONOTONIC_RAW)
PLACED_STRUCT = struct.Struct("<qqqq")  # ring frame, device frame, target device frame, host ns
CLOCK_STRUCT = struct.Struct("<dddd")  # the filter's line: frame, host ns, ns per frame; RMS residual ns

_CHILD_TICK_SECONDS = 0.01  # the child's status heartbeat and record collection
_RECORD_RING_SECONDS = 2.0
_EXIT_BACKEND_DIED = 3

# The child's counters (its callback writes most of them), sent as the status message in this order.
(C_CALLBACKS, C_FRAMES_OUT, C_CONSUMED, C_UNDERRUNS, C_UNDERRUN_FRAMES, C_HOST_UNDERFLOWS, C_MAX_CALLBACK_NS,
 C_MAX_GAP_NS, C_LAST_NS, C_RECORD_DROPPED, C_DRAINED, C_STARTED) = range(12)
COUNTERS = 12
STATUS_STRUCT = struct.Struct(f"<{COUNTERS}q")


@dataclass(frozen=True)
class OutputInfo:
    """One audio output device as PortAudio lists it (what `musicgen-bridge devices` prints)."""

    index: int
    name: str
    hostapi: str
    channels: int
    default_rate: float
    is_default: bool


# ---------------------------------------------------------------------------------------------------
# Framing, used on both sides.


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def send(fd: int, kind: bytes, payload: bytes = b"") -> None:
    write_all(fd, HEADER.pack(kind, len(payload)) + payload)


def read_exact(fd: int, n: int) -> bytes:
    parts = []
    while n:
        part = os.read(fd, n)
        if not part:
            raise EOFError
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def receive(fd: int) -> tuple[bytes, bytes]:
    kind, length = HEADER.unpack(read_exact(fd, HEADER.size))
    return kind, read_exact(fd, length) if length else b""


# ---------------------------------------------------------------------------------------------------
# The child process: everything that touches PortAudio.


class _NoDevice(Exception):
    """Raised inside the child only; crosses the pipe as text and becomes NoAudioDevice here."""


def _import_sounddevice() -> Any:
    try:
        import sounddevice as sd  # noqa: PLC0415  (only ever in the child)
    except OSError as exc:
        raise _NoDevice(f"PortAudio could not be loaded ({exc}): install libportaudio2 (Debian/Ubuntu) "
                        "or portaudio, or play the result files yourself") from None
    return sd


def _outputs_here(sd: Any) -> list[OutputInfo]:
    hostapis = sd.query_hostapis()
    try:
        default_index = int(sd.query_devices(kind="output")["index"])
    except (ValueError, sd.PortAudioError):
        default_index = -1
    return [OutputInfo(index=int(info["index"]), name=str(info["name"]),
                         hostapi=str(hostapis[info["hostapi"]]["name"]), channels=int(info["max_output_channels"]),
                         default_rate=float(info["default_samplerate"]), is_default=int(info["index"]) == default_index)
            for info in sd.query_devices() if info["max_output_channels"] > 0]


def _resolve_device(sd: Any, device: str | int | None) -> dict[str, Any]:
    outputs = _outputs_here(sd)
    if not outputs:
        apis = ", ".join(str(api["name"]) for api in sd.query_hostapis()) or "none"
        raise _NoDevice(f"no audio output device found (PortAudio host APIs: {apis}): start a JACK server or "
                        "connect a sound card, then try again; generated files are still written")
    if device is None:
        chosen = next((d for d in outputs if d.is_default), outputs[0])
        return dict(sd.query_devices(chosen.index))
    try:
        return dict(sd.query_devices(device, kind="output"))
    except (ValueError, sd.PortAudioError) as exc:
        listing = "; ".join(f"[{d.index}] {d.name} ({d.hostapi})" for d in outputs)
        raise _NoDevice(f"audio device {device!r} is not usable ({str(exc).splitlines()[0]}); outputs here: "
                        f"{listing}. Give an index or a part of a name from `musicgen-bridge devices`") from None


class _ChildTake:
    """The child's side of a take: the stream, its ring, the reader of the parent's messages."""

    def __init__(self, sd: Any, spec: dict[str, Any], out_fd: int) -> None:
        self.sd = sd
        self.out_fd = out_fd
        info = _resolve_device(sd, spec["device"])
        self.name = f"{info['name']} ({sd.query_hostapis(info['hostapi'])['name']})"
        self.channels = int(spec["channels"])
        if info["max_output_channels"] < self.channels:
            raise _NoDevice(f"audio device {self.name} has {info['max_output_channels']} output channel(s), "
                            f"{self.channels} were asked for: ask for fewer channels or pick another device")
        self.rate = int(spec["sample_rate"] or round(info["default_samplerate"]))
        self.ring = RingBuffer(max(1, math.ceil(spec["buffer_seconds"] * self.rate)), self.channels)
        self.record = (RingBuffer(math.ceil(_RECORD_RING_SECONDS * self.rate), self.channels)
                       if spec["record"] else None)
        self.start_frames = spec["start_seconds"] * self.rate
        self.counters = [0] * COUNTERS
        self.start_asked = threading.Event()
        self.stop_asked = threading.Event()
        # a scheduled take plays from the start (silence until its first bar line) and places marked frames
        self.clock = HostTimeFilter(self.rate) if spec.get("scheduled") else None
        self.placer = Placer(self.ring, self.clock, tolerance=round(0.0005 * self.rate)) if self.clock else None
        self.device_frames = 0
        try:
            self.stream = sd.OutputStream(device=int(info["index"]), samplerate=self.rate, channels=self.channels,
                                          dtype="float32", blocksize=int(spec["blocksize"]),
                                          latency=spec["latency"], callback=self._callback)
        except (sd.PortAudioError, ValueError) as exc:
            raise _NoDevice(f"could not open audio device {self.name} at {self.rate} Hz with {self.channels} "
                            f"channel(s) ({exc}): leave the rate to the device or pick another one") from None
        self.latency = float(self.stream.latency)
        self.info = {"index": int(info["index"]), "name": self.name, "sample_rate": self.rate,
                     "latency": float(self.stream.latency), "blocksize": int(self.stream.blocksize),
                     "capacity": self.ring.capacity}

    def _callback(self, outdata: np.ndarray, frames: int, _time: Any, status: Any) -> None:
        # Realtime: copy, count, nothing else (no logging, no waiting, no audio-sized allocation).
        c = self.counters
        start = time.perf_counter_ns()
        if c[C_LAST_NS]:
            c[C_MAX_GAP_NS] = max(c[C_MAX_GAP_NS], start - c[C_LAST_NS])
        c[C_LAST_NS] = start
        if status.output_underflow:
            c[C_HOST_UNDERFLOWS] += 1
        if self.placer is not None and self.clock is not None:
            # when this block's first frame is heard, on Link's clock: now plus what PortAudio says is ahead
            ahead = float(_time.outputBufferDacTime - _time.currentTime)
            if not 0.0 <= ahead < 1.0:
                ahead = self.latency
            self.clock.add(self.device_frames, time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) + int(ahead * 1e9))
            self.placer.fill(outdata, self.device_frames)
            self.device_frames += frames
            played = 0 if self.ring.finished and self.placer.idle else frames
        else:
            played = self.ring.read_into(outdata)
        if self.record is not None and played:
            c[C_RECORD_DROPPED] += played - self.record.write(outdata[:played], timeout=0)
        c[C_FRAMES_OUT] += played
        c[C_CALLBACKS] += 1
        c[C_MAX_CALLBACK_NS] = max(c[C_MAX_CALLBACK_NS], time.perf_counter_ns() - start)
        if played < frames:  # input finished and all of it is out
            c[C_DRAINED] = 1
            raise self.sd.CallbackStop

    def read_parent(self, in_fd: int) -> None:
        """The reader thread: audio into the ring (there is always room: the parent spends credits), commands."""
        try:
            while True:
                kind, payload = receive(in_fd)
                if kind == AUDIO:
                    self.ring.write(np.frombuffer(payload, dtype=np.float32).reshape(-1, self.channels))
                elif kind == FINISH:
                    self.ring.finish()
                elif kind == START:
                    self.start_asked.set()
                elif kind == MARK and self.placer is not None:
                    self.placer.mark(*MARK_STRUCT.unpack(payload))
                elif kind == FLUSH and self.placer is not None:
                    self.placer.flush()
                elif kind == STOP:
                    break
        except (EOFError, OSError):
            pass  # the parent is gone: stop
        self.stop_asked.set()
        self.ring.close()

    def status(self) -> bytes:
        c = self.counters
        c[C_CONSUMED], c[C_UNDERRUNS] = self.ring.consumed, self.ring.underruns
        c[C_UNDERRUN_FRAMES] = self.ring.underrun_frames
        return STATUS_STRUCT.pack(*c)

    def send_clock(self) -> None:
        """Refit the host-time filter and report it, and where the marked frames came out."""
        if self.clock is None or self.placer is None:
            return
        self.clock.refit()
        points = self.clock.new_points()
        if points.shape[0]:
            send(self.out_fd, TIMES, points.tobytes())  # each callback's (frame, host ns): for measuring
        while self.placer.placed:
            send(self.out_fd, PLACED, PLACED_STRUCT.pack(*self.placer.placed.popleft()))
        if self.clock.line is not None:
            send(self.out_fd, CLOCK, CLOCK_STRUCT.pack(*self.clock.line, self.clock.residual_ns))

    def send_record(self) -> None:
        if self.record is not None:
            frames = self.record.read()
            if frames.shape[0]:
                send(self.out_fd, RECORD, frames.tobytes())

    def run(self) -> int:
        """The main thread: start when primed, heartbeat, record, and notice a stream that ended or died."""
        started = False
        while True:
            if self.stop_asked.wait(_CHILD_TICK_SECONDS):
                self.stream.abort()
                self.stream.close()
                self.send_record()
                send(self.out_fd, STATUS, self.status())
                send(self.out_fd, STOPPED)
                return 0
            if not started and (self.start_asked.is_set() or self.ring.finished or self.ring.free == 0
                                or self.ring.queued >= self.start_frames or self.placer is not None):
                self.stream.start()
                started = True
                self.counters[C_STARTED] = 1
                send(self.out_fd, STARTED)
            self.send_record()
            self.send_clock()
            send(self.out_fd, STATUS, self.status())
            if started and not self.stream.active:
                if self.counters[C_DRAINED]:
                    self.stream.close()
                    self.send_record()
                    self.send_clock()
                    send(self.out_fd, STATUS, self.status())
                    send(self.out_fd, DONE)
                    return 0
                # The host stopped the stream under us (JACK server gone). Closing it would hang: just leave.
                send(self.out_fd, ERROR, (f"audio device {self.name} stopped playing (was the JACK server or "
                                            "the sound card stopped?): start it again and retry").encode())
                return _EXIT_BACKEND_DIED


def main(argv: list[str]) -> int:
    # Keep the protocol's stdout to ourselves: stray prints from C libraries go to stderr.
    in_fd, out_fd = os.dup(0), os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    if argv == ["--list"]:
        try:
            devices = [asdict(d) for d in _outputs_here(_import_sounddevice())]
            write_all(out_fd, json.dumps({"devices": devices}).encode())
        except _NoDevice as exc:
            write_all(out_fd, json.dumps({"error": str(exc)}).encode())
        return 0
    code = 1
    try:
        kind, payload = receive(in_fd)
        if kind != OPEN:
            raise _NoDevice(f"the audio process got {kind!r} before its settings")
        sd = _import_sounddevice()
        take = _ChildTake(sd, json.loads(payload), out_fd)
        send(out_fd, READY, json.dumps(take.info).encode())
        threading.Thread(target=take.read_parent, args=(in_fd,), name="audio-reader", daemon=True).start()
        code = take.run()
    except _NoDevice as exc:
        code = 0  # PortAudio itself is healthy: let it shut down normally
        with contextlib.suppress(OSError):
            send(out_fd, ERROR, str(exc).encode())
    except (EOFError, BrokenPipeError):
        code = 0  # the parent is gone
    except Exception as exc:  # noqa: BLE001  (the parent turns this into an error for the user)
        with contextlib.suppress(OSError):
            send(out_fd, ERROR, f"the audio process failed: {exc!r}".encode())
    if code != 0:
        # The backend is in trouble: PortAudio's exit handler would hang or abort the process
        # (see the module docstring), so leave without it.
        os._exit(code)
    return 0



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
