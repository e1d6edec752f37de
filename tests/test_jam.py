"""The jam's segments: whole bars on the absolute grid, continuous across handovers, changes at the next one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bridge import tempo
from bridge.engine.jam import Jam, JamSettings
from bridge.errors import BadArgs


def test_segments_are_whole_bars_and_continuous(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=97.0, bars=2, seed=3))
    segments = [jam.next_segment() for _ in range(3)]
    edges = [0] + [tempo.bars_to_samples(2 * (i + 1), 97.0, 32000) for i in range(3)]
    assert [s.start_sample for s in segments] == edges[:3]
    assert [s.audio.shape[-1] for s in segments] == [b - a for a, b in itertools.pairwise(edges)]
    take = np.concatenate([s.audio for s in segments], axis=-1)
    # the take equals one decode of the whole token timeline: no gap, no jump at the handovers
    whole = tiny_engine.decode(jam.codes)[0][:, : take.shape[-1]]
    assert float(np.abs(take - whole).max()) < 1e-5


def test_changes_apply_at_the_next_segment(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=1))
    first = jam.next_segment()
    jam.set({"prompt": "techno", "temperature": 0.7})
    assert jam.settings.prompt == "lofi"  # not before the next segment
    second = jam.next_segment()
    assert (first.settings.prompt, second.settings.prompt) == ("lofi", "techno")
    assert second.settings.temperature == 0.7


def test_tempo_change_starts_a_new_grid_at_the_boundary(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(bpm=120.0, bars=1, seed=1))
    jam.next_segment()  # 2 s
    jam.set({"bpm": 60.0})
    seg = jam.next_segment()  # one bar at 60 bpm: 4 s from 2 s
    assert seg.start_sample == 64000 and seg.audio.shape[-1] == 128000


def test_bad_jam_settings_say_what_to_do(tiny_engine):
    jam = Jam(tiny_engine, JamSettings(bpm=120.0, bars=1))
    with pytest.raises(BadArgs, match="did you mean 'temperature'"):
        jam.set({"temprature": 1.0})
    with pytest.raises(BadArgs, match="at most 20 s"):
        jam.set({"bars": 64})


@pytest.mark.parametrize(("rate_from", "rate_to"), [(32000, 48000), (32000, 44100), (32000, 32000)])
def test_stream_resampler_equals_one_shot(rate_from, rate_to):
    from scipy.signal import resample_poly

    from bridge.app.jam import StreamResampler

    rng = np.random.default_rng(1)
    signal = rng.standard_normal((2, 50_000)).astype(np.float32) * 0.1
    resampler = StreamResampler(rate_from, rate_to, channels=2)
    pieces = [resampler.push(signal[:, a : a + n]) for a, n in ((0, 7000), (7000, 13001), (20001, 29999))]
    pieces.append(resampler.flush())
    streamed = np.concatenate(pieces, axis=1)
    from fractions import Fraction

    ratio = Fraction(rate_to, rate_from)
    whole = resample_poly(signal, ratio.numerator, ratio.denominator, axis=1)
    assert streamed.shape == whole.shape
    assert float(np.abs(streamed - whole).max()) < 1e-4


def test_run_jam_writes_segments_and_the_take(tiny_engine, tmp_path):
    import soundfile as sf

    from bridge.app.jam import run_jam

    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    announced = []
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, for_seconds=5.0,
                   on_segment=lambda i, p, s, n: announced.append((i, p.name, s, n)))
    assert [a[0] for a in announced] == [0, 1, 2]  # 3 bars of 2 s reach 5 s
    assert [a[2] for a in announced] == [0.0, 2.0, 4.0]
    assert [a[3] for a in announced] == [2.0, 2.0, 2.0]  # each segment is one bar of 2 s
    data, rate = sf.read(take.path, always_2d=True)
    assert rate == 32000 and data.shape[0] == 3 * 64000
    joined = np.concatenate([sf.read(p, always_2d=True)[0] for p in take.segments], axis=0)
    np.testing.assert_array_equal(joined, data)


class _RecordingPlayer:
    """A stand-in for the output device (unit test): records what the runner asks of it."""

    sample_rate = 32000
    channels = 2
    underruns = 0

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []
        self.queued = 0.0
        self.open_start_seconds: float | None = None

    def open(self, record=False, start_seconds=None):
        self.open_start_seconds = start_seconds

    def write(self, data):
        self.queued += data.shape[1] / self.sample_rate
        return data.shape[1]

    def start(self):
        self.events.append(("start", self.queued))

    def finish(self):
        self.events.append(("finish", self.queued))

    def wait(self, timeout=None):
        return True

    def stop(self):
        self.events.append(("stop", self.queued))


def _slowed(jam, generation_seconds):
    """Make every segment report ``generation_seconds`` of generation (as a slow machine would)."""
    import dataclasses

    real = jam.next_segment

    def next_segment(is_cancelled=None):
        return dataclasses.replace(real(is_cancelled=is_cancelled), generation_seconds=generation_seconds)

    jam.next_segment = next_segment
    return jam


def test_playback_waits_for_two_segments_when_faster_than_real_time(tiny_engine, tmp_path):
    from bridge.app.jam import run_jam

    player = _RecordingPlayer()
    warnings = []
    jam = _slowed(Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2)), 0.5)
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, player=player, for_seconds=8.0,
                   warn=warnings.append)
    assert player.open_start_seconds is not None and player.open_start_seconds > 60  # the runner decides
    kind, queued_at_start = player.events[0]
    assert kind == "start" and queued_at_start >= 4.0 - 0.05  # two 2 s bars (less the resampler's hold-back)
    assert take.preroll_seconds == 4.0 and warnings == []
    assert take.realtime_factor == pytest.approx(4.0)


def test_a_slow_machine_pre_rolls_and_says_so_once(tiny_engine, tmp_path):
    from bridge.app.jam import SLOW_MARGIN, run_jam

    player = _RecordingPlayer()
    warnings = []
    jam = _slowed(Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2)), 4.0)  # 0.5x
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, player=player, for_seconds=12.0,
                   warn=warnings.append)
    assert len(warnings) == 1 and "0.50x real time" in warnings[0]
    # enough that the rest is generated while the queue plays: 12 * (1 - 0.5) * margin + one bar, in whole bars
    needed = 12.0 * 0.5 * SLOW_MARGIN + 2.0
    assert take.preroll_seconds == pytest.approx(2.0 * -(-needed // 2.0))
    assert [e[0] for e in player.events] == ["start", "finish"]
