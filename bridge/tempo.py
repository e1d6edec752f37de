"""Tempo arithmetic: bars and beats to seconds and samples, exact to the sample."""

from __future__ import annotations

from fractions import Fraction

from bridge.errors import BadArgs

MIN_BPM = 20.0
MAX_BPM = 400.0
MAX_BEATS_PER_BAR = 32


def check_tempo(bpm: float, beats_per_bar: int = 4) -> None:
    """Raise BadArgs unless ``bpm`` and ``beats_per_bar`` are usable."""
    if not (MIN_BPM <= bpm <= MAX_BPM):
        raise BadArgs(f"bpm {bpm:g} is out of range: give a tempo between {MIN_BPM:g} and {MAX_BPM:g}")
    if not (1 <= beats_per_bar <= MAX_BEATS_PER_BAR):
        raise BadArgs(f"beats_per_bar {beats_per_bar} is out of range: give 1 to {MAX_BEATS_PER_BAR} (4 for 4/4)")


def bar_seconds(bpm: float, beats_per_bar: int = 4) -> Fraction:
    """Exact length of one bar in seconds."""
    check_tempo(bpm, beats_per_bar)
    return Fraction(60) * beats_per_bar / Fraction(bpm).limit_denominator(1_000_000)


def bars_to_samples(bars: int, bpm: float, sample_rate: int, beats_per_bar: int = 4) -> int:
    """Number of samples in ``bars`` whole bars, rounded to the nearest sample.

    The rounding is done once for the whole length (not per bar), so N bars rendered in one
    go line up with the DAW's grid at the end within half a sample.
    """
    if bars < 1:
        raise BadArgs(f"bars must be 1 or more, got {bars}")
    return round(bar_seconds(bpm, beats_per_bar) * bars * sample_rate)


def bar_boundary_samples(bars: int, bpm: float, sample_rate: int, beats_per_bar: int = 4) -> list[int]:
    """Sample offsets of bar starts 0..bars (inclusive), each rounded on the absolute grid."""
    one = bar_seconds(bpm, beats_per_bar)
    return [round(one * i * sample_rate) for i in range(bars + 1)]


def whole_bars_near(seconds: float, bpm: float, beats_per_bar: int = 4) -> int:
    """The whole number of bars (at least 1) closest to ``seconds``."""
    return max(1, round(Fraction(seconds) / bar_seconds(bpm, beats_per_bar)))


def tempo_text(prompt: str, bpm: float, beats_per_bar: int = 4) -> str:
    """The text prompt with the tempo added, as MusicGen's training captions state it."""
    tempo = f"{bpm:g} bpm"
    if tempo in prompt.lower():
        return prompt
    sig = "" if beats_per_bar == 4 else f", {beats_per_bar}/4"
    return f"{prompt.rstrip(' .,')}, {tempo}{sig}" if prompt.strip() else f"{tempo}{sig}"
