"""The set's key in words, for `mg key:` clips and the `key` setting: Live 12's song scale."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from Live.Song import Song

NOTES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")  # Song.root_note 0..11
NO_SCALE = "this Live has no song scale (Live 12 has one): the prompt goes without a key"


def song_key(song: Song) -> str | None:
    """The set's key as text ("A minor"), or None where this Live has no song scale (before Live 12)."""
    if not hasattr(song, "scale_name") or not hasattr(song, "root_note"):
        return None
    return f"{NOTES[int(song.root_note) % 12]} {str(song.scale_name).lower()}"


def with_key(prompt: str, key: str | None) -> str:
    """A jam's prompt with the set's key in words (file requests send it as the bridge's `key` option)."""
    return f"{prompt}, in {key}" if key else prompt
