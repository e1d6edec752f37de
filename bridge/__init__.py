"""musicgen-bridge: a local MusicGen daemon for DAWs, driven over OSC and MIDI."""

__version__ = "0.1.0"

__all__ = ["__version__"]
