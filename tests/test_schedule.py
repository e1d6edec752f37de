"""Placing audio at host times (bridge.audio.schedule): the filter's line, and segments put on their bar lines."""

from __future__ import annotations

import numpy as np

from bridge.audio.ringbuffer import RingBuffer
from bridge.audio.schedule import HostTimeFilter, Placer

RATE = 48000
NS = 1e9 / RATE  # ns per frame of an exact clock
BLOCK = 256


def exact_clock(jitter_ns: float = 0.0, seed: int = 0) -> HostTimeFilter:
    """A filter fed 400 callbacks of a 48 kHz device whose frame 0 is heard at host time 1 s."""
    clock = HostTimeFilter(RATE)
    noise = np.random.default_rng(seed).normal(0, jitter_ns, 400) if jitter_ns else np.zeros(400)
    for i in range(400):
        clock.add(i * BLOCK, int(1e9 + i * BLOCK * NS + noise[i]))
    clock.refit()
    return clock


def run(placer: Placer, blocks: int, start_frame: int = 0) -> np.ndarray:
    out = []
    for b in range(blocks):
        block = np.full((BLOCK, 1), np.nan, dtype=np.float32)
        placer.fill(block, start_frame + b * BLOCK)
        out.append(block)
    return np.concatenate(out)[:, 0]


def ramp(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.float32).reshape(-1, 1)


def test_the_filter_recovers_the_device_clock_through_callback_jitter():
    clock = exact_clock(jitter_ns=2e6)  # 2 ms of jitter per callback, as the JACK dummy shows under load
    frame = clock.frame_at(1e9 + 90_000 * NS)
    assert frame is not None and abs(frame - 90_000) <= 48  # within 1 ms
    assert abs(clock.residual_ns - 2e6) < 0.5e6


def test_a_segment_waits_in_silence_for_its_bar_line_and_starts_on_its_frame():
    ring = RingBuffer(20_000, 1)
    placer = Placer(ring, exact_clock(), tolerance=24)
    placer.mark(0, int(1e9 + 1000 * NS))  # the first frame written is to be heard at device frame 1000
    ring.write(ramp(1, 3000))
    played = run(placer, 12)
    assert not np.isnan(played).any()
    assert (played[:1000] == 0).all() and played[1000] == 1 and played[1999] == 1000
    assert [(p.ring_frame, p.device_frame, p.target_frame) for p in placer.placed] == [(0, 1000, 1000)]


def test_a_segment_longer_than_its_bars_is_cut_at_the_next_bar_line():
    ring = RingBuffer(20_000, 1)
    placer = Placer(ring, exact_clock(), tolerance=24)
    placer.mark(0, int(1e9 + 0 * NS))
    placer.mark(1500, int(1e9 + 1000 * NS))  # the second segment's bar line comes 500 frames early
    ring.write(ramp(1, 1500))
    ring.write(ramp(10_001, 1000))
    played = run(placer, 8)
    assert played[999] == 1000 and played[1000] == 10_001  # cut at frame 1000, the new one on its bar line
    assert [p.device_frame for p in placer.placed] == [0, 1000]


def test_a_segment_shorter_than_its_bars_is_padded_to_the_next_bar_line():
    ring = RingBuffer(20_000, 1)
    placer = Placer(ring, exact_clock(), tolerance=24)
    placer.mark(0, int(1e9))
    placer.mark(800, int(1e9 + 1000 * NS))
    ring.write(ramp(1, 800))
    ring.write(ramp(10_001, 500))
    played = run(placer, 8)
    assert played[799] == 800 and (played[800:1000] == 0).all() and played[1000] == 10_001


def test_a_handover_within_the_tolerance_stays_continuous():
    ring = RingBuffer(20_000, 1)
    placer = Placer(ring, exact_clock(), tolerance=24)
    placer.mark(0, int(1e9))
    placer.mark(1003, int(1e9 + 1000 * NS))  # 3 frames over: no cut, no gap
    ring.write(ramp(1, 1003))
    ring.write(ramp(10_001, 500))
    played = run(placer, 8)
    assert played[1002] == 1003 and played[1003] == 10_001
    assert placer.placed[1].device_frame == 1003 and placer.placed[1].target_frame == 1000


def test_a_late_segment_loses_its_head_and_keeps_the_grid():
    ring = RingBuffer(20_000, 1)
    placer = Placer(ring, exact_clock(), tolerance=24)
    run(placer, 4)  # the device ran 1024 frames before the audio came
    placer.mark(0, int(1e9 + 512 * NS))  # its bar line has passed by 512 frames
    ring.write(ramp(1, 2000))
    played = run(placer, 2, start_frame=1024)
    assert played[0] == 513  # the frame due now, not the first one
    assert placer.placed[0].device_frame == 512


def test_flush_silences_what_is_queued_and_the_next_mark_places_what_follows():
    ring = RingBuffer(20_000, 1)
    placer = Placer(ring, exact_clock(), tolerance=24)
    placer.mark(0, int(1e9))
    ring.write(ramp(1, 5000))
    first = run(placer, 2)
    assert first[0] == 1
    placer.flush()
    placer.mark(5000, int(1e9 + 2048 * NS))
    ring.write(ramp(20_001, 500))
    ring.finish()  # the end of the take: what follows the last frame is not an underrun
    played = run(placer, 8, start_frame=512)
    assert (played[:1536] == 0).all() and played[1536] == 20_001 and played[2035] == 20_500
    assert ring.underruns == 0 and placer.idle
