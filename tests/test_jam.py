"""The jam's segments: whole bars on the absolute grid, continuous across handovers, changes at the next one."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bridge import tempo
from bridge.errors import BadArgs
from bridge.jam import Jam, JamSettings


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

    from bridge.jam_runner import StreamResampler

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

    from bridge.jam_runner import run_jam

    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=120.0, bars=1, seed=2))
    announced = []
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, for_seconds=5.0,
                   on_segment=lambda i, p, s: announced.append((i, p.name, s)))
    assert [a[0] for a in announced] == [0, 1, 2]  # 3 bars of 2 s reach 5 s
    assert [a[2] for a in announced] == [0.0, 2.0, 4.0]
    data, rate = sf.read(take.path, always_2d=True)
    assert rate == 32000 and data.shape[0] == 3 * 64000
    joined = np.concatenate([sf.read(p, always_2d=True)[0] for p in take.segments], axis=0)
    np.testing.assert_array_equal(joined, data)
