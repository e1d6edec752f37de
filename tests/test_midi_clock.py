"""The MIDI clock's beat line from pulse arrivals: on time on a quiet machine, and on a busy one too."""

from __future__ import annotations

import numpy as np
import pytest

from bridge.app.midi_clock import PULSES_PER_BEAT, MidiClock

NS_PER_BEAT = 500_000_000  # 120 bpm
START_NS = 10_000_000_000


def fed(delays_ns: np.ndarray) -> MidiClock:
    """A clock that got Start, then pulse i at its true time plus ``delays_ns[i]``."""
    clock = MidiClock()
    clock.start()
    for i, delay in enumerate(delays_ns):
        clock.pulse(START_NS + i * NS_PER_BEAT // PULSES_PER_BEAT + int(delay))
    return clock


def beat_error_ms(clock: MidiClock, beat: float) -> float:
    return (clock.time_at_beat(beat, 4) - (START_NS + beat * NS_PER_BEAT)) / 1e6


def test_a_quiet_clock_puts_the_next_bar_where_the_pulses_say():
    jitter = np.random.default_rng(1).uniform(0, 200_000, 4 * PULSES_PER_BEAT)  # up to 0.2 ms
    clock = fed(jitter)
    assert abs(beat_error_ms(clock, 8.0)) < 0.3  # the next bar line, four beats after the last pulse
    assert clock.tempo() == pytest.approx(120.0, abs=0.05)


def test_pulses_held_up_by_a_busy_machine_do_not_move_the_bar_line_late():
    # A busy machine holds pulses up and hands them over together: the pulses of two beats in four arrive
    # at once, 60 ms after their beat ended; the others on time. A least-squares line through every
    # arrival is pulled late (and tilted); the line along the on-time arrivals is not.
    rng = np.random.default_rng(2)
    delays = rng.uniform(0, 100_000, 4 * PULSES_PER_BEAT)
    for beat in (0, 3):
        held = slice(beat * PULSES_PER_BEAT, (beat + 1) * PULSES_PER_BEAT)
        release = START_NS + (beat + 1) * NS_PER_BEAT + 60_000_000  # all at once, 60 ms after the beat
        true = START_NS + np.arange(held.start, held.stop) * NS_PER_BEAT // PULSES_PER_BEAT
        delays[held] = release - true
    clock = fed(delays)
    mean_shift_ms = float(np.mean(delays)) / 1e6
    assert mean_shift_ms > 100  # what the plain fit would be pulled by, on average
    assert abs(beat_error_ms(clock, 8.0)) < 1.0
    assert clock.tempo() == pytest.approx(120.0, abs=0.5)
