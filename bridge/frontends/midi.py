"""The MIDI front end: a controller's notes fire presets, CCs move parameters, clock sets the tempo.

The mapping is data from the preset bank (``midi:`` in the YAML), turned into actions by a pure
:class:`MidiMapper` (messages in, :data:`Action` values out, no I/O), so it is tested by calling it.
:class:`MidiInput` only moves messages from a mido port to the mapper, and the actions to whoever
acts on them; :class:`MidiActions` is what the daemon does with them (jobs, the jam).

Ports: an existing one by (part of) its name, or a virtual one that other programs connect to.
The backend is mido's: ``MIDO_BACKEND`` picks one (for JACK: ``mido.backends.rtmidi/UNIX_JACK``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from bridge.app.jobs import JobKind
from bridge.app.presets import PresetBank, PresetLibrary
from bridge.errors import BadArgs, BridgeError, NotFound
from bridge.options import jam_fields, names
from bridge.tempo import MAX_BPM, MIN_BPM

__all__ = ["Action", "FirePreset", "MidiActions", "MidiInput", "MidiMapper", "Pulse", "SetParam", "SetTempo",
           "SongPosition", "SwitchBank", "Transport", "input_names"]

log = logging.getLogger(__name__)

MIDI = "midi"
"""The MIDI controller's front-end name; it subscribes to no job events (its jobs are unclaimed)."""
CLOCKS_PER_BEAT = 24  # MIDI clock: 24 pulses per quarter note
CLOCK_GAP = 0.5  # seconds: a longer pause between pulses (slower than 5 bpm) means the clock stopped
TEMPO_STEP = 0.5  # bpm: smaller changes are clock jitter, not a new tempo
QUIET = frozenset({"note_off", "active_sensing", "song_select", "tune_request", "reset"})


@dataclass(frozen=True)
class FirePreset:
    """Run ``bank``/``preset`` as a job, with the controller's current ``options`` as overrides."""

    bank: str
    preset: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SetParam:
    """A knob moved: ``name`` (an option) is now ``value`` for the next preset (and a running jam, if it can use it)."""

    name: str
    value: float | int


@dataclass(frozen=True)
class SwitchBank:
    bank: str


@dataclass(frozen=True)
class SetTempo:
    """MIDI clock settled on a new tempo."""

    bpm: float


@dataclass(frozen=True)
class Transport:
    command: Literal["start", "continue", "stop"]


@dataclass(frozen=True)
class Pulse:
    """One MIDI clock pulse (24 a beat): the song moves on; a ``sync midi`` jam keeps its bars by them."""


@dataclass(frozen=True)
class SongPosition:
    """Song Position Pointer: where Continue resumes, in sixteenth notes from the song's start."""

    sixteenths: int


Action = FirePreset | SetParam | SwitchBank | SetTempo | Transport | Pulse | SongPosition


