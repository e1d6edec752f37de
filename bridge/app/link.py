"""The Ableton Link session the bridge joins with ``--link``: tempo, bar phase and start/stop of the set.

Link itself is Ableton's (GPL), through the optional ``LinkPython-extern`` wheel (``pip install
'musicgen-bridge[link]'``). Its clock is ``CLOCK_MONOTONIC_RAW`` in microseconds; this module speaks
nanoseconds on that clock, which the playback child places audio on (``bridge.audio.schedule``).
Never fork after a Link object exists (it hangs): the playback child is a fresh process (exec).

:class:`LinkSession` answers the jam's questions (:class:`BarClock`): the session's tempo (clamped to
the ``bpm`` option's range, warned once), where the next bar line is, when a beat falls, and whether
the set is playing. The bridge never sets the session's tempo: it follows the set.

Nor does it found a session for a DAW to join. Link gives a session the tempo of whoever was in it
first: a peer that turns Link on joins an older session and takes its tempo (Link's ``Sessions``: the
session running longer by over 0.5 s wins). A bridge left alone in the session since it started would
set a DAW that turns Link on later to 120 bpm. So the bridge stays in the session only beside another
peer: alone (after :data:`LOOK_SECONDS` to find one, or as soon as the last peer leaves) it leaves,
and it joins again when a ``sync link`` jam starts (:meth:`LinkSession.hold`), waiting up to
:data:`JOIN_WAIT` for the DAW's session. Only a ``sync link`` jam asked for with no DAW in the session
founds one (its caveat says so), and it leaves when that jam ends.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.errors import BadArgs
from bridge.tempo import MAX_BPM, MIN_BPM

log = logging.getLogger(__name__)

INSTALL_HINT = "Ableton Link needs the optional extra: pip install 'musicgen-bridge[link]' (LinkPython-extern, GPL)"
TEMPO_DIGITS = 3  # Link's tempo round-trips to ~1e-4 bpm (97 arrives as 96.99995): 97.000 is what the set says
LOOK_SECONDS = 10.0  # how long the bridge looks for another peer after joining before it leaves a session alone
JOIN_WAIT = 2.0  # how long a sync link jam waits for the DAW's session after joining (a join took 0.5 s here)
WATCH_EVERY = 0.25  # seconds between the watcher's looks at the peer count


@dataclass(frozen=True)
class LinkState:
    """What ``/musicgen/link`` answers: ``<enabled 0/1> <peers> <tempo> <beat> <playing 0/1>``: enabled is
    the bridge running with ``--link``; out of a session (no DAW in one) it is ``1 0 0 -1 0``."""

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
    """One Link peer for the daemon's life, in the session beside another peer or for a ``sync link`` jam
    (see the module docstring); thread-safe (Link's own calls are; the rest is locked)."""

    def __init__(self, link: Any, warn: Any = None, look_seconds: float = LOOK_SECONDS) -> None:
        self._link = link
        self._lock = threading.Lock()
        self._warned_tempo = False
        self._warn = warn or log.warning
        self._look = look_seconds
        self._holds = 0  # sync link jams running
        self._entered = time.monotonic()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def join(cls, bpm: float = 120.0, look_seconds: float = LOOK_SECONDS) -> LinkSession:
        """Join the Link session on this network, leaving it after ``look_seconds`` if no other peer is in
        it; BadArgs with the install line without the wheel."""
        try:
            import link  # noqa: PLC0415  (optional, GPL: only with --link)
        except ImportError:
            raise BadArgs(INSTALL_HINT) from None
        session = cls(link.Link(float(bpm)), look_seconds=look_seconds)
        session._link.startStopSyncEnabled = True
        session._enter()
        session._watcher = threading.Thread(target=session._watch, name="musicgen-link-watch", daemon=True)
        session._watcher.start()
        return session

    def close(self) -> None:
        self._closed.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        with self._lock:
            self._link.enabled = False

    # -- in the session or not --------------------------------------------------------------------
    @property
    def in_session(self) -> bool:
        return bool(self._link.enabled)

    def hold(self, is_cancelled: Callable[[], bool] = lambda: False) -> None:
        """Be in the session while a ``sync link`` jam runs (until :meth:`release`): join if out, and while
        the bridge joined less than :data:`JOIN_WAIT` ago (also just after start-up: ``jam --link``) wait
        that long for another peer (a DAW's session, older, is joined within about 0.5 s)."""
        with self._lock:
            self._holds += 1
            if not self._link.enabled:
                self._enter()
            deadline = self._entered + JOIN_WAIT
        while self.peers() == 0 and time.monotonic() < deadline and not is_cancelled():
            time.sleep(0.01)

    def release(self) -> None:
        """The ``sync link`` jam ended: the watcher leaves the session if no other peer is in it."""
        with self._lock:
            self._holds = max(0, self._holds - 1)

    def _enter(self) -> None:
        self._entered = time.monotonic()
        self._link.enabled = True

    def _watch(self) -> None:
        while not self._closed.wait(WATCH_EVERY):
            self.leave_if_alone()

    def leave_if_alone(self) -> bool:
        """Leave the session when no other peer is in it, no ``sync link`` jam runs and the bridge has looked
        for a peer long enough (the watcher calls it every :data:`WATCH_EVERY` s); True when it left."""
        with self._lock:
            alone = self._link.enabled and self._holds == 0 and self._link.numPeers() == 0
            if not alone or time.monotonic() - self._entered < self._look:
                return False
            self._link.enabled = False
        log.info("Ableton Link: no other peer in the session, so the bridge left it (a DAW turning Link on "
                 "keeps its own tempo); a sync link jam joins again")
        return True

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
        """The session now; out of one (no other peer), ``enabled`` alone: the bridge runs with ``--link``."""
        if not self._link.enabled:
            return LinkState(enabled=True, peers=0, tempo=0.0, beat=-1.0, playing=False)
        s = self._link.captureAppSessionState()
        now = self._link.clock().micros()
        return LinkState(enabled=True, peers=self.peers(), tempo=float(s.tempo()),
                         beat=float(s.beatAtTime(now, beats_per_bar)), playing=bool(s.isPlaying()))

    def playing(self) -> bool | None:
        """Whether the set plays (Link start/stop sync)."""
        return bool(self._link.captureAppSessionState().isPlaying())

    def caveat(self) -> str | None:
        """What the user should hear once when a jam starts: no other peer, so no set to follow."""
        if self.peers() == 0:
            return (f"no other Link peer in the session: the jam plays at the session's own tempo, "
                    f"{self.tempo():g} bpm, until a DAW joins (a DAW that turns Link on while it plays takes "
                    "that tempo; turn Link on in the DAW first)")
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
