"""Placing audio at host times: the device's sample clock mapped to the host clock, and segments put on it.

A synced jam (``sync link``/``midi``) says when each segment's first sample must be heard, as a host time
on ``CLOCK_MONOTONIC_RAW`` (Ableton Link's clock), and the playback child puts that sample there.

:class:`HostTimeFilter` maps the device's sample counter to the host time at which a sample is heard. One
callback's own estimate (the time the callback runs, plus PortAudio's ``outputBufferDacTime -
currentTime``) jitters by a fraction of a millisecond to several milliseconds, so, as Link's own
``HostTimeFilter`` does, it fits a line of host time on the sample counter over the last callbacks.

:class:`Placer` is the callback's consumer of the ring when playback is scheduled: it plays the ring
in order, but a marker ``(ring frame P, host time T)`` makes frame P come out at the device frame the
filter gives for T: silence before it when the audio is early, the previous segment cut short when the
new bar line comes first (the bar lines win). A handover within ``tolerance`` frames of its target is
left continuous, so back-to-back segments never get a one-sample gap or cut from the fit's wobble.
"""

from __future__ import annotations

import collections
import threading
from typing import NamedTuple

import numpy as np

from bridge.audio.ringbuffer import RingBuffer

__all__ = ["HostTimeFilter", "Placement", "Placer"]


class HostTimeFilter:
    """A running least-squares line ``host_ns = t0 + (frame - f0) * ns_per_frame`` over the last callbacks.

    The line is fitted to the callbacks of the last ``window_seconds`` of frames (at most ``size`` of them):
    long enough to average the jitter away, short enough to follow a device clock that wanders (the JACK
    dummy driver's pacing slips when the machine is busy). ``add`` is called from the audio callback (it
    stores two numbers); ``refit`` from another thread.
    """

    def __init__(self, rate: int, size: int = 2048, min_points: int = 8, window_seconds: float = 2.0) -> None:
        self.rate = rate
        self.window_frames = window_seconds * rate
        self.size = size
        self.min_points = min_points
        self._frames = np.zeros(size, dtype=np.float64)
        self._times = np.zeros(size, dtype=np.float64)
        self._count = 0
        self.line: tuple[float, float, float] | None = None  # (f0, t0, ns per frame), swapped whole
        self._reported = 0  # points handed out by ``new_points``
        self.residual_ns = 0.0  # the fit's RMS residual: the callback jitter it smooths out

    def add(self, frame: int, host_ns: int) -> None:
        i = self._count % self.size
        self._frames[i] = frame
        self._times[i] = host_ns
        self._count += 1

    def new_points(self) -> np.ndarray:
        """The (frame, host ns) points added since the last call, as an (n, 2) int64 array (for measuring)."""
        count = self._count - 1
        start = max(self._reported, count - self.size + 1)
        idx = np.arange(start, count) % self.size
        self._reported = max(self._reported, count)
        return np.stack([self._frames[idx], self._times[idx]], axis=1).astype(np.int64)

    def refit(self) -> None:
        count = self._count - 1  # the newest row may be half written
        n = min(count, self.size - 1)
        if n < self.min_points:
            return
        idx = np.arange(count - n, count) % self.size
        frames, times = self._frames[idx], self._times[idx]
        recent = frames >= frames[-1] - self.window_frames
        if int(recent.sum()) >= self.min_points:
            frames, times = frames[recent], times[recent]
        f0, t0 = float(frames.mean()), float(times.mean())
        df, dt = frames - f0, times - t0
        denom = float(np.dot(df, df))
        if denom <= 0:
            return
        slope = float(np.dot(df, dt)) / denom
        nominal = 1e9 / self.rate
        if not 0.5 * nominal < slope < 2.0 * nominal:  # a stalled or bursting backend: keep the old line
            return
        self.residual_ns = float(np.sqrt(np.mean((dt - slope * df) ** 2)))
        self.line = (f0, t0, slope)

    def frame_at(self, host_ns: float) -> int | None:
        line = self.line
        if line is None:
            return None
        f0, t0, slope = line
        return round(f0 + (host_ns - t0) / slope)

    def time_at(self, frame: float) -> float | None:
        line = self.line
        if line is None:
            return None
        f0, t0, slope = line
        return t0 + (frame - f0) * slope


