"""A jam that writes files only (play 0) keeps at most ``ahead_bars`` bars ahead of real time.

Without it a fast machine runs far ahead of a DAW's playhead, and a prompt changed with ``set`` is
heard only after everything made before the change. Real time is measured here only as lower bounds
(a busy machine makes a segment later, never earlier), so the tests cannot fail for a slow machine.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from bridge import tempo
from bridge.app.jam import _wait_until, run_jam
from bridge.engine.jam import Jam, JamSettings, Segment
from bridge.errors import BadArgs
from bridge.options import Request

BAR = 1.0  # seconds: one bar of 4/4 at 240 bpm


def _timed(jam: Jam) -> tuple[list[float], list[float]]:
    """When each segment was begun and when it was ready (monotonic seconds), as the jam makes them."""
    begun: list[float] = []
    ready: list[float] = []
    make = jam.next_segment

    def next_segment(is_cancelled: Any = None) -> Segment:
        begun.append(time.monotonic())
        segment = make(is_cancelled=is_cancelled)
        ready.append(time.monotonic())
        return segment

    jam.next_segment = next_segment  # type: ignore[method-assign]
    return begun, ready


class InstantJam:
    """A stand-in for :class:`Jam` that makes its segments (silence) at once: the pacing alone sets the times."""

    def __init__(self, settings: JamSettings) -> None:
        self.settings = settings
        self.engine = SimpleNamespace(sample_rate=32000, channels=1)
        self.made = 0

    def next_segment(self, is_cancelled: Any = None) -> Segment:
        samples = tempo.bars_to_samples(self.settings.bars, self.settings.bpm, 32000, self.settings.beats_per_bar)
        segment = Segment(index=self.made, start_sample=self.made * samples, audio=np.zeros((1, samples), np.float32),
                          settings=self.settings, generation_seconds=0.0)
        self.made += 1
        return segment


@pytest.mark.parametrize("ahead", [1, 2])
def test_a_paced_jam_begins_no_segment_more_than_ahead_bars_before_it_is_due(tmp_path, ahead):
    jam = cast(Jam, InstantJam(JamSettings(prompt="lofi", bpm=240.0, bars=1, seed=3)))
    begun, ready = _timed(jam)
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, for_seconds=4 * BAR, ahead_bars=ahead)
    assert len(take.segments) == len(begun) == 4
    zero = ready[0]  # the first segment's arrival: the time the others are due from
    for k in range(1, 4):  # segment k is due k bars after the first
        assert begun[k] >= zero + (k - ahead) * BAR, (k, begun[k] - zero)
    assert take.seconds == pytest.approx(4 * BAR)


def test_a_real_jam_begins_no_segment_earlier_than_its_lead_allows(tiny_engine, tmp_path):
    """The lead is ahead_bars or twice the slowest segment's making time, whichever is longer."""
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=240.0, bars=1, seed=3))
    begun, ready = _timed(jam)
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, for_seconds=4 * BAR, ahead_bars=1)
    assert len(take.segments) == 4
    zero = ready[0]
    for k in range(1, 4):
        slowest = max(r - b for b, r in zip(begun[:k], ready[:k], strict=True))  # as measured out here: a bit more
        assert begun[k] >= zero + k * BAR - max(BAR, 2 * slowest), (k, begun[k] - zero, slowest)


def test_an_unpaced_jam_files_only_is_unchanged(tiny_engine, tmp_path):
    jam = Jam(tiny_engine, JamSettings(prompt="lofi", bpm=240.0, bars=1, seed=3))
    begun, ready = _timed(jam)
    take = run_jam(jam, tmp_path / "jam", should_stop=lambda: False, for_seconds=3 * BAR)
    assert len(take.segments) == 3
    assert all(b >= r for b, r in zip(begun[1:], ready, strict=False))  # each right after the last, in order


def test_a_stop_ends_the_wait_for_the_next_segments_time():
    asked = []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) > 3

    assert _wait_until(time.monotonic() + 3600.0, should_stop) is False  # not an hour: the stop ends it
    assert len(asked) == 4
    assert _wait_until(time.monotonic() - 1.0, lambda: False) is True  # a time already passed: no wait


def test_a_stop_during_the_wait_ends_the_jam_with_what_it_made(tmp_path):
    """Slow bars (8 s at 30 bpm), one bar ahead: the third segment waits 8 s for its time; the stop comes then."""
    jam = cast(Jam, InstantJam(JamSettings(prompt="lofi", bpm=30.0, bars=1, seed=3)))
    begun, ready = _timed(jam)
    asked_after_two: list[int] = []

    def should_stop() -> bool:  # true from the third question after the second segment: inside the wait
        if len(ready) >= 2:
            asked_after_two.append(1)
        return len(asked_after_two) >= 3

    take = run_jam(jam, tmp_path / "jam", should_stop=should_stop, ahead_bars=1)
    assert len(begun) == 2  # no third segment was begun: the wait ended with the stop
    assert len(take.segments) == 2 and take.seconds == pytest.approx(16.0)


@pytest.mark.parametrize("options, why", [({"play": True}, "the device paces a playing jam"),
                                          ({"sync": "link"}, "its clock paces a synced jam")])
def test_ahead_bars_is_refused_where_something_else_paces_the_jam(options, why):
    with pytest.raises(BadArgs) as refused:
        Request(mode="jam", prompt="lofi", ahead_bars=2, **options).validate()
    assert "ahead_bars paces a jam that writes files only: give play 0" in str(refused.value)
    assert why in str(refused.value)
    Request(mode="jam", prompt="lofi", ahead_bars=2).validate()  # files only, its own tempo: paced


def test_over_osc_a_playing_jam_with_ahead_bars_is_refused_and_a_files_only_one_runs(osc_server, tiny_bridge):
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/jam/start", "loud", "lofi", "bpm", 240.0, "bars", 1, "play", 1, "ahead_bars", 2)
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "loud", timeout=10)
    assert fail.args[2] == "bad_args" and "the device paces a playing jam" in fail.args[3]
    client.send("/musicgen/jam/start", "paced", "lofi", "bpm", 240.0, "bars", 1, "play", 0, "ahead_bars", 1)
    for index in range(3):  # (the times are checked above, where the segments' making is measured)
        segment = client.expect("/musicgen/jam/segment", lambda m: m.args[0] == "paced", timeout=60)
        assert segment.args[1] == index
    client.send("/musicgen/jam/stop")
    done = client.expect("/musicgen/done", lambda m: m.args[:2] == ("/musicgen/jam/start", "paced"), timeout=60)
    assert done.args[3] >= 3 * BAR  # the take holds at least the three segments heard of
