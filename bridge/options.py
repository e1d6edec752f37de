"""What a generation request is: the mode, the prompt, the length and every option, validated.

:data:`OPTIONS` is the one table of options, as data (in the spirit of mido's message specs): each
:class:`Option` says its type, default, range or choices, help text and where it may be given
(:data:`SCOPES`). From it come :func:`parse_options` (OSC job options), :class:`Request`'s defaults
and range checks, the jam's settings (``bridge.engine.jam.JamSettings``), the CLI flags
(``bridge.frontends.cli_options``), the keys a preset bank may set and the params a MIDI CC may move.
So a misspelt option, or a value out of range, gets the same answer everywhere.

The shared token is not an option: it is transport, checked and taken off by the OSC server before
options are parsed. ``python -m bridge.options`` prints the README's option table.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from bridge import tempo
from bridge.errors import BadArgs
from bridge.saferepr import safe_repr
from bridge.tempo import MAX_BEATS_PER_BAR, MAX_BPM, MIN_BPM

Mode = Literal["text", "continue", "melody", "jam", "loop", "infill"]
MODES: tuple[str, ...] = ("text", "continue", "melody", "jam", "loop", "infill")
FORMATS = ("wav", "flac")
NORMALIZE = ("off", "peak", "lufs")
SYNCS = ("free", "link", "midi")

MAX_SECONDS = 600.0
MAX_VARIATIONS = 8
MAX_BARS = 512
MAX_CANDIDATES = 8
SEED_BITS = 31  # a seed the bridge picks fits a 32-bit OSC int

#: where an option may be given, and how to say it in an error message
SCOPES: Mapping[str, str] = MappingProxyType({
    "job": "in an OSC job request",
    "cli": "on the command line",
    "preset": "in a preset bank",
    "jam": "on a running jam",
    "midi": "as a MIDI CC param",
})


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a yes/no value: {safe_repr(value)}")


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"not a whole number: {safe_repr(value)}")
        return int(value)
    return int(str(value).strip())


def _to_float(value: Any) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"not a finite number: {safe_repr(value)}")
    return result


_CONVERTERS: Mapping[type, Callable[[Any], Any]] = MappingProxyType(
    {bool: _to_bool, int: _to_int, float: _to_float, str: str})


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class Option:
    """One option: its type, default, the values it accepts, its help, and where it may be given.

    ``low``/``high`` bound a number (inclusive unless ``low_open``/``high_open``); ``choices`` list
    the words a text option accepts. ``default`` is a request's; ``jam_default`` the jam's where it
    differs (a jam always has a tempo). ``group`` says what the option is about (``sampling``,
    ``length``, ``continue``, ``output``, ``jam``): a preset switched into a running jam brings its
    ``sampling`` options and leaves the jam's tempo and bar length alone.
    """

    name: str
    kind: type
    default: Any
    help: str
    scopes: frozenset[str]
    expects: str  # what a value of the wrong type is told the option wants
    group: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    unit: str = ""
    note: str = ""  # said after a refusal, e.g. what is usual
    limits_text: str = ""  # instead of the range worked out from low/high
    default_text: str = ""  # what a default of None means
    jam_default: Any = None  # None: the same as ``default``

    @property
    def flag(self) -> str:
        """The command-line flag: ``top_k`` -> ``--top-k``."""
        return "--" + self.name.replace("_", "-")

    @property
    def jam_value(self) -> Any:
        return self.default if self.jam_default is None else self.jam_default

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type, or BadArgs saying what it wants (the range is :meth:`check`'s)."""
        try:
            return _CONVERTERS[self.kind](value)
        except (TypeError, ValueError):
            raise BadArgs(f"option {self.name!r} wants {self.expects}, got {safe_repr(value)}") from None

    def limits(self) -> str:
        """The accepted values in words: 'from 0 to 20', 'above 0', 'one of wav, flac'."""
        if self.limits_text:
            return self.limits_text
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        low = None if self.low is None else _shown(self.low)
        high = None if self.high is None else _shown(self.high)
        if low is not None and high is not None:
            if self.low_open or self.high_open:
                return (f"{'above' if self.low_open else 'from'} {low} and "
                        f"{'below' if self.high_open else 'up to'} {high}{self.unit}")
            return f"from {low} to {high}{self.unit}"
        if low is not None:
            return f"above {low}{self.unit}" if self.low_open else f"{low}{self.unit} or more"
        if high is not None:
            return f"below {high}{self.unit}" if self.high_open else f"up to {high}{self.unit}"
        return "any value"

    def in_range(self, value: Any) -> bool:
        if value is None:
            return True
        if self.choices:
            return value in self.choices
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False
        return self.high is None or bool(value < self.high if self.high_open else value <= self.high)

    def check(self, value: Any) -> None:
        """Raise BadArgs unless ``value`` (typed, or None for unset) is in range; the same words everywhere."""
        if not self.in_range(value):
            note = f" ({self.note})" if self.note else ""
            raise BadArgs(f"{self.name} must be {self.limits()}, got {_shown(value)}{note}")


