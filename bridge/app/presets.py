"""Preset banks: YAML files of named prompts with their options, loaded safely and validated.

A bank file (``presets/*.yaml``)::

    bank: lofi
    description: dusty keys and soft drums
    defaults: {bpm: 82, bars: 4, guidance: 3.0}   # any option, plus mode, model, prompt, seconds
    presets:
      keys: {prompt: "dusty lofi piano, vinyl crackle", seed: 1, note: "pad 1"}
      drums: {prompt: "soft boom bap drums", bars: 2}
      hum: "a prompt alone is a preset too"
    midi:
      channel: 1                                   # 1-16; leave out to listen on every channel
      notes: {36: keys, 37: drums}                 # note number -> preset
      cc: {1: {param: temperature, min: 0.6, max: 1.4}}
      program: {0: lofi, 1: techno}                # program change -> bank

A request is built from the bank's defaults, then the preset, then the caller's overrides. The
length comes from whichever layer set it last: ``bars`` (at ``bpm``) or ``seconds``. ``note`` is a
remark for the player (which pad, what it is for), never sent to the model.

Banks are read with a safe loader that remembers each key's line, so an unknown key, a wrong type
or a MIDI entry naming a missing preset is reported as ``file:line: what is wrong (did you mean
...?)``. Nothing here is global: a :class:`PresetLibrary` is built from a folder and passed down.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bridge.app.requests import build_request
from bridge.errors import BadArgs, NotFound
from bridge.options import MODES, OPTIONS, SCOPES, Request, closest, convert_option, names

__all__ = ["CcMapping", "MidiMap", "Preset", "PresetBank", "PresetLibrary", "load_bank"]

TOP_KEYS = ("bank", "description", "defaults", "presets", "midi")
OPTION_KEYS = names("preset")  # the options a bank may set, from the one option table
TEXT_KEYS = ("prompt", "mode", "model", "clip")
PRESET_KEYS = (*TEXT_KEYS, "note", *OPTION_KEYS)
DEFAULT_KEYS = tuple(k for k in PRESET_KEYS if k != "note")
OVERRIDE_KEYS = DEFAULT_KEYS
MIDI_KEYS = ("channel", "notes", "cc", "program")
CC_KEYS = ("param", "min", "max")
CC_PARAMS = names("midi")  # the options a CC may move
INT_PARAMS = tuple(k for k in CC_PARAMS if OPTIONS[k].kind is int)  # a knob moves these in whole steps


# -- loading with line numbers -------------------------------------------------------------------


class _Lined(dict[Any, Any]):
    """A YAML mapping that remembers where it and each of its keys were in the file."""

    line: int = 0
    lines: dict[Any, int]


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings are :class:`_Lined` and refuse duplicate keys."""

    def construct_lined_map(self, node: yaml.MappingNode) -> Iterator[_Lined]:
        data = _Lined()
        data.line = node.start_mark.line + 1
        data.lines = {}
        yield data
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.MarkedYAMLError(None, None, f"duplicate key {key!r} (first on line {seen[key]})",
                                           key_node.start_mark)
            seen[key] = line
        data.update(self.construct_mapping(node))
        data.lines.update(seen)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_lined_map)


def _line(data: Any, key: Any = None) -> int:
    if not isinstance(data, _Lined):
        return 0
    return data.line if key is None else data.lines.get(key, data.line)


class _Where:
    """Says ``file:line:`` for a key of a mapping read from one bank file."""

    def __init__(self, file: Path) -> None:
        self.file = file

    def __call__(self, data: Any, key: Any = None) -> str:
        return f"{self.file}:{_line(data, key)}:"

    def check_keys(self, data: Mapping[Any, Any], allowed: tuple[str, ...], what: str) -> None:
        for key in data:
            if key not in allowed:
                raise BadArgs(f"{self(data, key)} unknown key {key!r} in {what}{closest(str(key), allowed)}; "
                              f"valid keys: {', '.join(allowed)}")

    def mapping(self, parent: Mapping[Any, Any], key: str, what: str) -> Mapping[Any, Any]:
        value = parent.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise BadArgs(f"{self(parent, key)} {key} must be a mapping of {what}, got {type(value).__name__}")
        return value


