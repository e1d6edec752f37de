"""The fake Live song's transport and scale (tests/ableton/fake_live.py's Song has them): the Arrangement
plays while ``is_playing``, and a test moves ``current_song_time`` on with ``t_advance`` as Live's clock
would. Names as ableton-live-stubs has them (tests/test_ableton_stubs.py checks).
"""

from __future__ import annotations

from collections.abc import Callable


class Transport:
    """Mixed into the fake Song, which brings ``_tempo``, ``_add``, ``_remove`` and ``_fire``."""

    _tempo: float

    def __init__(self) -> None:
        self._playing = False
        self._song_time = 0.0
        self._record_mode = False
        self._root_note, self._scale_name = 0, "Major"

    def _add(self, prop: str, callback: Callable[[], None]) -> None:
        raise NotImplementedError

    def _remove(self, prop: str, callback: Callable[[], None]) -> None:
        raise NotImplementedError

    def _fire(self, prop: str) -> None:
        raise NotImplementedError

    @property
    def is_playing(self) -> bool:
        return self._playing

    @is_playing.setter
    def is_playing(self, value: bool) -> None:
        if bool(value) != self._playing:
            self._playing = bool(value)
            self._fire("is_playing")

    def add_is_playing_listener(self, callback: Callable[[], None], /) -> None:
        self._add("is_playing", callback)

    def remove_is_playing_listener(self, callback: Callable[[], None], /) -> None:
        self._remove("is_playing", callback)

    @property
    def current_song_time(self) -> float:
        return self._song_time

    @current_song_time.setter
    def current_song_time(self, value: float) -> None:
        self._song_time = max(0.0, float(value))

    def t_advance(self, seconds: float) -> None:
        """Live's clock: while playing, the song time moves on by ``seconds`` at the song's tempo."""
        if self._playing:
            self._song_time += seconds * self._tempo / 60.0

    @property
    def record_mode(self) -> bool:
        return self._record_mode

    @record_mode.setter
    def record_mode(self, value: bool) -> None:
        self._record_mode = bool(value)

    @property
    def root_note(self) -> int:
        return self._root_note

    @root_note.setter
    def root_note(self, value: int) -> None:
        self._root_note = int(value) % 12

    @property
    def scale_name(self) -> str:
        return self._scale_name

    @scale_name.setter
    def scale_name(self, value: str) -> None:
        self._scale_name = str(value)

