"""Preset banks: the shipped ones load, requests layer defaults < preset < overrides, errors name file and line."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from bridge.app.presets import PresetLibrary
from bridge.errors import BadArgs, NotFound

SHIPPED = Path(__file__).resolve().parent.parent / "presets"


@pytest.fixture(scope="module")
def library():
    return PresetLibrary.load(SHIPPED)


def _bank(tmp_path, text, name="bank.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def _load_error(tmp_path, text, kind=BadArgs):
    path = _bank(tmp_path, text)
    with pytest.raises(kind) as info:
        PresetLibrary.load(tmp_path)
    return path, info.value.message


def test_shipped_banks_load_and_make_valid_requests(library):
    assert library.banks() == ["lofi", "techno"]
    for bank in library.banks():
        found = library.bank(bank)
        assert found.description and found.midi.notes and found.midi.cc and found.midi.program
        for name in found.presets:
            request = library.request(bank, name, {})
            assert request.prompt and request.extra["preset"] == f"{bank}/{name}"
            assert (request.bpm and request.bars) or request.seconds


def test_get_returns_what_the_preset_itself_sets(library):
    keys = library.get("lofi", "keys")
    assert (keys.name, keys.options["seed"]) == ("keys", 11)
    assert keys.prompt.startswith("dusty lofi piano") and keys.mode is None and keys.note.startswith("pad 1")
    assert library.bank("lofi").defaults.mode == "text" and library.bank("lofi").defaults.options["bpm"] == 82.0


def test_layers_defaults_then_preset_then_overrides(library):
    drums = library.request("lofi", "drums", {})
    assert (drums.bpm, drums.bars, drums.guidance, drums.seed) == (82.0, 2, 3.0, None)  # bars from the preset
    again = library.request("lofi", "drums", {"bars": 4, "seed": 9, "temperature": 0.8})
    assert (again.bars, again.seed, again.temperature, again.bpm) == (4, 9, 0.8, 82.0)
    faster = library.request("lofi", "drums", {"bpm": 96.0})
    assert (faster.bpm, faster.bars) == (96.0, 2)


def test_the_layer_that_sets_the_length_last_wins(library):
    sample = library.request("lofi", "sample", {})  # the preset's seconds beat the bank's bars
    assert (sample.seconds, sample.bars, sample.bpm) == (6.0, None, None)
    tempo_only = library.request("lofi", "sample", {"bpm": 100.0})  # a clock tempo does not make it bars
    assert (tempo_only.seconds, tempo_only.bars) == (6.0, None)
    in_bars = library.request("lofi", "sample", {"bars": 2})  # a knob asking for bars does
    assert (in_bars.seconds, in_bars.bars, in_bars.bpm) == (None, 2, 82.0)
    in_seconds = library.request("lofi", "drums", {"seconds": 3.5})
    assert (in_seconds.seconds, in_seconds.bars, in_seconds.bpm) == (3.5, None, None)


def test_a_preset_without_a_length_takes_the_defaults_seconds(tmp_path):
    _bank(tmp_path, """
        defaults: {seconds: 5}
        presets:
          a: just a prompt
          b: {prompt: other, bpm: 100, bars: 2}
    """)
    library = PresetLibrary.load(tmp_path)
    assert library.banks() == ["bank"]  # named after the file when `bank:` is left out
    assert library.request("bank", "a").seconds == 5.0
    b = library.request("bank", "b")
    assert (b.seconds, b.bars, b.bpm) == (None, 2, 100.0)


def test_unknown_names_list_the_known_ones_and_hint_the_closest(library):
    with pytest.raises(NotFound) as info:
        library.get("lofy", "keys")
    assert "did you mean 'lofi'" in info.value.message and "banks: lofi, techno" in info.value.message
    with pytest.raises(NotFound) as info:
        library.request("lofi", "drum", {})
    assert "did you mean 'drums'" in info.value.message and "keys, drums, bass" in info.value.message


def test_unknown_override_is_refused_with_a_hint(library):
    with pytest.raises(BadArgs, match=r"unknown option 'temprature'.*did you mean 'temperature'"):
        library.request("lofi", "keys", {"temprature": 0.5})
    with pytest.raises(BadArgs, match=r"preset lofi/keys: temperature must be above 0"):
        library.request("lofi", "keys", {"temperature": 0.0})
    with pytest.raises(BadArgs, match=r"unknown option 'token'"):  # transport: the server takes it off first
        library.request("lofi", "keys", {"token": "s3cret"})


@pytest.mark.parametrize(("where", "text", "line", "hint"), [
    ("preset", "bank: bad\npresets:\n  one:\n    prompt: x\n    temprature: 0.5\n", 5, "temperature"),
    ("defaults", "defaults:\n  bmp: 90\npresets:\n  a: x\n", 2, "bpm"),
    ("top level", "bank: b\npreset:\n  a: x\n", 2, "presets"),
    ("midi", "presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  note:\n    36: a\n", 4, "notes"),
    ("cc", "presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  cc:\n    1: {param: guidance, mn: 1, max: 2}\n", 5,
     "min"),
])
def test_unknown_key_names_file_line_and_closest(tmp_path, where, text, line, hint):
    path, message = _load_error(tmp_path, text)
    assert message.startswith(f"{path}:{line}: unknown key"), message
    assert f"did you mean {hint!r}" in message and "valid keys:" in message


@pytest.mark.parametrize(("text", "expected"), [
    ("defaults:\n  bars: lots\npresets:\n  a: hello\n", r"bank.yaml:2: option 'bars' wants a whole number"),
    ("presets:\n  a:\n    prompt: 5\n    seconds: 2\n", r"bank.yaml:3: prompt wants text, got int 5 \(quote it\)"),
    ("presets:\n  a:\n    prompt: x\n    seconds: -1\n", r"bank.yaml:4: seconds wants a length above 0"),
    ("presets:\n  a:\n    prompt: x\n    mode: txt\n", r"bank.yaml:4: mode must be one of .*did you mean 'text'"),
    ("presets:\n  a:\n    prompt: x\n    note: 36\n", r"bank.yaml:4: note is a remark .* midi: notes:"),
    ("presets:\n  a: [x, y]\n", r"bank.yaml:2: preset 'a' must be a prompt or a mapping"),
    ("presets: {}\n", r"bank.yaml:1: the bank has no presets"),
    ("presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  channel: 17\n", r"bank.yaml:4: channel wants 1 to 16"),
    ("presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  notes: {200: a}\n", r"bank.yaml:4: note 200 is not a number"),
    ("presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  cc:\n    7: {param: volume, min: 0, max: 1}\n",
     r"bank.yaml:5: cc 7 param 'volume' is not one of"),
    ("presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  cc:\n    7:\n      param: temperature\n      min: 0\n"
     "      max: 1\n", r"bank.yaml:7: cc temperature min 0 is out of range: temperature must be above 0"),
    ("presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  cc:\n    7: {param: bars, min: 1, max: lots}\n",
     r"bank.yaml:5: max wants a number, got 'lots'"),
])
def test_wrong_types_say_what_is_expected_and_where(tmp_path, text, expected):
    _path, message = _load_error(tmp_path, text)
    assert re.search(expected, message), message


def test_a_preset_that_cannot_run_as_it_stands_is_refused_at_load(tmp_path):
    path, message = _load_error(tmp_path, "defaults: {bpm: 90}\npresets:\n  ok: {prompt: x, bars: 2}\n"
                                          "  broken:\n    prompt: y\n")
    assert message.startswith(f"{path}:5: preset 'broken': give both bpm and bars"), message


def test_duplicate_keys_are_refused_with_both_lines(tmp_path):
    path, message = _load_error(tmp_path, "presets:\n  a: {prompt: x, seconds: 1}\n  a: {prompt: y, seconds: 2}\n")
    assert message.startswith(f"{path}:3: not a readable YAML bank (duplicate key 'a' (first on line 2))"), message


def test_midi_note_must_name_a_preset(tmp_path):
    _path, message = _load_error(tmp_path, "presets:\n  keys: {prompt: x, seconds: 1}\nmidi:\n  notes:\n    36: kyes\n",
                                 kind=NotFound)
    assert "bank.yaml:5: note 36 names preset 'kyes'" in message and "did you mean 'keys'" in message


def test_program_change_must_name_a_loaded_bank(tmp_path):
    _path, message = _load_error(tmp_path, "presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  program:\n"
                                           "    0: bank\n    1: tehcno\n", kind=NotFound)
    assert "bank.yaml:6: midi program 1 names bank 'tehcno'" in message and "banks: bank" in message


def test_two_files_with_one_bank_name_are_refused(tmp_path):
    _bank(tmp_path, "bank: same\npresets: {a: {prompt: x, seconds: 1}}\n", "one.yaml")
    _bank(tmp_path, "bank: same\npresets: {b: {prompt: y, seconds: 1}}\n", "two.yml")
    with pytest.raises(BadArgs, match=r"bank 'same' is also defined in .*one\.yaml: rename one"):
        PresetLibrary.load(tmp_path)


def test_a_preset_for_another_model_is_refused_when_the_model_is_known(tmp_path):
    _bank(tmp_path, "defaults: {model: facebook/musicgen-small, seconds: 2}\npresets:\n  a: x\n"
                    "  b: {prompt: y, model: facebook/musicgen-melody, mode: melody, clip: /tmp/tune.wav}\n")
    library = PresetLibrary.load(tmp_path)
    assert library.request("bank", "a", model="facebook/musicgen-small").extra["model"] == "facebook/musicgen-small"
    melody = library.request("bank", "b")
    assert (melody.mode, melody.clip, melody.extra["model"]) == ("melody", "/tmp/tune.wav", "facebook/musicgen-melody")
    with pytest.raises(BadArgs, match="made for the model facebook/musicgen-melody, and the bridge runs tiny-random"):
        library.request("bank", "b", model="tiny-random")


def test_unsafe_yaml_is_refused(tmp_path):
    path, message = _load_error(tmp_path, "bank: !!python/object/apply:os.system ['true']\npresets: {a: b}\n")
    assert message.startswith(f"{path}:1: not a readable YAML bank"), message


def test_a_missing_folder_says_so(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        PresetLibrary.load(tmp_path / "nowhere")
