"""The playback ring buffer without any audio backend: order, wraparound, underruns, blocking, threads."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bridge.audio.ringbuffer import RingBuffer


def ramp(start: int, n: int, channels: int = 2) -> np.ndarray:
    """Frames whose every sample is distinct and non-zero (exact in float32 below 2**24)."""
    values = np.arange(start, start + n * channels, dtype=np.float64) + 1.0
    return values.reshape(n, channels).astype(np.float32)


def test_wraparound_keeps_every_sample_in_order():
    ring = RingBuffer(8, 2)
    first, second = ramp(0, 5), ramp(10, 6)
    assert ring.write(first) == 5
    out = np.empty((3, 2), np.float32)
    assert ring.read_into(out) == 3
    np.testing.assert_array_equal(out, first[:3])
    assert ring.write(second) == 6  # 2 + 6 = 8 queued, the write wraps past the end
    assert ring.queued == 8 and ring.free == 0
    out = np.empty((8, 2), np.float32)
    assert ring.read_into(out) == 8
    np.testing.assert_array_equal(out, np.concatenate([first[3:], second]))
    assert ring.underruns == 0 and ring.queued == 0
    assert ring.written == 11 and ring.consumed == 11


def test_short_read_is_an_underrun_filled_with_silence():
    ring = RingBuffer(16, 1)
    ring.write(ramp(0, 3, 1))
    out = np.full((5, 1), 7.0, np.float32)
    assert ring.read_into(out) == 5  # five frames of the stream went out: three samples and two of silence
    np.testing.assert_array_equal(out[:, 0], [1, 2, 3, 0, 0])
    assert ring.underruns == 1 and ring.underrun_frames == 2
    out[:] = 7.0
    assert ring.read_into(out) == 5
    assert not out.any()
    assert ring.underruns == 2 and ring.underrun_frames == 7


def test_end_of_input_is_not_an_underrun():
    ring = RingBuffer(16, 2)
    ring.write(ramp(0, 3))
    ring.finish()
    assert not ring.drained
    out = np.full((5, 2), 7.0, np.float32)
    assert ring.read_into(out) == 3  # only the real frames count once input is finished
    np.testing.assert_array_equal(out[:3], ramp(0, 3))
    assert not out[3:].any()
    assert ring.underruns == 0 and ring.drained
    with pytest.raises(ValueError, match="finished"):
        ring.write(ramp(0, 1))


def test_write_waits_for_room_until_its_timeout():
    ring = RingBuffer(4, 1)
    assert ring.write(ramp(0, 6, 1), timeout=0) == 4  # timeout 0: what fits, no waiting
    started = time.monotonic()
    assert ring.write(ramp(0, 2, 1), timeout=0.1) == 0
    waited = time.monotonic() - started
    assert waited >= 0.09  # it waited its timeout (a busy machine only makes the wait longer: no upper bound)


def test_write_resumes_when_the_consumer_makes_room():
    ring = RingBuffer(4, 1)
    ring.write(ramp(0, 4, 1))
    out = np.empty((3, 1), np.float32)

    def consume_later():
        time.sleep(0.05)
        ring.read_into(out)

    consumer = threading.Thread(target=consume_later)
    consumer.start()
    assert ring.write(ramp(4, 3, 1), timeout=30) == 3
    consumer.join()
    np.testing.assert_array_equal(ring.read(), ramp(0, 7, 1)[3:])


def test_close_releases_a_waiting_writer_at_once():
    ring = RingBuffer(4, 2)
    ring.write(ramp(0, 4))
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(ring.write(ramp(0, 10), timeout=None)))
    writer.start()
    time.sleep(0.05)  # most likely waiting by now; were it not, the write finds the ring closed: the same outcome
    ring.close()
    writer.join(30)  # a writer with no timeout returns only because of the close
    assert not writer.is_alive() and result == [0]
    assert ring.closed and ring.write(ramp(0, 1)) == 0
    out = np.ones((4, 2), np.float32)
    ring.read_into(out)
    assert ring.underruns == 0


def test_rejects_frames_of_the_wrong_shape():
    ring = RingBuffer(4, 2)
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        ring.write(np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError):
        RingBuffer(0, 2)


def test_concurrent_producer_and_consumer_keep_order_and_count_the_gaps():
    total, channels = 200_000, 2
    data = ramp(0, total, channels)
    ring = RingBuffer(4096, channels)
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 3000, size=1000)

    def produce():
        done = 0
        for size in sizes:
            if done >= total:
                break
            chunk = data[done:done + int(size)]
            assert ring.write(chunk, timeout=10) == len(chunk)
            done += len(chunk)
            if size % 7 == 0:
                time.sleep(0.001)  # now and then be late, so the consumer underruns
        if done < total:
            assert ring.write(data[done:], timeout=10) == total - done
        ring.finish()

    producer = threading.Thread(target=produce)
    producer.start()
    pieces = []
    silent_frames = 0
    block = np.empty((256, channels), np.float32)
    deadline = time.monotonic() + 20
    while not ring.drained and time.monotonic() < deadline:
        played = ring.read_into(block)
        silent = ~block[:played].any(axis=1)  # data never holds a zero, so silent frames are underrun fill
        silent_frames += int(silent.sum())
        pieces.append(block[:played][~silent].copy())
        time.sleep(0.0001)
    producer.join(5)
    np.testing.assert_array_equal(np.concatenate(pieces), data)
    assert silent_frames == ring.underrun_frames
    assert (ring.underruns == 0) == (ring.underrun_frames == 0)

