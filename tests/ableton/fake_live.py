"""A fake Ableton Live for the Remote Script's tests: the parts of the Live API the script uses, with
Live's refusals (an occupied slot, a MIDI track, a loop start past its end) and its listeners.

Its clips are in tests/ableton/fake_live_clip.py and the song's transport in tests/ableton/fake_transport.py.
``install()`` puts a fake ``Live`` module and ``_Framework.ControlSurface`` into ``sys.modules``, as
Live's embedded Python has them. Test-only helpers are named ``t_*`` (they are not Live API); the
stub test in tests/test_ableton_stubs.py keeps every other name true to ableton-live-stubs.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable

import soundfile as sf
from ableton.fake_live_clip import Clip, Listeners, WarpMarker
from ableton.fake_transport import Transport


class ClipSlot(Listeners):
    def __init__(self, track: Track) -> None:
        super().__init__()
        self._track = track
        self._clip: Clip | None = None

    @property
    def has_clip(self) -> bool:
        return self._clip is not None

    @property
    def clip(self) -> Clip | None:
        return self._clip

    def add_has_clip_listener(self, callback: Callable[[], None], /) -> None:
        self._add("has_clip", callback)

    def remove_has_clip_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("has_clip", callback)

    def _put(self, clip: Clip) -> Clip:
        self._clip = clip
        self._fire("has_clip")
        return clip

    def create_clip(self, length: float, /) -> Clip:
        if self._clip is not None or not self._track.has_midi_input:
            raise RuntimeError("Can only create clips in empty slots of MIDI tracks")
        return self._put(Clip(length=length))

    def t_put_audio(self, path: str, name: str = "") -> Clip:
        """A test's own audio clip (a recording or a dragged-in file), wherever the test wants it."""
        return self._put(Clip(name=name, file_path=path))

    def t_clip(self) -> Clip:
        """The slot's clip, for a test that expects one there."""
        assert self._clip is not None, "the slot is empty"
        return self._clip


class ClipSlotCreatingAudio(ClipSlot):
    def create_audio_clip(self, file_path: str, /) -> Clip:
        if self._clip is not None:
            raise RuntimeError("Cannot create an audio clip in a non-empty slot")
        if not self._track.has_audio_input or self._track.is_foldable or self._track.is_frozen:
            raise RuntimeError("Audio clips can only be created on audio tracks that are not frozen")
        try:
            clip = Clip(file_path=file_path)
        except sf.LibsndfileError as exc:
            raise RuntimeError(f"not a valid audio file: {file_path}") from exc
        return self._put(clip)


class Track(Listeners):
    def __init__(self, song: Song, name: str, audio: bool, slot_class: type[ClipSlot]) -> None:
        super().__init__()
        self._song = song
        self._name = name
        self._audio = audio
        self._slot_class = slot_class
        self._slots = [slot_class(self) for _ in song.scenes]
        self._arrangement: list[Clip] = []
        self._frozen = False

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def has_audio_input(self) -> bool:
        return self._audio

    @property
    def has_midi_input(self) -> bool:
        return not self._audio

    @property
    def is_foldable(self) -> bool:
        return False

    @property
    def is_frozen(self) -> bool:
        return self._frozen

    @property
    def clip_slots(self) -> list[ClipSlot]:
        return list(self._slots)

    @property
    def arrangement_clips(self) -> list[Clip]:
        return sorted(self._arrangement, key=lambda c: c.start_time)

    def add_arrangement_clips_listener(self, callback: Callable[[], None], /) -> None:
        self._add("arrangement_clips", callback)

    def remove_arrangement_clips_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("arrangement_clips", callback)

    def _insert(self, clip: Clip) -> Clip:
        self._arrangement.append(clip)
        self._fire("arrangement_clips")
        return clip

    def delete_clip(self, clip: Clip, /) -> None:
        if clip not in self._arrangement:
            raise RuntimeError("the clip is not on this track")
        self._arrangement.remove(clip)
        self._fire("arrangement_clips")

    def create_midi_clip(self, start_time: float, length: float, /) -> Clip:
        if self._audio:
            raise RuntimeError("MIDI clips can only be created on MIDI tracks")
        return self._insert(Clip(length=length, start_time=start_time, arrangement=True))

    def t_put_audio(self, path: str, start_time: float, name: str = "") -> Clip:
        return self._insert(Clip(name=name, file_path=path, start_time=start_time, arrangement=True))


class TrackCreatingAudio(Track):
    """Live 12.2 and later: ``create_audio_clip`` returns the clip."""

    def create_audio_clip(self, file_path: str, position: float, /) -> Clip:
        if not self._audio or self._frozen:
            raise RuntimeError("Audio clips can only be created on audio tracks that are not frozen")
        if not 0.0 <= position <= 1576800.0:
            raise RuntimeError("position out of range")
        try:
            clip = Clip(file_path=file_path, start_time=position, arrangement=True)
        except sf.LibsndfileError as exc:
            raise RuntimeError(f"not a valid audio file: {file_path}") from exc
        return self._insert(clip)


