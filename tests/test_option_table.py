"""The one option table drives every front end: requests, CLI flags, preset banks, the jam and MIDI CCs."""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import pytest

from bridge.app.presets import PresetLibrary
from bridge.engine.decoding import Sampling
from bridge.engine.jam import JamSettings
from bridge.errors import BadArgs
from bridge.frontends.cli import build_parser
from bridge.options import OPTIONS, SCOPES, Request, convert_option, jam_fields, markdown, names, parse_options

README = Path(__file__).resolve().parent.parent / "README.md"
SHIPPED = Path(__file__).resolve().parent.parent / "presets"


# -- the table itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_has_help_scopes_and_a_default_in_its_range(name):
    spec = OPTIONS[name]
    assert spec.name == name and spec.help.strip() and spec.expects.strip() and spec.group
    assert spec.scopes and spec.scopes <= set(SCOPES), spec.scopes
    spec.check(spec.default)  # raises if the default is out of its own range
    spec.check(spec.jam_value)
    if spec.default is not None:
        assert isinstance(spec.default, spec.kind)
    assert spec.convert(spec.default) == spec.default if spec.default is not None else True
    if spec.kind is bool:
        assert spec.low is None and spec.high is None and not spec.choices
    if spec.choices:
        assert spec.default in spec.choices


def test_the_token_is_transport_not_an_option():
    assert "token" not in OPTIONS
    with pytest.raises(BadArgs, match="unknown option 'token'"):
        parse_options(["token", "s3cret"])
    assert "token" not in (Request.with_options.__doc__ or "")


def test_an_option_given_where_it_does_not_belong_says_where_it_does():
    with pytest.raises(BadArgs, match=r"option 'seconds' cannot be given in an OSC job request, "
                                      r"only on the command line or in a preset bank"):
        parse_options(["seconds", 5])  # an OSC request's length is its <seconds> argument
    assert convert_option("context_seconds", "5", scope="jam") == 5.0


def test_readme_option_table_is_the_generated_one():
    text = README.read_text(encoding="utf-8")
    assert "## Options" in text, "the README has no '## Options' section: paste `python -m bridge.options` there"
    section = text.split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert "\n".join(rows) == markdown(), "the README's option table is stale: regenerate with `python -m bridge.options`"
    for name in OPTIONS:
        assert f"| `{name}` |" in section


# -- what is made from it --------------------------------------------------------------------------


def test_request_fields_and_defaults_are_the_tables_job_options():
    fields = {f.name: f for f in dataclasses.fields(Request)}
    option_fields = set(fields) - {"mode", "prompt", "clip", "clip_after", "extra"}
    assert option_fields == set(names("job")) | {"seconds"}
    for name in option_fields:
        assert fields[name].default == OPTIONS[name].default, name


def test_jam_settings_are_the_prompt_and_the_tables_jam_options():
    fields = {f.name: f.default for f in dataclasses.fields(JamSettings)}
    assert set(fields) == {"prompt", *names("jam")}
    for name in names("jam"):
        assert fields[name] == OPTIONS[name].jam_value, name


def test_sampling_defaults_match_the_table():
    for f in dataclasses.fields(Sampling):
        if f.name in OPTIONS:
            assert f.default == OPTIONS[f.name].default, f.name


@pytest.mark.parametrize(("name", "bad"), [
    ("temperature", 0.0), ("guidance", 25.0), ("top_k", -1), ("top_p", 1.5), ("seed", -1), ("bpm", 1000.0),
    ("beats_per_bar", 40),
])
def test_a_jam_setting_out_of_range_is_refused_as_a_request_is(name, bad):
    with pytest.raises(BadArgs) as request_error:
        Request(mode="jam", **{name: bad}).validate()
    with pytest.raises(BadArgs) as jam_error:
        JamSettings(**{name: bad}).check()
    length = {"bars": 1} if name == "bpm" else {"seconds": 4.0}
    with pytest.raises(BadArgs) as one_shot:
        Request(**length, **{name: bad}).validate()
    assert jam_error.value.message == request_error.value.message == one_shot.value.message
    assert jam_error.value.message.startswith(f"{name} must be {OPTIONS[name].limits()}, got")


def test_the_jam_converts_with_the_tables_words(tiny_engine):
    from bridge.engine.jam import Jam

    jam = Jam(tiny_engine, JamSettings(bpm=120.0, bars=1))
    with pytest.raises(BadArgs, match=re.escape("option 'top_k' wants a whole number")):
        jam.set({"top_k": "lots"})
    with pytest.raises(BadArgs, match="context_seconds must be from 1 to 25 s, got 40"):
        jam.set({"context_seconds": "40"})
    assert jam.set({"context_seconds": "12", "top_p": "0.5"}).context_seconds == 12.0


def test_jam_fields_take_what_the_jam_can_use():
    request = Request(prompt="p", seconds=4.0, temperature=0.7, top_p=0.2, variations=3, name="x")
    assert jam_fields(request) == {"guidance": 3.0, "temperature": 0.7, "top_k": 250, "top_p": 0.2,
                                   "negative": "", "beats_per_bar": 4,
                                   "context_seconds": 10.0}  # unset bpm, bars, seed: the jam's own stay
    assert set(jam_fields(Request(bpm=90.0, bars=2, seed=5), groups=("sampling",))) == {
        "seed", "guidance", "temperature", "top_k", "top_p", "negative"}


