"""The set's bar grid from MIDI clock: pulses, Start, Continue and Song Position Pointer (``sync midi``).

The MIDI front end feeds :class:`MidiClock` what it receives, stamped on arrival with
``CLOCK_MONOTONIC_RAW`` (the clock the playback child places audio on). Start puts the song at beat 0;
a Song Position Pointer (in sixteenths) and Continue put it where the DAW's playhead is; each of the 24
pulses a beat moves it on. Beats are counted from the song's start, so bar lines are whole multiples of
``beats_per_bar`` of the song, wherever playback was resumed. When a beat falls is a line fitted to the
recent pulses' arrival times, along their lower edge (a pulse's arrival jitters with the MIDI driver and
comes late on a busy machine, never early).

It answers what :class:`bridge.app.link.BarClock` asks, so a ``sync midi`` jam runs exactly as a
``sync link`` one does (``bridge.app.jam_sync``).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time

from bridge.tempo import MAX_BPM, MIN_BPM

log = logging.getLogger(__name__)

PULSES_PER_BEAT = 24
FIT_PULSES = 96  # four beats of pulses for the line
ON_TIME_NS = 2_000_000  # a pulse within 2 ms of the earliest arrivals' line is on time
LOWER_EDGE_ROUNDS = 2  # 96 pulses: fits to 48, then 24
TEMPO_DIGITS = 1
TEMPO_STEP = 0.5  # bpm


class MidiClock:
    """The song position and tempo MIDI clock gives; thread-safe (fed by mido's thread, read by the jam's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.attached = False  # a MIDI input feeds this clock (serve --midi)
        self._tempo: float | None = None
        self._pulses: collections.deque[tuple[float, int]] = collections.deque(maxlen=FIT_PULSES)  # (beat, ns)
        self._next_beat: float | None = None  # the beat the next pulse is on (after Start/Continue)
        self._beat = 0.0  # the beat of the last pulse
        self._running = False
        self._song_position = 0.0  # beats, from the last Song Position Pointer
        self._warned = False

    # -- what the MIDI front end feeds ------------------------------------------------------------
    def start(self) -> None:
        """Start: the song from its beginning; the next pulse is beat 0."""
        with self._lock:
            self._song_position = 0.0
            self._resume()

    def resume(self) -> None:
        """Continue: from the last Song Position Pointer."""
        with self._lock:
            self._resume()

    def _resume(self) -> None:
        self._next_beat = self._song_position
        self._pulses.clear()
        self._running = True

    def stop(self) -> None:
        with self._lock:
            self._running = False

    def song_position(self, sixteenths: int) -> None:
        """Song Position Pointer: where the next Continue resumes (and, while stopped, where the song is)."""
        with self._lock:
            self._song_position = sixteenths / 4.0

    def pulse(self, at_ns: int | None = None) -> None:
        """One MIDI clock pulse, arrived at ``at_ns`` (``CLOCK_MONOTONIC_RAW``; now when not given)."""
        at = time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW) if at_ns is None else at_ns
        with self._lock:
            if not self._running:
                return
            if self._next_beat is not None:
                self._beat, self._next_beat = self._next_beat, None
            else:
                self._beat += 1.0 / PULSES_PER_BEAT
            self._pulses.append((self._beat, at))

    # -- what the jam asks (BarClock) -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Running, with a beat of pulses to know the tempo from."""
        with self._lock:
            return self._running and len(self._pulses) > PULSES_PER_BEAT

    def _line(self) -> tuple[float, float, float]:
        """(beat, ns, ns per beat) of the line through the recent pulses that arrived on time.

        A pulse arrives late, never early (a busy machine holds a few up and hands them over at once), so
        the line is fitted to the lower edge of the arrivals: a least-squares fit, refitted to the earlier
        half of the arrivals (``LOWER_EDGE_ROUNDS`` times), then to the pulses within ``ON_TIME_NS`` of the
        earliest, and laid through the earliest. On a quiet machine every pulse is on time and this is
        the plain least-squares line, moved to the lower edge of the jitter.
        """
        pulses = [(b, float(t)) for b, t in self._pulses]
        if len(pulses) < 2:
            raise LookupError("no MIDI clock yet")
        mb, mt, slope = _fit(pulses)
        keep = len(pulses)
        for _ in range(LOWER_EDGE_ROUNDS):  # refit to the earlier half of the arrivals, then to the on-time ones
            ranked = sorted(pulses, key=lambda p: p[1] - (mt + (p[0] - mb) * slope))
            keep = max(PULSES_PER_BEAT // 2, keep // 2)
            if len(ranked) <= keep:
                break
            mb, mt, slope = _fit(ranked[:keep])
        residuals = [t - (mt + (b - mb) * slope) for b, t in pulses]
        on_time = [p for p, r in zip(pulses, residuals, strict=True) if r <= min(residuals) + ON_TIME_NS]
        if len(on_time) >= PULSES_PER_BEAT // 2:
            mb, mt, slope = _fit(on_time)
        mt += min(t - (mt + (b - mb) * slope) for b, t in pulses)
        return mb, mt, slope

    def now_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC_RAW)

    def tempo(self) -> float:
        with self._lock:
            _b, _t, slope = self._line()
        raw = 60e9 / slope if slope > 0 else math.inf
        clamped = min(MAX_BPM, max(MIN_BPM, raw)) if math.isfinite(raw) else MAX_BPM
        if clamped != raw and not self._warned:
            self._warned = True
            log.warning("MIDI clock at %.1f bpm is outside %g..%g: the jam plays at %g bpm", raw, MIN_BPM, MAX_BPM,
                        clamped)
        # a pulse's arrival jitters: keep the tempo until it moves by TEMPO_STEP (as the MIDI mapper does)
        if self._tempo is None or abs(clamped - self._tempo) >= TEMPO_STEP:
            self._tempo = round(clamped, TEMPO_DIGITS)
        return self._tempo

    def beat_at(self, at_ns: int) -> float:
        with self._lock:
            beat, t, slope = self._line()
        return beat + (at_ns - t) / slope

    def next_bar(self, after_ns: int, beats_per_bar: int) -> float:
        beat = self.beat_at(after_ns)
        return float(math.ceil(beat / beats_per_bar - 1e-9) * beats_per_bar)

    def time_at_beat(self, beat: float, beats_per_bar: int) -> int:
        del beats_per_bar
        with self._lock:
            mb, t, slope = self._line()
        return round(t + (beat - mb) * slope)

    def playing(self) -> bool | None:
        with self._lock:
            return self._running

    def caveat(self) -> str | None:
        return None


def _fit(pulses: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(mean beat, mean ns, ns per beat): the least-squares line through (beat, ns) points."""
    mb = sum(b for b, _ in pulses) / len(pulses)
    mt = sum(t for _, t in pulses) / len(pulses)
    den = sum((b - mb) ** 2 for b, _ in pulses)
    return mb, mt, sum((b - mb) * (t - mt) for b, t in pulses) / den