class TrackReturningNone(TrackCreatingAudio):
    """Live 11.3.25 to 12.1: the clip is made but not returned."""

    def create_audio_clip(self, file_path: str, position: float, /) -> None:  # type: ignore[override]
        super().create_audio_clip(file_path, position)


class Scene:
    pass


# Which API each Live has (the versions as in the README's table).
VERSIONS: dict[str, tuple[type[Track], type[ClipSlot]]] = {
    "12.3": (TrackCreatingAudio, ClipSlotCreatingAudio),
    "12.1": (TrackReturningNone, ClipSlotCreatingAudio),
    "11.2": (Track, ClipSlot),
}


class Song(Listeners, Transport):
    def __init__(self, version: str = "12.3", tempo: float = 120.0, numerator: int = 4, denominator: int = 4,
                 scenes: int = 4) -> None:
        super().__init__()
        self._track_class, self._slot_class = VERSIONS[version]
        self._tempo = tempo
        self._link = False
        self._numerator, self._denominator = numerator, denominator
        self._scenes = [Scene() for _ in range(scenes)]
        self._tracks: list[Track] = []
        Transport.__init__(self)

    @property
    def tempo(self) -> float:
        return self._tempo

    @property
    def is_ableton_link_enabled(self) -> bool:
        """Preferences > Link, Tempo & MIDI > Link (off in a new set)."""
        return self._link

    @is_ableton_link_enabled.setter
    def is_ableton_link_enabled(self, value: bool) -> None:
        self._link = bool(value)

    @property
    def signature_numerator(self) -> int:
        return self._numerator

    @property
    def signature_denominator(self) -> int:
        return self._denominator

    @property
    def tracks(self) -> list[Track]:
        return list(self._tracks)

    @property
    def scenes(self) -> list[Scene]:
        return list(self._scenes)

    def add_tracks_listener(self, callback: Callable[[], None], /) -> None:
        self._add("tracks", callback)

    def remove_tracks_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("tracks", callback)

    def add_scenes_listener(self, callback: Callable[[], None], /) -> None:
        self._add("scenes", callback)

    def remove_scenes_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("scenes", callback)

    def _new_track(self, audio: bool, index: int | None, name: str) -> Track:
        track = self._track_class(self, name, audio, self._slot_class)
        if index is None or index == -1:
            index = len(self._tracks)
        if not 0 <= index <= len(self._tracks):
            raise RuntimeError(f"track index {index} out of range")
        self._tracks.insert(index, track)
        self._fire("tracks")
        return track

    def create_audio_track(self, index: int | None = None, /) -> Track:
        return self._new_track(True, index, f"{len(self._tracks) + 1}-Audio")

    def create_midi_track(self, index: int | None = None, /) -> Track:
        return self._new_track(False, index, f"{len(self._tracks) + 1}-MIDI")

    def create_scene(self, index: int, /) -> Scene:
        if index == -1:
            index = len(self._scenes)
        if not 0 <= index <= len(self._scenes):
            raise RuntimeError(f"scene index {index} out of range")
        scene = Scene()
        self._scenes.insert(index, scene)
        for track in self._tracks:
            track._slots.insert(index, track._slot_class(track))
        self._fire("scenes")
        return scene


class CInstance:
    """What Live hands a Remote Script: the song, the status bar and the log, recorded."""

    def __init__(self, song: Song) -> None:
        self._song = song
        self.messages: list[str] = []
        self.log: list[str] = []

    def song(self) -> Song:
        return self._song

    def show_message(self, message: str) -> None:
        self.messages.append(message)

    def log_message(self, message: str) -> None:
        self.log.append(message)


class ControlSurface:
    """The few parts of Live's ``_Framework.ControlSurface.ControlSurface`` the script uses."""

    def __init__(self, c_instance: CInstance) -> None:
        self._c_instance = c_instance

    def song(self) -> Song:
        return self._c_instance.song()

    def show_message(self, message: str) -> None:
        self._c_instance.show_message(message)

    def log_message(self, *message: object) -> None:
        self._c_instance.log_message("({}) {}".format(type(self).__name__, " ".join(map(str, message))))

    def update_display(self) -> None:
        pass

    def disconnect(self) -> None:
        pass


def install() -> None:
    """Make ``import Live`` and ``from _Framework.ControlSurface import ControlSurface`` find the fakes."""
    live = types.ModuleType("Live")
    live_clip = types.ModuleType("Live.Clip")
    live_clip.WarpMarker = WarpMarker  # type: ignore[attr-defined]
    live_clip.Clip = Clip  # type: ignore[attr-defined]
    live.Clip = live_clip  # type: ignore[attr-defined]
    framework = types.ModuleType("_Framework")
    surface = types.ModuleType("_Framework.ControlSurface")
    surface.ControlSurface = ControlSurface  # type: ignore[attr-defined]
    framework.ControlSurface = surface  # type: ignore[attr-defined]
    sys.modules.update({"Live": live, "Live.Clip": live_clip, "_Framework": framework,
                        "_Framework.ControlSurface": surface})
