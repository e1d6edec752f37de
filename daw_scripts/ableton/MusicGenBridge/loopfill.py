"""`mg loop:` and `mg fill:` clips, and the negative prompt after ` -- ` in any prompt clip's name.

`mg loop: <prompt>` asks for a loop of the clip's length that repeats without a seam (placed looping, as
every result is). `mg fill: <prompt>` is an empty MIDI clip in the Arrangement whose time lies between two
audio clips on an audio track (the nearest one to its right that has such a pair): the bridge fills the
gap between them, continuing the first and leading into the second, and the fill replaces the MIDI clip.
A prompt's text after ` -- ` is what the audio should not have: `mg: warm pads -- no drums, no vocals`
sends the prompt 'warm pads' with the negative prompt 'drums, vocals'.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, NamedTuple

from . import placing

if TYPE_CHECKING:
    from Live.Clip import Clip
    from Live.Song import Song
    from Live.Track import Track

_NEGATIVE = re.compile(r"\s+--\s*")
_NO = re.compile(r"^(?:no|without)\s+", re.IGNORECASE)


class Gap(NamedTuple):
    """Where a fill goes: the audio track, the clips on either side, and the gap's length in beats."""

    track: Track
    before: Clip
    after: Clip

    @property
    def start(self) -> float:
        return float(self.before.end_time)

    @property
    def beats(self) -> float:
        return float(self.after.start_time) - float(self.before.end_time)


def split_negative(prompt: str) -> tuple[str, str]:
    """(prompt, negative prompt) from a clip's prompt: the text after ` -- `, each item's leading 'no ' dropped."""
    parts = _NEGATIVE.split(prompt, maxsplit=1)
    if len(parts) < 2:
        return prompt.strip(), ""
    items = [_NO.sub("", item.strip()) for item in parts[1].split(",")]
    return parts[0].strip(), ", ".join(item for item in items if item)


def negative_options(negative: str) -> list[object]:
    """The request's trailing options for a negative prompt (none when there is none)."""
    return ["negative", negative] if negative else []


def _audio_clips(track: Track) -> list[Clip]:
    return [c for c in track.arrangement_clips if c.is_audio_clip and c.file_path]


def find_gap(song: Song, track: Track, clip: Clip) -> Gap:
    """The audio clips around the MIDI clip ``clip``'s time, on the nearest audio track right of ``track``
    (then any audio track) that has one ending at or before its start and one starting at or after its end."""
    tracks = list(song.tracks)
    index = placing.index_of(tracks, track)
    ordered = tracks[index + 1 :] + tracks[: max(0, index)]
    start, end = float(clip.start_time), float(clip.end_time)
    for candidate in ordered:
        if not placing.is_audio_track(candidate) or not hasattr(candidate, "arrangement_clips"):
            continue
        clips = _audio_clips(candidate)
        before = [c for c in clips if c.end_time <= start + placing.EPSILON]
        after = [c for c in clips if c.start_time >= end - placing.EPSILON]
        if before and after:
            first = max(before, key=lambda c: c.end_time)
            second = min(after, key=lambda c: c.start_time)
            between = [c for c in candidate.arrangement_clips
                       if c.start_time < second.start_time - placing.EPSILON
                       and c.end_time > first.end_time + placing.EPSILON]
            if not between:
                return Gap(candidate, first, second)
    raise placing.NotPlaced("mg fill: needs two audio clips in the Arrangement, one ending before the MIDI clip "
                            "and one starting after it, with nothing between them, on an audio track to its right")


def fill_request(job_id: str, prompt: str, negative: str, gap: Gap, tempo: float) -> list[object]:
    """The `/musicgen/infill` arguments: both files, the prompt and the gap's length in seconds."""
    seconds = gap.beats * 60.0 / tempo
    return [job_id, gap.before.file_path, gap.after.file_path, prompt, seconds, *negative_options(negative)]


def place_fill(gap: Gap, path: str) -> tuple[Clip | None, str]:
    """Put the fill's file into the gap on the neighbours' track."""
    if not placing.arrangement_is_free(gap.track, gap.start, gap.start + gap.beats):
        raise placing.NotPlaced(f"the gap on track '{gap.track.name}' is no longer empty: the fill is at {path}")
    clip = placing.put_in_arrangement(gap.track, path, gap.start)
    return clip, f"track '{gap.track.name}' between its clips"


def remove_prompt_clip(track: Track, clip: Clip) -> str | None:
    """Delete the `mg fill:` MIDI clip the fill replaces; None, or why it stays."""
    if not hasattr(track, "delete_clip"):
        return "this Live cannot delete a clip from a script, so the mg fill: clip stays"
    try:
        track.delete_clip(clip)
    except RuntimeError as exc:
        return f"Live kept the mg fill: clip ({exc})"
    return None
