"""The synced jam (``sync link``): every segment's first sample heard on a bar line of the set.

:func:`run_synced_jam` is :func:`bridge.app.jam.run_jam`'s twin for a jam that follows a
:class:`bridge.app.link.BarClock`:

- the tempo of each segment is the set's when the segment is begun, so a tempo change is heard from
  the next segment boundary on, each segment exact in samples at its tempo;
- the first segment waits for ``PREROLL_SEGMENTS`` segments to be ready, then goes on the first bar
  line after that (plus ``START_MARGIN``); each later segment on the bar line after its predecessor's
  bars, its audio generated ``lead`` seconds before that bar line (just in time, so a tempo change is
  followed at once);
- the playback child places each segment's first frame at its bar line's host time
  (``Player.mark``, ``bridge.audio.schedule``), the output latency compensated there;
- with Link start/stop sync, a stop of the set silences the jam at once (what was queued is dropped;
  the segments stay in the take) and its next start brings the jam back on the next bar line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

from bridge import audio
from bridge.app.link import BarClock
from bridge.app.results import JamTake
from bridge.engine.jam import Jam, Segment
from bridge.errors import BadArgs, Cancelled

log = logging.getLogger(__name__)

PREROLL_SEGMENTS = 2
START_MARGIN = 0.25  # seconds between the pre-roll being ready and the earliest bar line it may start on
MIN_LEAD = 1.5  # seconds: a segment is begun at least this long before its bar line
LEAD_PER_GENERATION = 2.0  # ... and at least this many times the slowest generation so far
_POLL = 0.005

OnSegment = Callable[[int, Path, float, float, float], None]  # index, path, start seconds, seconds, beat


class _Placer:
    """The parent's side of placing: resamples the jam's stream for the device and marks each segment's frame."""

    def __init__(self, player: Any, clock: BarClock, rate: int, channels: int) -> None:
        self.player = player
        self.clock = clock
        self.rate = rate
        self.ratio = Fraction(player.sample_rate, rate)
        self.resampler = audio.StreamResampler(rate, player.sample_rate, channels)

    def place(self, segment: Segment, beat: float, beats_per_bar: int) -> None:
        frame = round(segment.start_sample * self.ratio)  # the segment's first frame in the device-rate stream
        self.player.mark(frame, self.clock.time_at_beat(beat, beats_per_bar))
        self.player.write(audio.match_channels(self.resampler.push(segment.audio), self.player.channels))

    def finish(self) -> None:
        self.player.write(audio.match_channels(self.resampler.flush(), self.player.channels))
        self.player.finish()


