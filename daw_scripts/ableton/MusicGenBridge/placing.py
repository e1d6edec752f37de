"""Where a result goes in the set, and how a placed clip is pinned to exactly the bars asked."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import Live

if TYPE_CHECKING:
    from Live.Clip import Clip
    from Live.ClipSlot import ClipSlot
    from Live.Song import Song
    from Live.Track import Track

EPSILON = 1e-6
NEEDS = "Live 11.3.25 or 12.0.5 and later can"


class NotPlaced(Exception):
    """The result could not be put into the set; the message says why and where the file is."""


class Meter(NamedTuple):
    """The song's time signature as the bridge counts it: Live's beats are quarter notes.

    6/8 is 3 quarter beats a bar at the song's tempo; 7/8 (3.5 quarters) is 7 eighths at twice the
    tempo, the same as the REAPER scripts send.
    """

    bpm: float
    beats_per_bar: int
    quarters_per_bar: float


def meter(tempo: float, numerator: int, denominator: int) -> Meter:
    quarters = numerator * 4.0 / max(1, denominator)
    if abs(quarters - round(quarters)) < EPSILON:
        return Meter(float(tempo), round(quarters), quarters)
    return Meter(tempo * denominator / 4.0, int(numerator), quarters)


def clip_beats(clip: Clip, tempo: float) -> float:
    """The clip's length in quarter-note beats (an unwarped audio clip's length is in seconds)."""
    if clip.is_audio_clip and not clip.warping:
        return clip.length * tempo / 60.0
    return clip.length


def bars_in(beats: float, bar: Meter) -> int:
    """The whole number of bars (at least one) nearest to ``beats``."""
    return max(1, int(beats / bar.quarters_per_bar + 0.5))


def index_of(items: Sequence[object], item: object) -> int:
    """Position of ``item`` by Live's equality (Live hands out new wrappers for the same object)."""
    for i, other in enumerate(items):
        if other == item:
            return i
    return -1


def is_audio_track(track: Track) -> bool:
    return bool(track.has_audio_input) and not track.is_foldable and not track.is_frozen


def audio_track_right_of(song: Song, index: int, is_free: Callable[[Track], bool], name: str) -> Track:
    """The first audio track right of track ``index`` with room (``is_free``), among the audio tracks
    next to it; a new audio track after them when none has room, so earlier takes are kept."""
    tracks = list(song.tracks)
    i = index + 1
    while i < len(tracks) and is_audio_track(tracks[i]):
        if is_free(tracks[i]):
            return tracks[i]
        i += 1
    track = song.create_audio_track(i)
    track.name = name
    return track


def session_target(song: Song, track: Track, slot: ClipSlot, next_scene: bool, name: str) -> tuple[ClipSlot, str]:
    """The slot for a result of the clip in ``slot``: the same scene on an audio track to the right,
    or (``next_scene``) the next scene on the same track, inserting a scene when that slot is taken."""
    track_index = index_of(list(song.tracks), track)
    scene = index_of(list(track.clip_slots), slot)
    if track_index < 0 or scene < 0:
        raise NotPlaced("the prompt clip is no longer in the set")
    if next_scene:
        target = scene + 1
        if target >= len(song.scenes) or track.clip_slots[target].has_clip:
            song.create_scene(target)
        return track.clip_slots[target], f"track '{track.name}', scene {target + 1}"
    found = audio_track_right_of(song, track_index, lambda t: not t.clip_slots[scene].has_clip, name)
    return found.clip_slots[scene], f"track '{found.name}', scene {scene + 1}"


def arrangement_is_free(track: Track, start: float, end: float) -> bool:
    return all(c.end_time <= start + EPSILON or c.start_time >= end - EPSILON for c in track.arrangement_clips)


def arrangement_target(song: Song, track: Track, start: float, beats: float, same_track: bool, name: str) -> Track:
    """The track for a result at ``start`` in the arrangement: ``track`` itself (``same_track``) when
    that stretch of it is empty, else an audio track to its right with room there."""
    end = start + beats
    if same_track and arrangement_is_free(track, start, end):
        return track
    index = index_of(list(song.tracks), track)
    if index < 0:
        raise NotPlaced("the prompt clip's track is no longer in the set")
    return audio_track_right_of(song, index, lambda t: arrangement_is_free(t, start, end), name)


def put_in_slot(slot: ClipSlot, path: str) -> Clip:
    if not hasattr(slot, "create_audio_clip"):
        raise NotPlaced(f"this Live cannot put a file into a clip slot from a script ({NEEDS}): the file is at {path}; "
                        "drag it into the set")
    try:
        return slot.create_audio_clip(path)
    except RuntimeError as exc:
        raise NotPlaced(f"Live refused the file ({exc}): it is at {path}") from exc


def put_in_arrangement(track: Track, path: str, position: float) -> Clip | None:
    """Place the file at ``position`` (beats); the clip, found by its file where Live (before 12.2)
    does not return it, or None."""
    if not hasattr(track, "create_audio_clip"):
        raise NotPlaced(f"this Live cannot put a file into the arrangement from a script ({NEEDS}): the file is at "
                        f"{path}; drag it in at the prompt clip")
    try:
        clip = track.create_audio_clip(path, position)
    except RuntimeError as exc:
        raise NotPlaced(f"Live refused the file ({exc}): it is at {path}") from exc
    if clip is not None:
        return clip
    for placed in track.arrangement_clips:
        if placed.file_path == path and abs(placed.start_time - position) < EPSILON:
            return placed
    return None


def pin_to_bars(clip: Clip, beats: float, seconds: float) -> str | None:
    """Warp ``clip`` so it spans exactly ``beats`` at any tempo: warping on, loop and markers on the
    bars, one warp marker pinning beat 0 to the file's first sample and one pinning the last beat to
    its end (Live's auto-warp guesses are removed). None, or what could not be done."""
    length = clip.sample_length
    end_seconds = length / clip.sample_rate if length > 0 and clip.sample_rate > 0 else seconds
    clip.warping = True
    problem = None
    if hasattr(Live.Clip, "WarpMarker") and hasattr(clip, "add_warp_marker"):
        for marker in list(clip.warp_markers):
            try:
                clip.remove_warp_marker(marker.beat_time)
            except RuntimeError:  # Live keeps the markers it needs; ours replace them below
                continue
        for sample_time, beat_time in ((0.0, 0.0), (end_seconds, beats)):
            try:
                clip.add_warp_marker(Live.Clip.WarpMarker(sample_time, beat_time))
            except RuntimeError as exc:
                problem = f"Live refused a warp marker ({exc})"
        inside = [(m.beat_time, m.sample_time) for m in clip.warp_markers if m.beat_time < beats + EPSILON]
        pinned = len(inside) == 2 and all(abs(b - wb) < EPSILON and abs(s - ws) < EPSILON
                                          for (b, s), (wb, ws) in zip(inside, ((0.0, 0.0), (beats, end_seconds))))
        if not pinned and problem is None:
            problem = f"the warp markers are {inside}, not beat 0 and {beats:g} at the file's ends"
    else:
        problem = "this Live cannot set warp markers from a script, so Live's own warping stays"
    # Ends before starts, so the start never passes the end on the way.
    clip.looping = True
    clip.loop_end = beats
    clip.loop_start = 0.0
    clip.end_marker = beats
    clip.start_marker = 0.0
    return problem