class MidiMapper:
    """MIDI messages in, actions out, following the current bank's ``midi:`` mapping. No I/O, no threads.

    What does not map (a note with no preset, an unmapped CC, another channel) is ignored and
    counted in ``ignored`` (by message type in ``ignored_kinds``), so a status line can show it.
    ``now`` is the clock used for MIDI clock pulses (a test passes its own).
    """

    def __init__(self, library: PresetLibrary, bank: str, clock_window: int = 2 * CLOCKS_PER_BEAT,
                 now: Callable[[], float] = time.monotonic) -> None:
        if clock_window < CLOCKS_PER_BEAT:
            raise BadArgs(f"clock_window must be at least {CLOCKS_PER_BEAT} pulses (one beat)")
        self.library = library
        self.bank = library.bank(bank).name
        self.params: dict[str, float | int] = {}
        self.ignored = 0
        self.ignored_kinds: Counter[str] = Counter()
        self._pulses: deque[float] = deque(maxlen=clock_window + 1)
        self._now = now
        self._tempo: float | None = None

    @property
    def tempo(self) -> float | None:
        """The tempo MIDI clock settled on, or None before a steady clock."""
        return self._tempo

    def current_bank(self) -> PresetBank:
        return self.library.bank(self.bank)

    def handle(self, msg: Any) -> list[Action]:
        """The actions for one mido message (often none)."""
        kind = str(msg.type)
        handler = self._HANDLERS.get(kind)
        if handler is None:
            if kind not in QUIET:
                self._ignore(kind)
            return []
        channel = self.current_bank().midi.channel
        if channel is not None and getattr(msg, "channel", channel) != channel:
            self._ignore(kind)
            return []
        return handler(self, msg)

    def _ignore(self, kind: str) -> list[Action]:
        self.ignored += 1
        self.ignored_kinds[kind] += 1
        return []

    def _note_on(self, msg: Any) -> list[Action]:
        if msg.velocity == 0:  # a note-off in disguise (running status)
            return []
        preset = self.current_bank().midi.notes.get(msg.note)
        if preset is None:
            return self._ignore("note_on")
        options: dict[str, Any] = dict(self.params)
        if self._tempo is not None:
            options["bpm"] = self._tempo
        return [FirePreset(self.bank, preset, options)]

    def _control_change(self, msg: Any) -> list[Action]:
        mapping = self.current_bank().midi.cc.get(msg.control)
        if mapping is None:
            return self._ignore("control_change")
        value = mapping.value(msg.value)
        if self.params.get(mapping.param) == value:
            return []  # a knob sends the same whole number many times; say it once
        self.params[mapping.param] = value
        return [SetParam(mapping.param, value)]

    def _program_change(self, msg: Any) -> list[Action]:
        target = self.current_bank().midi.program.get(msg.program)
        if target is None or target not in self.library.banks():
            return self._ignore("program_change")
        self.bank = target
        return [SwitchBank(target)]

    def _clock(self, _msg: Any) -> list[Action]:
        now = self._now()
        if self._pulses and now - self._pulses[-1] > CLOCK_GAP:
            self._pulses.clear()  # the clock paused: the gap is not a tempo
        self._pulses.append(now)
        if len(self._pulses) < CLOCKS_PER_BEAT + 1:
            return [Pulse()]
        span = self._pulses[-1] - self._pulses[0]
        if span <= 0:
            return [Pulse()]
        # the average over the whole window: one late pulse moves it by a fraction of its lateness
        bpm = round(60.0 * (len(self._pulses) - 1) / CLOCKS_PER_BEAT / span, 1)
        if not (MIN_BPM <= bpm <= MAX_BPM):
            return [Pulse()]
        if self._tempo is None or abs(bpm - self._tempo) >= TEMPO_STEP:
            self._tempo = bpm
            return [Pulse(), SetTempo(bpm)]
        return [Pulse()]

    def _start(self, _msg: Any) -> list[Action]:
        self._pulses.clear()
        return [Transport("start")]

    def _continue(self, _msg: Any) -> list[Action]:
        self._pulses.clear()
        return [Transport("continue")]

    def _songpos(self, msg: Any) -> list[Action]:
        return [SongPosition(int(msg.pos))]

    def _stop(self, _msg: Any) -> list[Action]:
        return [Transport("stop")]

    _HANDLERS: ClassVar[Mapping[str, Callable[[MidiMapper, Any], list[Action]]]] = {
        "note_on": _note_on,
        "control_change": _control_change,
        "program_change": _program_change,
        "clock": _clock,
        "start": _start,
        "continue": _continue,
        "stop": _stop,
        "songpos": _songpos,
    }