_ALL = frozenset(("job", "cli", "preset", "jam", "midi"))
_FILES = frozenset(("job", "cli", "preset"))
_REQUEST_ONLY = frozenset(("job", "preset"))

_TABLE = (
    Option("seed", int, None, "the random seed: the same seed and options give the same audio (a jam draws one "
           "when not given and goes on from it, one generator through the take; the jam prints it)",
           _FILES | {"jam"}, "a whole number", "sampling", low=0, limits_text="from 0 to 2**63-1", high=2**63 - 1,
           default_text="random"),
    Option("guidance", float, 3.0, "classifier-free guidance: how closely the audio follows the text", _ALL,
           "a number, e.g. 3.0", "sampling", low=0.0, high=20.0, note="3 is the usual"),
    Option("temperature", float, 1.0, "sampling temperature: lower is tamer, higher is wilder", _ALL,
           "a number above 0, e.g. 1.0", "sampling", low=0.0, low_open=True),
    Option("top_k", int, 250, "sample from the k likeliest tokens (0 turns it off)", _ALL,
           "a whole number, e.g. 250 (0 turns it off)", "sampling", low=0),
    Option("top_p", float, 0.0, "nucleus sampling: from the likeliest tokens whose probabilities add up to p "
           "(0 turns it off)", _ALL, "a number from 0 to 1 (0 turns it off)", "sampling", low=0.0, high=1.0),
    Option("negative", str, "", "a negative prompt: guidance pushes away from this text instead of the empty one "
           "(needs guidance above 1)", _FILES | {"jam"}, "text, e.g. 'drums, vocals'", "sampling"),
    Option("seconds", float, None, "length in seconds, or give bpm and bars (over OSC the <seconds> argument, 0 when bpm "
           "and bars give the length)",
           frozenset(("cli", "preset", "midi")), "a length in seconds, e.g. 8.0", "length", low=0.0,
           high=MAX_SECONDS, unit=" s"),
    Option("bpm", float, None, "tempo in beats per minute; with bars the length is exact to the sample and the "
           "text prompt gains the tempo", _ALL, "a tempo in beats per minute, e.g. 120", "length", low=MIN_BPM,
           high=MAX_BPM, jam_default=120.0),
    Option("bars", int, None, "length in whole bars at bpm (a jam: bars a segment)", _ALL,
           "a whole number of bars, e.g. 8", "length", low=1, high=MAX_BARS, jam_default=4),
    Option("beats_per_bar", int, 4, "beats in a bar (4 for 4/4)", _FILES | {"jam"}, "a whole number, e.g. 4",
           "length", low=1, high=MAX_BEATS_PER_BAR),
    Option("key", str, None, "the key in words, e.g. 'A minor': the text prompt gains 'in A minor' (Live's script reads "
           "it from the set)", _FILES, "a note and a scale in words, e.g. 'A minor' or 'F# dorian'", "prompt",
           default_text="none"),
    Option("prompt_seconds", float, None, "continue: how much of the clip's end to use as the prompt",
           _FILES | {"midi"}, "seconds of the clip to use as the prompt", "continue", low=0.5, high=30.0,
           unit=" s", default_text="whole bars near 8 s with bpm, else 8 s"),
    Option("include_prompt", bool, False, "continue: write the original clip followed by the new audio, "
           "crossfaded at the seam", _FILES, "1 or 0", "continue"),
    Option("candidates", int, 4, "loop/infill: how many bridges are sampled in one batch and scored by how "
           "likely the model finds the audio that follows them; the likeliest is kept", _FILES,
           f"a whole number from 1 to {MAX_CANDIDATES}", "loop", low=1, high=MAX_CANDIDATES),
    Option("variations", int, 1, "how many results from one batched call", _FILES | {"midi"},
           f"a whole number from 1 to {MAX_VARIATIONS}", "output", low=1, high=MAX_VARIATIONS),
    Option("stream", bool, False, "send the audio as it is made (/musicgen/chunk): one variation, no "
           "include_prompt, normalize off", _REQUEST_ONLY, "1 or 0", "output"),
    Option("play", bool, False, "also play the result on the bridge's output device", _REQUEST_ONLY, "1 or 0",
           "output"),
    Option("name", str, None, "a file name under the output folder, never a path", _FILES,
           "a file name (no folders)", "output", default_text="a unique name"),
    Option("sample_rate", int, None, "output sample rate in Hz", _FILES, "a sample rate in Hz, e.g. 48000",
           "output", low=8000, high=192000, unit=" Hz", default_text="the model's; for continue, the clip's"),
    Option("format", str, "wav", "the file format", _FILES, "wav or flac", "output", choices=FORMATS),
    Option("normalize", str, "off", "loudness: off only scales down what would clip, peak brings the peak to "
           "-1 dBFS, lufs to -14 LUFS (never clips)", _FILES, "off, peak or lufs", "output", choices=NORMALIZE),
    Option("context_seconds", float, 10.0, "(jam) how many seconds of its own past a jam segment continues from",
           frozenset(("job", "jam")), "a number of seconds, e.g. 10", "jam", low=1.0, high=25.0, unit=" s"),
    Option("glide_bars", int, 0, "(jam) a new prompt, guidance or temperature glides in over this many bars (the "
           "decoder's cross-attention moves from the old text to the new step by step); 0 jumps at the next segment",
           frozenset(("jam",)), "a whole number of bars, e.g. 4 (0 jumps)", "jam", low=0, high=64),
    Option("sync", str, "free", "(jam) what the jam keeps time with: free (its own bpm), link (the Ableton Link "
           "session's tempo, bar lines and start/stop; the bridge runs with --link) or midi (MIDI clock, Start, "
           "Continue and Song Position; the bridge runs with --midi); with link or midi, bpm is left out",
           frozenset(("job",)), "free, link or midi", "jam", choices=SYNCS),
    Option("ahead_bars", int, 0, "(a jam that writes files only: play 0, on the command line --no-play; sync "
           "free) the most bars it runs ahead of real time from its first segment on: it waits before making one "
           "further ahead, so in a DAW's timeline a new prompt is heard within that many bars (or twice its slowest "
           "segment's making time, where that is longer: each segment is still ready in time); 0 makes them as "
           "fast as the machine can (a playing jam is paced by its device, a synced one by its clock)",
           frozenset(("job",)), "a whole number of bars, e.g. 2 (0: no limit)", "jam", low=0, high=64),
)

