"""A bounded single-producer, single-consumer ring of float32 audio frames, shared by two threads.

The consumer side (``read_into``) is written for an audio callback: it copies into the buffer it is given,
zero-fills what is missing, never waits and never allocates audio-sized memory; the lock it takes guards
only a few integers. The producer side (``write``) blocks, with a timeout, while the ring is full.

Positions are running totals (frames ever written / ever read), so ``written - read`` is what is queued
and ``position % capacity`` is the slot; only the producer moves ``written``, only the consumer ``read``.
"""

from __future__ import annotations

import threading
import time

import numpy as np

__all__ = ["RingBuffer"]

# Slots of the int64 header.
_WRITTEN = 0  # frames ever written (producer)
_READ = 1  # frames ever consumed (consumer)
_UNDERRUNS = 2  # reads that found fewer frames than asked while input was not finished
_UNDERRUN_FRAMES = 3  # zero frames put in for those reads
_FINISHED = 4  # the producer will write no more
_CLOSED = 5  # the ring was shut: writers return at once
_HEADER_SLOTS = 8

# How often a writer waiting for room looks again. Space frees up one audio block at a time
# (5 to 50 ms), so a few milliseconds wastes nothing, and the realtime reader never has to
# signal anyone.
_POLL_SECONDS = 0.003


class RingBuffer:
    """A ring of ``capacity`` frames of ``channels`` float32 samples; frames are rows, as sounddevice wants them."""

    def __init__(self, capacity: int, channels: int) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError(f"a ring needs at least one frame and one channel, got {capacity} x {channels}")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._lock = threading.Lock()  # guards the header only, held for a few integer operations
        self._data = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._header = [0] * _HEADER_SLOTS

    # Producer side.
    def write(self, frames: np.ndarray, timeout: float | None = None) -> int:
        """Queue ``frames`` (shape (n, channels)); wait for room up to ``timeout`` seconds (None: no limit).

        Returns how many frames went in: all of them, or fewer when the timeout passed or the ring was
        closed (check ``closed``). ``timeout=0`` never waits, which makes this usable from a callback.
        """
        if frames.ndim != 2 or frames.shape[1] != self.channels:
            raise ValueError(f"expected frames of shape (n, {self.channels}), got {frames.shape}")
        total = int(frames.shape[0])
        if self.closed:
            return 0
        if self.finished:
            raise ValueError("this ring was marked finished: no more frames can be written")
        deadline = None if timeout is None else time.monotonic() + timeout
        done = 0
        while done < total:
            with self._lock:
                written = int(self._header[_WRITTEN])
                read = int(self._header[_READ])
                closed = bool(self._header[_CLOSED])
            if closed:
                break
            free = self.capacity - (written - read)
            if free == 0:
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    time.sleep(min(_POLL_SECONDS, left))
                else:
                    time.sleep(_POLL_SECONDS)
                continue
            n = min(free, total - done)
            start = written % self.capacity
            first = min(n, self.capacity - start)
            self._data[start:start + first] = frames[done:done + first]
            if n > first:
                self._data[:n - first] = frames[done + first:done + n]
            # The frames are in place before the new total is published (the lock orders the two).
            with self._lock:
                self._header[_WRITTEN] = written + n
            done += n
        return done

    def finish(self) -> None:
        """Say that no more frames will come: reads that then come up short are the end, not underruns."""
        with self._lock:
            self._header[_FINISHED] = 1

    def close(self) -> None:
        """Shut the ring: waiting writers return at once, later reads give silence without counting underruns."""
        with self._lock:
            self._header[_CLOSED] = 1
            self._header[_FINISHED] = 1

    # Consumer side.
    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (shape (frames, channels)) from the ring, zero-filling what is missing; never waits.

        Returns the frames of the stream that ``out`` now holds: every frame when input is still to come
        (missing ones are silence, counted as one underrun), or only the copied ones once input is finished.
        """
        frames = int(out.shape[0])
        with self._lock:
            written = int(self._header[_WRITTEN])
            read = int(self._header[_READ])
            finished = bool(self._header[_FINISHED])
        n = min(written - read, frames)
        if n > 0:
            self._copy_out(out, read, n)
        if n < frames:
            out[n:] = 0.0
        with self._lock:
            self._header[_READ] = read + n
            if n < frames and not finished:
                self._header[_UNDERRUNS] += 1
                self._header[_UNDERRUN_FRAMES] += frames - n
        return n if finished else frames

    def _copy_out(self, out: np.ndarray, read: int, n: int) -> None:
        """Copy ``n`` frames from stream position ``read`` into ``out[:n]``, across the ring's wrap."""
        start = read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._data[start:start + first]
        if n > first:
            out[first:n] = self._data[:n - first]

    def read_upto(self, out: np.ndarray) -> int:
        """Copy up to ``len(out)`` queued frames into ``out`` and return how many; never waits, counts nothing.

        For a consumer that decides itself what a short read means (the scheduled jam's placer).
        """
        with self._lock:
            written = int(self._header[_WRITTEN])
            read = int(self._header[_READ])
        n = min(written - read, int(out.shape[0]))
        if n > 0:
            self._copy_out(out, read, n)
            with self._lock:
                self._header[_READ] = read + n
        return n

    def skip(self, frames: int) -> int:
        """Drop up to ``frames`` queued frames unplayed (consumer side); returns how many were dropped."""
        with self._lock:
            n = max(0, min(int(frames), int(self._header[_WRITTEN] - self._header[_READ])))
            self._header[_READ] += n
        return n

    def note_underrun(self, frames: int) -> None:
        """Count one underrun of ``frames`` missing frames (for a consumer using :meth:`read_upto`)."""
        with self._lock:
            self._header[_UNDERRUNS] += 1
            self._header[_UNDERRUN_FRAMES] += int(frames)

    def read(self, max_frames: int | None = None) -> np.ndarray:
        """Take up to ``max_frames`` queued frames (all of them by default) as a new array; for non-realtime consumers."""
        with self._lock:
            written = int(self._header[_WRITTEN])
            read = int(self._header[_READ])
        n = written - read if max_frames is None else min(written - read, max_frames)
        out = np.empty((n, self.channels), dtype=np.float32)
        if n > 0:
            start = read % self.capacity
            first = min(n, self.capacity - start)
            out[:first] = self._data[start:start + first]
            if n > first:
                out[first:] = self._data[:n - first]
        with self._lock:
            self._header[_READ] = read + n
        return out

    # State, safe to read from either side.
    def _get(self, slot: int) -> int:
        with self._lock:
            return int(self._header[slot])

    @property
    def queued(self) -> int:
        """Frames written and not yet consumed."""
        with self._lock:
            return int(self._header[_WRITTEN] - self._header[_READ])

    @property
    def free(self) -> int:
        return self.capacity - self.queued

    @property
    def written(self) -> int:
        return self._get(_WRITTEN)

    @property
    def consumed(self) -> int:
        return self._get(_READ)

    @property
    def underruns(self) -> int:
        return self._get(_UNDERRUNS)

    @property
    def underrun_frames(self) -> int:
        return self._get(_UNDERRUN_FRAMES)

    @property
    def finished(self) -> bool:
        return bool(self._get(_FINISHED))

    @property
    def closed(self) -> bool:
        return bool(self._get(_CLOSED))

    @property
    def drained(self) -> bool:
        """Finished and everything written has been consumed."""
        with self._lock:
            return bool(self._header[_FINISHED]) and int(self._header[_WRITTEN]) == int(self._header[_READ])