# -- what a bank holds ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """What one preset (or a bank's defaults) sets, before the layers above it are applied."""

    name: str
    prompt: str | None = None
    mode: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # typed, keys from OPTION_KEYS
    seconds: float | None = None
    clip: str | None = None
    model: str | None = None
    note: str = ""
    line: int = 0

    def settings(self) -> dict[str, Any]:
        """Everything this layer sets, as one flat dict (``note`` left out: it is for people)."""
        out = dict(self.options)
        for key in ("prompt", "mode", "seconds", "clip", "model"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class CcMapping:
    """A controller knob: CC value 0..127 moves ``param`` linearly from ``low`` to ``high``."""

    param: str
    low: float
    high: float

    def value(self, cc_value: int) -> float | int:
        scaled = self.low + (self.high - self.low) * max(0, min(127, cc_value)) / 127.0
        return round(scaled) if self.param in INT_PARAMS else scaled


@dataclass(frozen=True)
class MidiMap:
    """A bank's MIDI mapping, as data: note -> preset, CC -> parameter range, program -> bank."""

    notes: Mapping[int, str] = field(default_factory=dict)
    cc: Mapping[int, CcMapping] = field(default_factory=dict)
    program: Mapping[int, str] = field(default_factory=dict)
    channel: int | None = None  # mido's numbering, 0-15; None: every channel
    program_lines: Mapping[int, int] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class PresetBank:
    name: str
    path: Path
    description: str
    defaults: Preset
    presets: Mapping[str, Preset]
    midi: MidiMap


def _typed_value(where: _Where, data: Mapping[Any, Any], key: str) -> Any:
    value = data[key]
    if key in OPTION_KEYS:
        try:
            typed = _seconds(value) if key == "seconds" else convert_option(key, value, scope="preset")
            OPTIONS[key].check(typed)
        except BadArgs as exc:
            raise BadArgs(f"{where(data, key)} {exc.message}") from None
        return typed
    if key == "mode" and value not in MODES:
        raise BadArgs(f"{where(data, key)} mode must be one of {', '.join(MODES)}, got {value!r}"
                      f"{closest(str(value), MODES)}")
    if key == "note" and not isinstance(value, str):
        raise BadArgs(f"{where(data, key)} note is a remark for the player (text); to fire this preset from a MIDI "
                      "note, map the note under midi: notes:")
    if not isinstance(value, str):
        raise BadArgs(f"{where(data, key)} {key} wants text, got {type(value).__name__} {value!r}"
                      + (" (quote it)" if isinstance(value, (int, float, bool)) else ""))
    return value


def _seconds(value: Any) -> float:
    """A bank's length: a YAML number above 0 (a layer that sets seconds sets the length)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise BadArgs(f"seconds wants a length above 0, e.g. 8.0, got {value!r}")
    return float(value)


def _layer(where: _Where, name: str, data: Mapping[Any, Any], allowed: tuple[str, ...], what: str) -> Preset:
    where.check_keys(data, allowed, what)
    typed = {str(k): _typed_value(where, data, str(k)) for k in data}
    return Preset(name=name, prompt=typed.pop("prompt", None), mode=typed.pop("mode", None),
                  seconds=typed.pop("seconds", None), clip=typed.pop("clip", None), model=typed.pop("model", None),
                  note=typed.pop("note", ""), options=typed, line=_line(data))


def _midi_number(where: _Where, data: Mapping[Any, Any], key: Any, what: str, high: int = 127) -> int:
    if isinstance(key, bool) or not isinstance(key, int) or not (0 <= key <= high):
        raise BadArgs(f"{where(data, key)} {what} {key!r} is not a number from 0 to {high}")
    return key


def _number(where: _Where, data: Mapping[Any, Any], key: str) -> float:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadArgs(f"{where(data, key if key in data else None)} {key} wants a number, got {value!r}")
    return float(value)


def _midi(where: _Where, top: Mapping[Any, Any], presets: Mapping[str, Preset], defaults: Preset) -> MidiMap:
    data = where.mapping(top, "midi", "channel, notes, cc and program")
    where.check_keys(data, MIDI_KEYS, "midi")
    notes: dict[int, str] = {}
    section = where.mapping(data, "notes", "note number -> preset")
    for note, preset in section.items():
        _midi_number(where, section, note, "note")
        if str(preset) not in presets:
            raise NotFound(f"{where(section, note)} note {note} names preset {preset!r}, which the bank does not "
                           f"have{closest(str(preset), presets)}; presets: {', '.join(presets)}")
        notes[note] = str(preset)
    cc: dict[int, CcMapping] = {}
    section = where.mapping(data, "cc", "CC number -> {param, min, max}")
    for number, spec in section.items():
        _midi_number(where, section, number, "cc")
        if not isinstance(spec, dict):
            raise BadArgs(f"{where(section, number)} cc {number} wants {{param: ..., min: ..., max: ...}}")
        where.check_keys(spec, CC_KEYS, f"cc {number}")
        param = spec.get("param")
        if isinstance(param, str) and param in OPTIONS and param not in CC_PARAMS:
            where_set = " or ".join(SCOPES[s] for s in SCOPES if s in OPTIONS[param].scopes)
            raise BadArgs(f"{where(spec, 'param')} cc {number} param {param!r} cannot be moved by a CC (it is set "
                          f"{where_set}); a CC can move {', '.join(CC_PARAMS)}")
        if param not in CC_PARAMS:
            raise BadArgs(f"{where(spec, 'param')} cc {number} param {param!r} is not one of "
                          f"{', '.join(CC_PARAMS)}{closest(str(param), CC_PARAMS)}")
        mapping = CcMapping(str(param), _number(where, spec, "min"), _number(where, spec, "max"))
        for end in ("min", "max"):
            _check_cc_end(where, spec, end, mapping, defaults)
        cc[number] = mapping
    program: dict[int, str] = {}
    section = where.mapping(data, "program", "program number -> bank")
    for number, bank in section.items():
        _midi_number(where, section, number, "program")
        if not isinstance(bank, str):
            raise BadArgs(f"{where(section, number)} program {number} wants a bank name, got {bank!r}")
        program[number] = bank
    channel = data.get("channel")
    if channel is not None and (isinstance(channel, bool) or not isinstance(channel, int) or not 1 <= channel <= 16):
        raise BadArgs(f"{where(data, 'channel')} channel wants 1 to 16 (as on the controller), got {channel!r}")
    return MidiMap(notes=notes, cc=cc, program=program, channel=None if channel is None else channel - 1,
                   program_lines={number: _line(section, number) for number in program})


def _check_cc_end(where: _Where, spec: Mapping[Any, Any], end: str, mapping: CcMapping, defaults: Preset) -> None:
    """A knob at either end must still make a valid request, or the controller could break every preset."""
    value = mapping.value(0 if end == "min" else 127)
    if mapping.param == "seconds":
        options = {k: v for k, v in defaults.options.items() if k not in ("bars", "bpm")}
    else:
        options = {"bpm": 120.0, "bars": 1, **defaults.options}
    try:
        build_request("text", "probe", options | {mapping.param: value})
    except BadArgs as exc:
        raise BadArgs(f"{where(spec, end)} cc {mapping.param} {end} {value:g} is out of range: {exc.message}") from None


def load_bank(file: Path) -> PresetBank:
    """Read and validate one bank file; BadArgs or NotFound say ``file:line:`` what is wrong."""
    try:
        text = file.read_text(encoding="utf-8")
        data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except (OSError, UnicodeDecodeError) as exc:
        raise BadArgs(f"{file}: cannot read the bank ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise BadArgs(f"{file}:{line} not a readable YAML bank ({problem}); banks are plain YAML (see presets/)") \
            from None
    where = _Where(file)
    if not isinstance(data, dict):
        raise BadArgs(f"{file}:1: a bank is a mapping with bank, defaults, presets and midi (see presets/)")
    where.check_keys(data, TOP_KEYS, "the bank")
    name = data.get("bank", file.stem)
    if not isinstance(name, str) or not name.strip():
        raise BadArgs(f"{where(data, 'bank')} bank wants a name, got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise BadArgs(f"{where(data, 'description')} description wants text")
    defaults = _layer(where, "defaults", where.mapping(data, "defaults", "options"), DEFAULT_KEYS, "defaults")
    section = where.mapping(data, "presets", "name -> {prompt: ..., ...}")
    if not section:
        raise BadArgs(f"{where(data, 'presets')} the bank has no presets: add `presets:` with name: {{prompt: ...}}")
    presets: dict[str, Preset] = {}
    for preset_name, values in section.items():
        if not isinstance(preset_name, str):
            raise BadArgs(f"{where(section, preset_name)} preset names are text, got {preset_name!r} (quote it)")
        if isinstance(values, str):
            presets[preset_name] = Preset(preset_name, prompt=values, line=_line(section, preset_name))
            continue
        if not isinstance(values, dict):
            raise BadArgs(f"{where(section, preset_name)} preset {preset_name!r} must be a prompt or a mapping "
                          "of prompt, options, bars, seed and note")
        presets[preset_name] = _layer(where, preset_name, values, PRESET_KEYS, f"preset {preset_name!r}")
    bank = PresetBank(name=name, path=file, description=description, defaults=defaults, presets=presets,
                      midi=_midi(where, data, presets, defaults))
    for preset in bank.presets.values():  # every preset must make a valid request as it stands
        try:
            _build(bank, preset, {}, placeholder_clip=True)
        except BadArgs as exc:
            raise BadArgs(f"{file}:{preset.line}: preset {preset.name!r}: {exc.message}") from None
    return bank


def _build(bank: PresetBank, preset: Preset, overrides: Mapping[str, Any], placeholder_clip: bool = False) -> Request:
    values: dict[str, Any] = {}
    length = None
    for layer in (bank.defaults.settings(), preset.settings(), dict(overrides)):
        if "bars" in layer:
            length = "bars"
        elif "seconds" in layer:
            length = "seconds"
        values.update(layer)
    if length == "bars":
        values.pop("seconds", None)
    elif length == "seconds":
        values.pop("bars", None)
        values.pop("bpm", None)  # bpm without bars would be half a length; the seconds say how long
    model = values.pop("model", None)
    mode = values.pop("mode", "text")
    clip = values.pop("clip", None)
    if clip is None and placeholder_clip and mode in ("continue", "melody"):
        clip = "(the clip is given with the request)"
    prompt, seconds = str(values.pop("prompt", "")), values.pop("seconds", None)
    return build_request(mode, prompt, values, seconds=seconds, clip=clip,
                         extra={"preset": f"{bank.name}/{preset.name}", **({"model": model} if model else {})})


class PresetLibrary:
    """Every bank in a folder, by name. Immutable once loaded; load again to pick up edits."""

    def __init__(self, banks: Mapping[str, PresetBank]) -> None:
        self._banks = dict(banks)

    @classmethod
    def load(cls, folder: str | Path) -> PresetLibrary:
        """Load every ``*.yaml``/``*.yml`` bank in ``folder``; the first bad one raises, naming its file and line."""
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise NotFound(f"preset folder {path} does not exist: give a folder of .yaml banks (see presets/)")
        banks: dict[str, PresetBank] = {}
        for file in sorted([*path.glob("*.yaml"), *path.glob("*.yml")]):
            bank = load_bank(file)
            if bank.name in banks:
                raise BadArgs(f"{file}: bank {bank.name!r} is also defined in {banks[bank.name].path}: rename one")
            banks[bank.name] = bank
        library = cls(banks)
        library._check_programs()
        return library

    def _check_programs(self) -> None:
        for bank in self._banks.values():
            for number, target in bank.midi.program.items():
                if target not in self._banks:
                    raise NotFound(f"{bank.path}:{bank.midi.program_lines.get(number, 0)}: midi program {number} names bank {target!r}, which is not in "
                                   f"{bank.path.parent}{closest(target, self._banks)}; banks: {', '.join(self.banks())}")

    def banks(self) -> list[str]:
        return sorted(self._banks)

    def bank(self, name: str) -> PresetBank:
        if name not in self._banks:
            raise NotFound(f"no preset bank {name!r}{closest(name, self._banks)}; banks: "
                           f"{', '.join(self.banks()) or 'none loaded'}")
        return self._banks[name]

    def get(self, bank: str, preset: str) -> Preset:
        found = self.bank(bank)
        if preset not in found.presets:
            raise NotFound(f"bank {bank!r} has no preset {preset!r}{closest(preset, found.presets)}; presets: "
                           f"{', '.join(found.presets)}")
        return found.presets[preset]

    def request(self, bank: str, preset: str, overrides: Mapping[str, Any] | None = None, *,
                model: str | None = None) -> Request:
        """The preset as a validated Request: bank defaults < preset < ``overrides`` (typed options).

        ``extra`` carries ``preset`` ("bank/name") and the ``model`` the preset asks for, if any; with
        ``model`` (the one the bridge runs) a preset made for another model is refused.
        """
        found = self.bank(bank)
        chosen = self.get(bank, preset)
        overrides = dict(overrides or {})
        for key in overrides:
            if key not in OVERRIDE_KEYS:
                raise BadArgs(f"unknown option {key!r} for preset {bank}/{preset}{closest(key, OVERRIDE_KEYS)}; "
                              f"known: {', '.join(OPTION_KEYS)}")
        try:
            request = _build(found, chosen, overrides)
        except BadArgs as exc:
            raise BadArgs(f"preset {bank}/{preset}: {exc.message}") from None
        wanted = request.extra.get("model")
        if model is not None and wanted is not None and wanted != model:
            raise BadArgs(f"preset {bank}/{preset} is made for the model {wanted}, and the bridge runs {model}: "
                          f"restart it with --model {wanted}, or drop `model:` from {found.path.name}")
        return request