def run_synced_jam(jam: Jam, folder: Path, should_stop: Callable[[], bool], clock: BarClock,
                   player: Any | None = None, on_segment: OnSegment | None = None,
                   for_seconds: float | None = None, record: Path | None = None,
                   warn: Callable[[str], None] | None = None) -> JamTake:
    """Generate segments on the set's bar grid until stopped (or ``for_seconds`` of audio)."""
    say = warn or log.warning
    folder.mkdir(parents=True, exist_ok=True)
    rate = jam.engine.sample_rate
    take = JamTake(path=folder / "take.wav")
    audio_seconds = 0.0
    began = time.monotonic()
    placer: _Placer | None = None
    caveat = clock.caveat()
    if caveat:
        say(caveat)
    beat: float | None = None  # the bar line the next segment goes on (None: not placed yet)
    waiting: list[tuple[Segment, Path]] = []  # made before the first bar line is chosen
    was_playing = clock.playing()
    warned: set[str] = set()

    def warn_once(key: str, message: str) -> None:
        if key not in warned:
            warned.add(key)
            say(message)

    def place(segment: Segment, path: Path, at: float) -> None:
        bpb = segment.settings.beats_per_bar
        if placer is not None:
            placer.place(segment, at, bpb)
        take.segment_beats.append(at)
        if on_segment is not None:
            on_segment(segment.index, path, segment.start_sample / rate, segment.audio.shape[-1] / rate, at)

    def lead() -> float:
        return max(MIN_LEAD, LEAD_PER_GENERATION * max(take.generation_seconds, default=0.0))

    def wait_for(at: float, bpb: int) -> bool:
        """Sleep until ``lead()`` before beat ``at`` (asked again each time: the tempo may change meanwhile);
        False when the set stopped or the jam was stopped."""
        while not should_stop():
            if was_playing and clock.playing() is False:
                return False
            left = (clock.time_at_beat(at, bpb) - clock.now_ns()) / 1e9 - lead()
            if left <= 0:
                return True
            time.sleep(min(_POLL, left))
        return False

    played_out = False
    files = audio.StreamWriter([take.path], rate, jam.engine.channels)  # the take, to disk as it grows
    try:
        if player is not None:
            player.open(record=record if record is not None else False, scheduled=True)
            placer = _Placer(player, clock, rate, jam.engine.channels)
        while not should_stop() and (for_seconds is None or audio_seconds < for_seconds):
            playing = clock.playing()
            if was_playing and playing is False:  # the set stopped: silence now, come back on its next start
                if player is not None:
                    player.flush()
                beat = None
                while not should_stop() and clock.playing() is False:
                    time.sleep(_POLL)
                continue
            was_playing = bool(playing) or was_playing
            bpb = jam.settings.beats_per_bar
            if beat is not None:
                if not wait_for(beat, bpb):
                    continue
            tempo = clock.tempo()
            if abs(tempo - (jam.pending or jam.settings).bpm) > 1e-9:
                try:
                    jam.set({"bpm": tempo})
                except BadArgs as exc:
                    warn_once("tempo", f"the set's tempo {tempo:g} bpm does not fit a segment ({exc.message}): "
                                       "the jam keeps its last tempo, cut or padded to the bar lines")
            try:
                segment = jam.next_segment(is_cancelled=should_stop)
            except Cancelled:
                break
            if take.first_audio_seconds is None:
                take.first_audio_seconds = time.monotonic() - began
            path = folder / f"segment-{segment.index:04d}.wav"
            audio.write_atomic(path, segment.audio, rate)
            seconds = segment.audio.shape[-1] / rate
            take.segments.append(path)
            take.segment_seconds.append(seconds)
            take.generation_seconds.append(segment.generation_seconds)
            take.segment_bpm.append(segment.settings.bpm)
            files.write(segment.audio)
            audio_seconds += seconds
            bars = segment.settings.bars * segment.settings.beats_per_bar
            if beat is None:
                waiting.append((segment, path))
                last = for_seconds is not None and audio_seconds >= for_seconds
                if len(waiting) < PREROLL_SEGMENTS and not last:
                    continue
                beat = clock.next_bar(clock.now_ns() + int(START_MARGIN * 1e9), bpb)
                take.preroll_seconds = sum(s.audio.shape[-1] for s, _ in waiting) / rate
                for ready, ready_path in waiting:
                    place(ready, ready_path, beat)
                    beat += ready.settings.bars * ready.settings.beats_per_bar
                waiting.clear()
                continue
            if clock.time_at_beat(beat, bpb) < clock.now_ns():  # its bar line has passed: the next one
                warn_once("late", "this machine generates slower than the set plays: the jam skips to the next "
                                  "bar line (fewer bars a segment, or a faster device, keep it on every bar)")
                beat = clock.next_bar(clock.now_ns() + int(START_MARGIN * 1e9), bpb)
            place(segment, path, beat)
            beat += bars
        for ready, ready_path in waiting:  # stopped during the pre-roll: still placed, on the next bar line
            beat = clock.next_bar(clock.now_ns() + int(START_MARGIN * 1e9), ready.settings.beats_per_bar) \
                if beat is None else beat
            place(ready, ready_path, beat)
            beat += ready.settings.bars * ready.settings.beats_per_bar
        if placer is not None and player is not None:
            placer.finish()
            player.wait(timeout=audio_seconds + 30.0)
            take.underruns = player.underruns
            take.placements = player.placements
            if record is not None:
                take.record_path = record
            played_out = True
    except BaseException:
        files.abort()
        raise
    finally:
        if player is not None and not played_out:
            player.stop()
    files.close()
    take.seconds = files.frames / rate
    if sum(take.generation_seconds) > 0:
        take.realtime_factor = audio_seconds / sum(take.generation_seconds)
    return take