# -- the CLI ---------------------------------------------------------------------------------------


def _subparser(name):
    parser = build_parser()
    [sub] = [a for a in parser._actions if a.dest == "command"]
    assert isinstance(sub.choices, dict)  # the subcommands' parsers by name
    return sub.choices[name]


@pytest.mark.parametrize(("command", "scope"), [("infill", "cli"), ("jam", "jam")])
def test_a_flag_exists_for_every_option_of_the_scope_with_the_tables_help(command, scope):
    flags = {a.dest: a for a in _subparser(command)._actions}
    for name in names(scope):
        spec = OPTIONS[name]
        assert name in flags, f"`{command}` has no {spec.flag}"
        action = flags[name]
        assert spec.flag in action.option_strings and action.default is None
        assert action.help.startswith(spec.help)
        if spec.choices:
            assert tuple(action.choices) == spec.choices


def test_cli_flags_become_typed_options():
    from bridge.frontends.cli import _options_from_args

    args = build_parser().parse_args(["continue", "clip.wav", "--top-k", "5", "--include-prompt", "--seconds", "2",
                                      "--format", "flac"])
    assert _options_from_args(args) == {"top_k": 5, "include_prompt": True, "format": "flac"}
    jam = build_parser().parse_args(["jam", "keys", "--top-p", "0.3", "--context-seconds", "8"])
    from bridge.frontends.cli_options import options_from_args

    assert JamSettings(prompt="keys", **options_from_args(jam, names("jam"))).check() == JamSettings(
        prompt="keys", top_p=0.3, context_seconds=8.0)


# -- preset banks and MIDI -------------------------------------------------------------------------


def _load_error(tmp_path, text):
    path = tmp_path / "bank.yaml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    with pytest.raises(BadArgs) as info:
        PresetLibrary.load(tmp_path)
    return path, info.value.message


def test_a_preset_key_that_is_not_a_preset_option_is_refused_with_the_closest(tmp_path):
    path, message = _load_error(tmp_path, "presets:\n  a:\n    prompt: x\n    seconds: 2\n    context_seconds: 5\n")
    assert message.startswith(f"{path}:5: unknown key 'context_seconds'"), message
    assert "did you mean 'prompt_seconds'" in message


def test_a_bank_with_a_token_is_refused(tmp_path):
    path, message = _load_error(tmp_path, "defaults:\n  seconds: 2\n  token: s3cret\npresets:\n  a: x\n")
    assert message.startswith(f"{path}:3: unknown key 'token' in defaults"), message


def test_a_preset_value_out_of_range_names_its_line(tmp_path):
    path, message = _load_error(tmp_path, "presets:\n  a:\n    prompt: x\n    seconds: 2\n    top_p: 3\n")
    assert message == f"{path}:5: top_p must be from 0 to 1, got 3", message


def test_a_cc_on_an_option_a_cc_cannot_move_is_refused_at_load(tmp_path):
    path, message = _load_error(tmp_path, "presets:\n  a: {prompt: x, seconds: 1}\nmidi:\n  cc:\n"
                                          "    7: {param: seed, min: 0, max: 100}\n")
    assert message.startswith(f"{path}:5: cc 7 param 'seed' cannot be moved by a CC"), message
    assert ", ".join(names("midi")) in message


def test_every_midi_option_can_be_mapped_and_whole_numbers_round(tmp_path):
    ccs = "".join(f"    {i}: {{param: {name}, min: {OPTIONS[name].low or 1}, max: {OPTIONS[name].low or 1}}}\n"
                  for i, name in enumerate(names("midi")))
    (tmp_path / "bank.yaml").write_text(f"presets:\n  a: {{prompt: x, seconds: 1}}\nmidi:\n  cc:\n{ccs}",
                                        encoding="utf-8")
    bank = PresetLibrary.load(tmp_path).bank("bank")
    assert [m.param for m in bank.midi.cc.values()] == list(names("midi"))
    for mapping in bank.midi.cc.values():
        assert isinstance(mapping.value(64), OPTIONS[mapping.param].kind)


def test_switching_a_preset_into_a_jam_brings_its_sampling_not_its_tempo():
    library = PresetLibrary.load(SHIPPED)
    keys = library.request("lofi", "keys")
    fields = jam_fields(keys, groups=("sampling",))
    assert fields["seed"] == 11 and "top_p" in fields and not {"bpm", "bars", "beats_per_bar"} & set(fields)


def test_the_key_option_adds_the_key_to_the_text_and_refuses_what_is_not_a_key():
    from bridge.app.planning import key_text

    assert key_text("dusty keys.", "A minor") == "dusty keys, in A minor"
    assert key_text("dusty keys in a minor", "A minor") == "dusty keys in a minor"  # said already
    assert key_text("dusty keys", None) == "dusty keys"
    assert Request(prompt="x", seconds=1.0).with_options(parse_options(["key", "F# dorian"])).validate().key == "F# dorian"
    with pytest.raises(BadArgs, match=r"key must be a note and a scale in words, e.g. 'A minor'"):
        Request(prompt="x", seconds=1.0, key="H minor; rm -rf").validate()
    with pytest.raises(BadArgs, match="cannot be given"):
        convert_option("key", "A minor", scope="jam")  # a jam's key goes in its prompt