class Placement(NamedTuple):
    """Where a marked ring frame came out: ``device_frame`` vs the ``target_frame`` its host time asked for.

    A flush is reported as ``ring_frame`` -1 at the device frame from which it silenced the device.
    """

    ring_frame: int
    device_frame: int
    target_frame: int
    host_ns: int


class Placer:
    """Fills the callback's blocks from the ring, putting marked frames at their host times (see the module)."""

    def __init__(self, ring: RingBuffer, clock: HostTimeFilter, tolerance: int = 24) -> None:
        self.ring = ring
        self.clock = clock
        self.tolerance = tolerance
        self._markers: collections.deque[tuple[int, int]] = collections.deque()  # (ring frame, host ns)
        self._skip_to = 0
        self._flush_asked = False
        self._lock = threading.Lock()  # markers come from the reader thread; held for a deque operation
        self.placed: collections.deque[Placement] = collections.deque()  # read and emptied by the reporter
        self.playing_segment = False  # a segment has been placed and its audio is due

    def mark(self, ring_frame: int, host_ns: int) -> None:
        """Ring frame ``ring_frame`` (a running total of frames written) is to be heard at ``host_ns``."""
        with self._lock:
            self._markers.append((int(ring_frame), int(host_ns)))

    def flush(self) -> None:
        """Silence at once: everything written so far is dropped unplayed, with its markers."""
        with self._lock:
            self._skip_to = self.ring.written
            self._flush_asked = True
            self._markers = collections.deque(m for m in self._markers if m[0] >= self._skip_to)

    def _next_marker(self) -> tuple[int, int] | None:
        with self._lock:
            return self._markers[0] if self._markers else None

    def _pop_marker(self) -> None:
        with self._lock:
            self._markers.popleft()

    def fill(self, out: np.ndarray, device_frame: int) -> None:
        """Fill the whole block ``out``; its first frame is heard at device frame ``device_frame``."""
        n = int(out.shape[0])
        done = 0
        ring = self.ring
        tol = self.tolerance
        if self._flush_asked:
            self._flush_asked = False
            self.playing_segment = False
            self.placed.append(Placement(-1, device_frame, device_frame, 0))
        while done < n:
            pos = ring.consumed
            if self._skip_to > pos:  # flushed: drop what was written before the flush
                if ring.skip(self._skip_to - pos) == 0:
                    break
                self.playing_segment = False
                continue
            here = device_frame + done
            marker = self._next_marker()
            if marker is None:
                if not self.playing_segment:
                    break  # idle: nothing placed yet
                got = ring.read_upto(out[done:])
                done += got
                if done < n and not ring.finished:
                    ring.note_underrun(n - done)
                break
            frame, host_ns = marker
            target = self.clock.frame_at(host_ns)
            if target is None:
                break  # no clock yet: silence until the filter has its line
            if pos < frame:  # audio before this bar line: the segment playing now
                remaining = frame - pos
                if not self.playing_segment:
                    if ring.skip(remaining) == 0:
                        break  # an unplaced leftover, dropped; or not written yet
                    continue
                # a segment that would run past the bar line (beyond the tolerance) is cut at the bar line
                limit = remaining if here + remaining <= target + tol else target - here
                if limit <= 0:
                    if ring.skip(remaining) < remaining:
                        ring.note_underrun(n - done)
                        break
                    continue
                want = min(n - done, limit)
                got = ring.read_upto(out[done:done + want])
                done += got
                if got < want:
                    ring.note_underrun(n - done)
                    break
                continue
            if here < target - tol:  # early: silence up to the bar line
                gap = min(n - done, target - here)
                out[done:done + gap] = 0.0
                done += gap
                continue
            late = here - target if here > target + tol else 0
            skipped = ring.skip(late) if late else 0
            self.placed.append(Placement(frame, here - skipped, target, host_ns))
            self.playing_segment = True
            self._pop_marker()
        if done < n:
            out[done:] = 0.0

    @property
    def idle(self) -> bool:
        """Nothing to play and nothing pending: the ring is empty and no bar line waits."""
        return self._next_marker() is None and self.ring.queued == 0
