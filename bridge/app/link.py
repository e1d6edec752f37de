"""The Ableton Link session the bridge joins with ``--link``: tempo, bar phase and start/stop of the set.

Link itself is Ableton's (GPL), through the optional ``LinkPython-extern`` wheel (``pip install
'musicgen-bridge[link]'``). Its clock is ``CLOCK_MONOTONIC_RAW`` in microseconds; this module speaks
nanoseconds on that clock, which the playback child places audio on (``bridge.audio.schedule``).
Never fork after a Link object exists (it hangs): the playback child is a fresh process (exec).

:class:`LinkSession` answers the jam's questions (:class:`BarClock`): the session's tempo (clamped to
the ``bpm`` option's range, warned once), where the next bar line is, when a beat falls, and whether
the set is playing. The bridge never sets the session's tempo: it follows the set.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.errors import BadArgs
from bridge.tempo import MAX_BPM, MIN_BPM

log = logging.getLogger(__name__)

INSTALL_HINT = "Ableton Link needs the optional extra: pip install 'musicgen-bridge[link]' (LinkPython-extern, GPL)"
TEMPO_DIGITS = 3  # Link's tempo round-trips to ~1e-4 bpm (97 arrives as 96.99995): 97.000 is what the set says


@dataclass(frozen=True)
class LinkState:
    """What ``/musicgen/link`` answers: ``<enabled 0/1> <peers> <tempo> <beat> <playing 0/1>``."""

    enabled: bool
    peers: int
    tempo: float
    beat: float
    playing: bool


class BarClock(Protocol):
    """What a synced jam asks of the set's clock (times in ``CLOCK_MONOTONIC_RAW`` nanoseconds)."""

    def now_ns(self) -> int: ...

    def tempo(self) -> float: ...

    def next_bar(self, after_ns: int, beats_per_bar: int) -> float: ...

    def time_at_beat(self, beat: float, beats_per_bar: int) -> int: ...

    def playing(self) -> bool | None: ...

    def caveat(self) -> str | None: ...


class LinkSession:
    """One Link peer for the daemon's life; thread-safe (Link's own calls are; the warnings are locked)."""

    def __init__(self, link: Any, warn: Any = None) -> None:
        self._link = link
        self._lock = threading.Lock()
        self._warned_tempo = False
        self._warn = warn or log.warning

    @classmethod
    def join(cls, bpm: float = 120.0) -> LinkSession:
        """Join (or start) the Link session on this network; BadArgs with the install line without the wheel."""
        try:
            import link  # noqa: PLC0415  (optional, GPL: only with --link)
        except ImportError:
            raise BadArgs(INSTALL_HINT) from None
        session = link.Link(float(bpm))
        session.enabled = True
        session.startStopSyncEnabled = True
        return cls(session)

    def close(self) -> None:
        self._link.enabled = False

    # -- facts ------------------------------------------------------------------------------------
    def now_ns(self) -> int:
        return int(self._link.clock().micros()) * 1000

    def peers(self) -> int:
        return int(self._link.numPeers())

    def raw_tempo(self) -> float:
        return float(self._link.captureAppSessionState().tempo())

    def tempo(self) -> float:
        """The session's tempo, rounded to what the set said and clamped to the ``bpm`` option's range."""
        raw = self.raw_tempo()
        clamped = min(MAX_BPM, max(MIN_BPM, raw)) if math.isfinite(raw) else 120.0
        if clamped != raw:
            with self._lock:
                warn, self._warned_tempo = not self._warned_tempo, True
            if warn:
                self._warn(f"the Link session's tempo {raw:g} bpm is outside {MIN_BPM:g}..{MAX_BPM:g}: the jam plays "
                           f"at {clamped:g} bpm (a broken peer?)")
        return round(clamped, TEMPO_DIGITS)

    def state(self, beats_per_bar: int = 4) -> LinkState:
        s = self._link.captureAppSessionState()
        now = self._link.clock().micros()
        return LinkState(enabled=bool(self._link.enabled), peers=self.peers(), tempo=float(s.tempo()),
                         beat=float(s.beatAtTime(now, beats_per_bar)), playing=bool(s.isPlaying()))

    def playing(self) -> bool | None:
        """Whether the set plays (Link start/stop sync)."""
        return bool(self._link.captureAppSessionState().isPlaying())

    def caveat(self) -> str | None:
        """What the user should hear once when a jam starts: no other peer, so no set to follow."""
        if self.peers() == 0:
            return (f"no other Link peer in the session: the jam plays at the session's own tempo, "
                    f"{self.tempo():g} bpm, until a DAW joins")
        return None

    # -- the bar grid -----------------------------------------------------------------------------
    def next_bar(self, after_ns: int, beats_per_bar: int) -> float:
        """The beat of the first bar line at or after ``after_ns`` (a whole multiple of ``beats_per_bar``)."""
        s = self._link.captureAppSessionState()
        micros = after_ns // 1000
        beat = s.beatAtTime(micros, beats_per_bar)
        phase = s.phaseAtTime(micros, beats_per_bar)
        bar = beat - phase
        if phase > 1e-9:
            bar += beats_per_bar
        return float(round(bar))

    def time_at_beat(self, beat: float, beats_per_bar: int) -> int:
        """When ``beat`` falls, in ``CLOCK_MONOTONIC_RAW`` nanoseconds."""
        return int(self._link.captureAppSessionState().timeAtBeat(beat, beats_per_bar)) * 1000
