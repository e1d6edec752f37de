"""The jam written into the Arrangement ahead of the playhead, so Live itself plays it in time.

Segment n of a jam goes ``bars * n`` bars after the first one, so the segments follow each other
without a seam; none goes nearer the playhead (``Song.current_song_time``) than the margin. When the
playhead has overtaken the jam (a machine slower than real time) the script says so once and puts
each later segment at the next bar it can still reach, never under the playhead. Bars are counted
from the Arrangement's start at the song's time signature.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from . import placing

if TYPE_CHECKING:
    from Live.Song import Song
    from Live.Track import Track

# Live reads audio from disk ahead of the playhead; a clip placed later than that starts late or
# silent. 2 s is well past Live's read-ahead and one ~100 ms tick of this script.
DEFAULT_MARGIN = 2.0
NEEDS = ("this Live cannot put a file into the Arrangement from a script (Live 11.3.25 or 12.0.5 and later can), "
         "so the jam cannot write itself there")


class ArrangementJam:
    """Where one jam's segments go in the Arrangement, and what has been placed."""

    def __init__(self, song: Song, track: Track, bar: placing.Meter, bars: int, margin_seconds: float,
                 say: Callable[[str], None]) -> None:
        self.song = song
        self.track = track  # the prompt clip's track: the segments go on an audio track to its right
        self.bar = bar
        self.bars = bars
        self.margin_seconds = margin_seconds
        self.say = say
        self.anchor_beat: float | None = None
        self.anchor_index = 0
        self.overtaken = False
        self.target: Track | None = None
        self.placed = 0

    @property
    def segment_beats(self) -> float:
        return self.bars * self.bar.quarters_per_bar

    def position(self, index: int, now: float) -> float:
        """The beat where segment ``index`` starts, with the playhead at beat ``now``."""
        earliest = now + self.margin_seconds * self.song.tempo / 60.0
        if self.anchor_beat is not None:
            target = self.anchor_beat + (index - self.anchor_index) * self.segment_beats
            if target >= earliest - placing.EPSILON:
                return target
            if not self.overtaken:
                self.overtaken = True
                self.say(f"the playhead overtook the jam (this machine makes it slower than real time): segment "
                         f"{index + 1} and later go at the next bar still {self.margin_seconds:g} s ahead, so there "
                         "are gaps")
        bar = self.bar.quarters_per_bar
        start = math.ceil(earliest / bar - placing.EPSILON) * bar
        self.anchor_beat, self.anchor_index = start, index
        return start

    def place(self, index: int, path: str, name: str) -> str:
        """Put segment ``index`` (the file at ``path``) into the Arrangement; where it went, in words.
        Raises placing.NotPlaced when Live refuses."""
        position = self.position(index, self.song.current_song_time)
        beats = self.segment_beats
        target = self.target
        if target is None or not placing.arrangement_is_free(target, position, position + beats):
            target = placing.arrangement_target(self.song, self.track, position, beats, False, name)
            self.target = target
        clip = placing.put_in_arrangement(target, path, position)
        if clip is not None:
            placing.pin_to_bars(clip, beats, 0.0)
            clip.name = f"{name} {index + 1}"
        self.placed += 1
        return f"track '{target.name}' at bar {int(position / self.bar.quarters_per_bar + placing.EPSILON) + 1}"
