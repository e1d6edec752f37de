"""Pure unit tests: tempo arithmetic and option parsing."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from bridge import tempo
from bridge.errors import BadArgs
from bridge.options import Request, parse_options


@pytest.mark.parametrize(("bars", "bpm", "rate", "expected"), [
    (1, 120.0, 48000, 96000),          # 2 s
    (4, 92.0, 32000, 333913),          # 10.4347... s rounded once
    (8, 128.0, 44100, 661500),         # 15 s
    (3, 97.5, 44100, round(Fraction(60 * 4 * 3, 1) / Fraction(975, 10) * 44100)),
])
def test_bars_to_samples_is_exact(bars, bpm, rate, expected):
    assert tempo.bars_to_samples(bars, bpm, rate) == expected


def test_bar_boundaries_never_drift():
    edges = tempo.bar_boundary_samples(64, 93.0, 44100)
    assert edges[-1] == tempo.bars_to_samples(64, 93.0, 44100)
    steps = {b - a for a, b in itertools.pairwise(edges)}
    assert max(steps) - min(steps) <= 1  # one-sample jitter, never accumulated


def test_tempo_text_added_once():
    assert tempo.tempo_text("dusty lofi keys", 92.0) == "dusty lofi keys, 92 bpm"
    assert tempo.tempo_text("house at 124 bpm", 124.0) == "house at 124 bpm"
    assert tempo.tempo_text("waltz", 90.0, 3) == "waltz, 90 bpm, 3/4"


def test_bad_tempo_says_the_range():
    with pytest.raises(BadArgs, match="between 20 and 400"):
        tempo.bars_to_samples(4, 1000.0, 48000)


def test_parse_options_types_and_hints():
    opts = parse_options(["seed", 3, "guidance", "2.5", "stream", 1, "name", "take"])
    assert opts == {"seed": 3, "guidance": 2.5, "stream": True, "name": "take"}
    with pytest.raises(BadArgs, match="did you mean 'temperature'"):
        parse_options(["temprature", 1.0])
    with pytest.raises(BadArgs, match="no value"):
        parse_options(["seed"])
    with pytest.raises(BadArgs, match="whole number"):
        parse_options(["bars", 2.5])


@pytest.mark.parametrize(("fields", "message"), [
    ({"seconds": -1.0}, "give a length"),
    ({"seconds": 10_000.0}, "out of range"),
    ({"seconds": 4.0, "temperature": 0.0}, "temperature"),
    ({"bpm": 120.0}, "both bpm and bars"),
    ({"seconds": 4.0, "variations": 50}, "variations"),
    ({"mode": "continue", "seconds": 4.0}, "needs a clip"),
    ({"seconds": 4.0, "format": "mp3"}, "format"),
])
def test_request_validation_messages(fields, message):
    with pytest.raises(BadArgs, match=message):
        Request(**fields).validate()