class MidiActions:
    """What the daemon does with each action: fire presets as jobs, steer and start/stop the jam.

    ``app`` is the composition root's :class:`bridge.app.root.App`: presets become requests through
    its facade and go to its one job queue as the ``midi`` front end, which has no listener of its
    own (so its jobs are unclaimed: replies go to every registered OSC port); knobs,
    clock and transport go to its jam controller. Errors are logged, never raised: a wrong knob
    must not take the MIDI thread down.
    """

    def __init__(self, app: Any, mapper: MidiMapper) -> None:
        self.app = app
        self.mapper = mapper

    def apply(self, action: Action) -> None:
        try:
            self._apply(action)
        except BridgeError as exc:
            log.warning("MIDI %s: %s: %s", action, exc.code, exc.message)

    def _apply(self, action: Action) -> None:
        jam = self.app.jam
        clock = self.app.midi_clock
        if clock is not None:
            self._feed_clock(clock, action)
        if isinstance(action, FirePreset):
            request = self.app.bridge.preset_request(action.bank, action.preset, action.options)
            self.app.jobs.submit(request, kind=JobKind.PRESET, frontend=MIDI)
        elif isinstance(action, SetParam) and action.name in names("jam") and jam.running:
            jam.set({action.name: action.value})
        elif isinstance(action, SetTempo) and jam.running:
            jam.set({"bpm": action.bpm})
        elif isinstance(action, Transport) and action.command == "stop" and jam.running:
            jam.stop()
        elif isinstance(action, Transport) and action.command in ("start", "continue") and not jam.running:
            bank = self.mapper.current_bank()
            first = next(iter(bank.presets))
            options: dict[str, Any] = dict(self.mapper.params)
            if self.mapper.tempo is not None:
                options["bpm"] = self.mapper.tempo
            preset = self.app.bridge.preset_request(bank.name, first, options)
            fields = jam_fields(preset) | {"play": True}
            if clock is not None and clock.attached:  # the jam keeps the song's bars: MIDI clock sets the tempo
                fields = {k: v for k, v in fields.items() if k != "bpm"} | {"sync": "midi"}
            request = self.app.bridge.make_request("jam", preset.prompt, None, None, fields)
            self.app.jobs.submit(request, kind=JobKind.JAM, frontend=MIDI)

    @staticmethod
    def _feed_clock(clock: Any, action: Action) -> None:
        """The song's position for a ``sync midi`` jam (``bridge.app.midi_clock``)."""
        if isinstance(action, Pulse):
            clock.pulse()
        elif isinstance(action, SongPosition):
            clock.song_position(action.sixteenths)
        elif isinstance(action, Transport):
            {"start": clock.start, "continue": clock.resume, "stop": clock.stop}[action.command]()


def input_names() -> list[str]:
    """The MIDI inputs mido's backend sees now."""
    import mido  # noqa: PLC0415 - mido loads its backend on first use; only the MIDI front end needs it

    return list(mido.get_input_names())


def _pick(port: str, names: list[str]) -> str:
    if port in names:
        return port
    matches = [n for n in names if port.lower() in n.lower()]
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(repr(n) for n in names) or "none"
    if not matches:
        raise NotFound(f"no MIDI input matches {port!r}; inputs: {listed} (leave the port out for a virtual one "
                       "named musicgen-bridge)")
    raise BadArgs(f"{port!r} matches {len(matches)} MIDI inputs ({', '.join(repr(m) for m in matches)}): give more "
                  "of the name")


class MidiInput:
    """An open mido input feeding a mapper; ``on_action`` is called on mido's callback thread.

    ``port``: part of an existing input's name (case-insensitive; it must match one input), or None
    (or ``virtual=True``) for a virtual input named ``port or virtual_name`` that other programs
    connect to. Close it with :meth:`close` (or use it as a context manager).
    """

    def __init__(self, mapper: MidiMapper, on_action: Callable[[Action], None], port: str | None = None,
                 virtual_name: str = "musicgen-bridge", *, virtual: bool | None = None) -> None:
        import mido  # noqa: PLC0415

        self.mapper = mapper
        self.on_action = on_action
        self.received = 0
        self._lock = threading.Lock()  # the mapper is not thread-safe; callbacks come from mido's thread
        self._closed = False
        virtual = port is None if virtual is None else virtual
        try:
            if virtual:
                self.port = mido.open_input(port or virtual_name, virtual=True, callback=self._receive)
            else:
                if not port:
                    raise BadArgs("give part of a MIDI input's name, or ask for a virtual port")
                self.port = mido.open_input(_pick(port, input_names()), callback=self._receive)
        except (OSError, RuntimeError, ImportError, ValueError) as exc:
            # rtmidi's errors derive from OSError; a missing backend module is an ImportError
            raise BadArgs(f"cannot open the MIDI input ({type(exc).__name__}: {exc}): check the backend "
                          "(MIDO_BACKEND, e.g. mido.backends.rtmidi/UNIX_JACK) and that its server runs") from None
        self.name = str(getattr(self.port, "name", port or virtual_name))

    def _receive(self, msg: Any) -> None:
        with self._lock:
            self.received += 1
            try:
                actions = self.mapper.handle(msg)
            except BridgeError as exc:
                log.warning("MIDI %s: %s", msg, exc.message)
                return
        for action in actions:
            self.on_action(action)

    def close(self) -> None:
        """Stop listening; safe to call twice."""
        if not self._closed:
            self._closed = True
            self.port.close()

    def __enter__(self) -> MidiInput:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