#: the one option table: name -> :class:`Option`, in the order help and the README list them
OPTIONS: Mapping[str, Option] = MappingProxyType({spec.name: spec for spec in _TABLE})


def names(scope: str) -> tuple[str, ...]:
    """The options that may be given in ``scope`` (one of :data:`SCOPES`), in table order."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; scopes: {', '.join(SCOPES)}")
    return tuple(spec.name for spec in _TABLE if scope in spec.scopes)


def default(name: str) -> Any:
    """A request's default for option ``name``."""
    return OPTIONS[name].default


def jam_default(name: str) -> Any:
    """The jam's default for option ``name``."""
    return OPTIONS[name].jam_value


def pick_seed(seed: int | None = None) -> int:
    """``seed``, or a fresh random one when it is None: the one place a seed is left to chance."""
    return seed if seed is not None else secrets.randbits(SEED_BITS)


def closest(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' hint, or '' when nothing is close."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def convert_option(key: str, value: Any, scope: str = "job") -> Any:
    """Convert one option value to its type, or raise BadArgs naming the option (and what is valid in ``scope``)."""
    known = names(scope)
    if key not in known:
        spec = OPTIONS.get(key)
        if spec is not None:
            where = " or ".join(SCOPES[s] for s in SCOPES if s in spec.scopes)
            raise BadArgs(f"option {key!r} cannot be given {SCOPES[scope]}, only {where}; known: {', '.join(known)}")
        raise BadArgs(f"unknown option {safe_repr(key)}{closest(key[:64], known)}; known: {', '.join(known)}")
    return OPTIONS[key].convert(value)


def parse_options(pairs: list[Any] | tuple[Any, ...]) -> dict[str, Any]:
    """Trailing OSC key/value pairs to a dict of typed options."""
    if len(pairs) % 2:
        raise BadArgs(f"options come in key/value pairs; {safe_repr(pairs[-1])} has no value")
    options: dict[str, Any] = {}
    for key, value in zip(pairs[0::2], pairs[1::2], strict=True):
        if not isinstance(key, str):
            raise BadArgs(f"an option name must be a string, got {safe_repr(key)}")
        options[key] = convert_option(key, value)
    return options


def jam_fields(values: Any, groups: Iterable[str] | None = None) -> dict[str, Any]:
    """What ``values`` (a Request, or anything with option attributes) sets that a jam can use.

    Every option of the ``jam`` scope (only those of ``groups`` when given) that ``values`` has and
    that is not None; the prompt is not an option, so the caller brings it.
    """
    wanted = None if groups is None else frozenset(groups)
    fields: dict[str, Any] = {}
    for name in names("jam"):
        if wanted is not None and OPTIONS[name].group not in wanted:
            continue
        value = getattr(values, name, None)
        if value is not None:
            fields[name] = value
    return fields


def check_fields(cls: type, scopes: Iterable[str], others: Iterable[str], *, jam: bool = False) -> None:
    """Check at import that dataclass ``cls`` restates the table: TypeError naming each field that differs.

    ``cls`` must have a field for every option that may be given in one of ``scopes`` and, beside
    ``others``, no other field; each with the table's default (its ``jam_value`` when ``jam``), its
    type, and ``| None`` exactly when that default is None. So an option added to the table without
    its field (or a field left without its option) stops the bridge at import, not in a user's job.
    """
    given, skipped = frozenset(scopes), frozenset(others)
    wanted = {spec.name: spec for spec in _TABLE if spec.scopes & given}
    have = {f.name: f for f in dataclasses.fields(cls) if f.name not in skipped}
    problems = [f"no field for the option {name!r}" for name in wanted if name not in have]
    problems += [f"a field {name!r} that is not an option given {' or '.join(SCOPES[s] for s in SCOPES if s in given)}"
                 for name in have if name not in wanted]
    for name in (n for n in wanted if n in have):
        spec, found = wanted[name], have[name]
        expected = spec.jam_value if jam else spec.default
        if found.default != expected:
            problems.append(f"{name!r} defaults to {found.default!r}, the table to {expected!r}")
        text = found.type if isinstance(found.type, str) else getattr(found.type, "__name__", str(found.type))
        parts = [part.strip() for part in text.split("|")]
        if parts[0] != spec.kind.__name__ or ("None" in parts) != (expected is None):
            optional = " | None" if expected is None else ""
            problems.append(f"{name!r} is typed {text}, the table says {spec.kind.__name__}{optional}")
    if problems:
        raise TypeError(f"{cls.__name__} does not match the option table (bridge.options.OPTIONS): "
                        + "; ".join(problems))


def _plain(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(int(value))
    return _shown(value).strip("'")


def markdown() -> str:
    """The README's option table, made from :data:`OPTIONS`."""
    kinds = {bool: "1/0", int: "whole number", float: "number", str: "text"}
    rows = ["| option | type | default | accepts | where | meaning |", "|---|---|---|---|---|---|"]
    for spec in _TABLE:
        shown = spec.default_text or _plain(spec.default)
        if spec.jam_default is not None and "jam" in spec.scopes:
            shown = f"{shown} (jam: {_plain(spec.jam_default)})"
        accepts = "" if spec.kind is bool or (spec.kind is str and not spec.choices) else spec.limits()
        where = ", ".join(s for s in SCOPES if s in spec.scopes)
        rows.append(f"| `{spec.name}` | {kinds[spec.kind]} | {shown} | {accepts} | {where} | {spec.help} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class Request:
    """One generation job as the engine sees it, after the business rules are applied.

    The option fields are the options of :data:`REQUEST_SCOPES`, their defaults the table's
    (:func:`check_fields` holds them to it at import). Build one with ``bridge.app.requests``.
    """

    mode: Mode = "text"
    prompt: str = ""
    seconds: float | None = default("seconds")
    clip: str | None = None
    clip_after: str | None = None  # infill: the clip the fill leads into (``clip`` is the one it follows)
    seed: int | None = default("seed")
    guidance: float = default("guidance")
    temperature: float = default("temperature")
    top_k: int = default("top_k")
    top_p: float = default("top_p")
    negative: str = default("negative")
    bpm: float | None = default("bpm")
    bars: int | None = default("bars")
    beats_per_bar: int = default("beats_per_bar")
    key: str | None = default("key")
    prompt_seconds: float | None = default("prompt_seconds")
    variations: int = default("variations")
    include_prompt: bool = default("include_prompt")
    candidates: int = default("candidates")
    stream: bool = default("stream")
    play: bool = default("play")
    name: str | None = default("name")
    sample_rate: int | None = default("sample_rate")
    format: str = default("format")
    normalize: str = default("normalize")
    context_seconds: float = default("context_seconds")
    sync: str = default("sync")
    ahead_bars: int = default("ahead_bars")
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_options(self, options: Mapping[str, Any]) -> Request:
        """A copy with ``options`` (already typed) applied; keys that are not fields are left out."""
        known = {f.name for f in dataclasses.fields(self)}
        updates = {k: v for k, v in options.items() if k in known and k != "extra"}
        return dataclasses.replace(self, **updates)

    def validate(self) -> Request:
        """Raise BadArgs with what to do for any value out of range; return self."""
        if self.mode not in MODES:
            raise BadArgs(f"unknown mode {self.mode!r}; use one of {', '.join(MODES)}")
        if self.mode in ("continue", "melody") and not self.clip:
            raise BadArgs(f"{self.mode} needs a clip path")
        if self.mode == "melody" and not self.prompt.strip():
            raise BadArgs("melody needs a text prompt describing the style")
        if self.mode == "infill" and not (self.clip and self.clip_after):
            raise BadArgs("infill needs two clips: the one the fill follows and the one it leads into")
        if self.mode in ("loop", "infill") and self.variations != 1:
            raise BadArgs(f"{self.mode} makes one result from its best candidate: use candidates instead of "
                          "variations")
        if self.negative.strip() and self.guidance <= 1.0:
            raise BadArgs(f"a negative prompt works through guidance, and guidance {self.guidance:g} turns it off: "
                          "give guidance above 1 (3 is the usual) or drop negative")
        if self.mode != "jam":
            self._validate_length()
        elif self.ahead_bars and (self.play or self.sync != "free"):
            pacer = "the device paces a playing jam" if self.play else "its clock paces a synced jam"
            raise BadArgs("ahead_bars paces a jam that writes files only: give play 0 (on the command line "
                          f"--no-play) and sync free, or drop ahead_bars ({pacer})")
        if self.key is not None and not _KEY.fullmatch(self.key):
            raise BadArgs(f"key must be a note and a scale in words, e.g. 'A minor' or 'F# dorian', got {self.key!r}")
        for spec in _TABLE:
            if spec.name in _REQUEST_OPTIONS:
                spec.check(getattr(self, spec.name))
        return self

    def _validate_length(self) -> None:
        """The rules between options: a length is seconds, or bpm and bars together."""
        if self.bars is not None or self.bpm is not None:
            if self.bars is None or self.bpm is None:
                raise BadArgs("give both bpm and bars for a length in bars (or seconds alone)")
            OPTIONS["bpm"].check(self.bpm)
            if not OPTIONS["bars"].in_range(self.bars):
                raise BadArgs(f"bars {self.bars} is out of range: it must be {OPTIONS['bars'].limits()}")
            OPTIONS["beats_per_bar"].check(self.beats_per_bar)
            bar = float(tempo.bar_seconds(self.bpm, self.beats_per_bar))
            if bar * self.bars > MAX_SECONDS:
                most = int(MAX_SECONDS // bar)
                fits = f"at most {most} bar{'s' if most != 1 else ''}" if most else "a faster tempo or fewer beats a bar"
                raise BadArgs(f"{self.bars} bars of {self.beats_per_bar} beats at {self.bpm:g} bpm is "
                              f"{bar * self.bars:.0f} s, over the {MAX_SECONDS:g} s limit of one job: ask for {fits} "
                              "at this tempo (or make it in parts, continuing the last)")
        elif self.seconds is None or self.seconds <= 0:
            raise BadArgs("give a length: seconds above 0, or bpm and bars")
        if not OPTIONS["seconds"].in_range(self.seconds):
            raise BadArgs(f"seconds {self.seconds:g} is out of range: it must be {OPTIONS['seconds'].limits()}")


_KEY = re.compile(r"[A-Ga-g][#b]?( [A-Za-z0-9#. -]{1,30})?")
#: the scopes a Request is made from: every option but those only a running jam takes
REQUEST_SCOPES = ("job", "cli", "preset", "midi")
check_fields(Request, REQUEST_SCOPES, ("mode", "prompt", "clip", "clip_after", "extra"))
_REQUEST_OPTIONS = frozenset(f.name for f in dataclasses.fields(Request)) & frozenset(OPTIONS)


if __name__ == "__main__":
    print(markdown())
