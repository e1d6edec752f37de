"""The fake Live's clips (tests/ableton/fake_live.py has the rest): a clip, its warp markers, and the
listener slots every fake Live object has. Test-only helpers are named ``t_*``; every other name is as
ableton-live-stubs has it (tests/test_ableton_stubs.py checks).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import soundfile as sf


class Listeners:
    """``add_<prop>_listener`` / ``remove_<prop>_listener`` as Live has them: adding twice or removing
    what was never added raises, as Live does."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[[], None]]] = {}

    def _add(self, prop: str, callback: Callable[[], None]) -> None:
        found = self._listeners.setdefault(prop, [])
        if callback in found:
            raise RuntimeError(f"Listener already connected to {prop}")
        found.append(callback)

    def _remove(self, prop: str, callback: Callable[[], None]) -> None:
        found = self._listeners.get(prop, [])
        if callback not in found:
            raise RuntimeError(f"Listener not connected to {prop}")
        found.remove(callback)

    def _fire(self, prop: str) -> None:
        for callback in list(self._listeners.get(prop, [])):
            callback()

    def t_listener_count(self, prop: str) -> int:
        return len(self._listeners.get(prop, []))


class WarpMarker:
    def __init__(self, sample_time: float, beat_time: float) -> None:
        self._sample_time = float(sample_time)
        self._beat_time = float(beat_time)

    @property
    def sample_time(self) -> float:
        return self._sample_time

    @property
    def beat_time(self) -> float:
        return self._beat_time


class Clip(Listeners):
    """A session or arrangement clip. Audio clips come auto-warped with a wrong tempo guess, as Live's
    auto-warp may do, so a test sees whether the script pinned them itself."""

    def __init__(self, name: str = "", length: float = 4.0, file_path: str = "", start_time: float = 0.0,
                 arrangement: bool = False) -> None:
        super().__init__()
        self._name = name
        self._file_path = file_path
        self._start_time = start_time
        self._arrangement = arrangement
        self._playing = False
        self._looping = True
        self._warping = bool(file_path)
        self._markers: list[WarpMarker] = []
        self._sample_length, self._sample_rate = -1, 0.0
        self._loop = [0.0, length]
        self._marks = [0.0, length]
        if file_path:
            info = sf.info(file_path)
            self._sample_length, self._sample_rate = info.frames, float(info.samplerate)
            seconds = info.frames / info.samplerate
            guess = seconds * 2 * 1.07  # auto-warp heard 128.4 bpm
            self._markers = [WarpMarker(0.0, 0.0), WarpMarker(seconds / 2, guess / 2 + 0.3), WarpMarker(seconds, guess)]
            self._loop = [0.0, guess]
            self._marks = [0.0, guess]

    def add_name_listener(self, callback: Callable[[], None], /) -> None:
        self._add("name", callback)

    def remove_name_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("name", callback)

    def add_playing_status_listener(self, callback: Callable[[], None], /) -> None:
        self._add("playing_status", callback)

    def remove_playing_status_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("playing_status", callback)

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        if value != self._name:
            self._name = value
            self._fire("name")

    @property
    def is_audio_clip(self) -> bool:
        return bool(self._file_path)

    @property
    def is_midi_clip(self) -> bool:
        return not self._file_path

    @property
    def is_arrangement_clip(self) -> bool:
        return self._arrangement

    @property
    def file_path(self) -> str:
        if not self._file_path:
            raise RuntimeError("file_path is only available for audio clips")
        return self._file_path

    @property
    def length(self) -> float:
        return self._loop[1] - self._loop[0] if self._looping else self._marks[1] - self._marks[0]

    @property
    def start_time(self) -> float:
        return self._start_time

    @property
    def end_time(self) -> float:
        return self._start_time + self.length

    @property
    def is_playing(self) -> bool:
        return self._playing

    def fire(self) -> None:
        self._playing = True
        self._fire("playing_status")

    def stop(self) -> None:
        self._playing = False
        self._fire("playing_status")

    def _audio_only(self) -> None:
        if not self._file_path:
            raise RuntimeError("only available for audio clips")

    @property
    def warping(self) -> bool:
        self._audio_only()
        return self._warping

    @warping.setter
    def warping(self, value: bool) -> None:
        self._audio_only()
        self._warping = bool(value)

    @property
    def looping(self) -> bool:
        return self._looping

    @looping.setter
    def looping(self, value: bool) -> None:
        if value and self._file_path and not self._warping:
            raise RuntimeError("only warped audio clips can be looped")
        self._looping = bool(value)

    def _set(self, pair: list[float], index: int, value: float, what: str) -> None:
        other = pair[1 - index]
        if (index == 0 and value >= other) or (index == 1 and value <= other):
            raise RuntimeError(f"{what} {value} would pass its other end {other}")
        pair[index] = float(value)

    @property
    def loop_start(self) -> float:
        return self._loop[0]

    @loop_start.setter
    def loop_start(self, value: float) -> None:
        self._set(self._loop, 0, value, "loop_start")

    @property
    def loop_end(self) -> float:
        return self._loop[1]

    @loop_end.setter
    def loop_end(self, value: float) -> None:
        self._set(self._loop, 1, value, "loop_end")

    @property
    def start_marker(self) -> float:
        return self._marks[0]

    @start_marker.setter
    def start_marker(self, value: float) -> None:
        self._set(self._marks, 0, value, "start_marker")

    @property
    def end_marker(self) -> float:
        return self._marks[1]

    @end_marker.setter
    def end_marker(self, value: float) -> None:
        self._set(self._marks, 1, value, "end_marker")

    @property
    def sample_length(self) -> int:
        return self._sample_length

    @property
    def sample_rate(self) -> float:
        return self._sample_rate

    @property
    def warp_markers(self) -> list[WarpMarker]:
        self._audio_only()
        return list(self._markers)

    def add_warp_marker(self, warp_marker: WarpMarker, /) -> None:
        """Kept only where beats and sample times both still rise (Live: 'adds it, if possible')."""
        self._audio_only()
        markers = [m for m in self._markers if abs(m.beat_time - warp_marker.beat_time) > 1e-9] + [warp_marker]
        markers.sort(key=lambda m: m.beat_time)
        if all(a.sample_time < b.sample_time for a, b in itertools.pairwise(markers)):
            self._markers = markers

    def remove_warp_marker(self, beat_time: float, /) -> None:
        self._audio_only()
        kept = [m for m in self._markers if abs(m.beat_time - beat_time) > 1e-9]
        if len(kept) == len(self._markers):
            raise RuntimeError(f"no warp marker at beat {beat_time}")
        self._markers = kept
