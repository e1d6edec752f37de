"""MusicGenBridge: an Ableton Live Remote Script whose whole UI is clip names (`mg: dusty lofi keys`).

Install: copy this folder into Live's `User Library/Remote Scripts/` and pick MusicGenBridge as a
Control Surface in Preferences > Link, Tempo & MIDI. See daw_scripts/README.md.
"""

from __future__ import annotations

from typing import Any

from .surface import MusicGenBridge


def create_instance(c_instance: Any) -> MusicGenBridge:
    """Live's entry point: one control surface per set."""
    return MusicGenBridge(c_instance)
