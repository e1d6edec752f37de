"""One request builder, one seed picker, and the dataclasses held to the option table at import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest

from bridge.app.journal import Journal, request_from_record, request_to_record
from bridge.app.presets import PresetLibrary
from bridge.app.requests import build_request
from bridge.engine.jam import JamSettings
from bridge.errors import BadArgs
from bridge.options import OPTIONS, REQUEST_SCOPES, SEED_BITS, Request, check_fields, pick_seed

REQUEST_OTHERS = ("mode", "prompt", "clip", "clip_after", "extra")
TOO_COLD = "temperature must be above 0, got 0"


def _bank(tmp_path):
    (tmp_path / "b.yaml").write_text(textwrap.dedent("""\
        bank: b
        defaults: {bars: 2, bpm: 90}
        presets:
          keys: {prompt: dusty keys, temperature: 0.8}
        """), encoding="utf-8")
    return PresetLibrary.load(tmp_path)


# -- the builder -----------------------------------------------------------------------------------


def test_a_bad_option_gets_the_same_words_whichever_way_the_job_came(tmp_path):
    with pytest.raises(BadArgs, match=f"^{TOO_COLD}$"):
        build_request("text", "keys", {"temperature": 0.0}, seconds=4.0)
    with pytest.raises(BadArgs, match=f"^preset b/keys: {TOO_COLD}$"):
        _bank(tmp_path).request("b", "keys", {"temperature": 0.0})
    record = request_to_record(Request(prompt="keys", seconds=4.0)) | {"temperature": 0.0}
    with pytest.raises(BadArgs, match=f"^{TOO_COLD}$"):
        request_from_record(record)
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "generate", "keys", "--seconds", "4",
                           "--temperature", "0", "--output-dir", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"musicgen-bridge: bad_args: {TOO_COLD}\n"


def test_a_preset_is_built_as_a_front_end_would_ask_for_it(tmp_path):
    built = _bank(tmp_path).request("b", "keys", {"seed": 7})
    assert built == build_request("text", "dusty keys", {"bars": 2, "bpm": 90.0, "temperature": 0.8, "seed": 7},
                                  extra={"preset": "b/keys"})


def test_the_builder_takes_the_values_as_given_so_a_journal_record_comes_back_the_same():
    jam = build_request("jam", "lofi", {"play": True}, seconds=0.0)  # a jam of 0 s is not "no length"
    assert jam.seconds == 0.0 and jam.clip is None
    assert request_from_record(request_to_record(jam)) == jam
    fill = build_request("infill", "x", {"candidates": 2}, seconds=1.0, clip="/a.wav", clip_after="/b.wav",
                         extra={"from": "test"})
    assert (fill.clip, fill.clip_after, fill.candidates, fill.extra) == ("/a.wav", "/b.wav", 2, {"from": "test"})
    assert request_from_record(request_to_record(fill)) == fill


def test_options_that_are_not_request_fields_are_left_out():
    assert build_request("text", "x", {"glide_bars": 4}, seconds=1.0) == Request(prompt="x", seconds=1.0)


# -- the seed picker -------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [0, 1, 2**63 - 1])
def test_a_given_seed_is_kept_even_zero(given):
    assert pick_seed(given) == given


def test_a_picked_seed_fits_its_bits_and_the_tables_range():
    picked = {pick_seed() for _ in range(64)}
    assert all(0 <= seed < 2**SEED_BITS for seed in picked)
    for seed in picked:
        OPTIONS["seed"].check(seed)
    assert len(picked) > 1  # drawn, not a constant


def test_the_journal_records_the_seed_the_job_runs_with(tmp_path):
    journal = Journal(tmp_path)
    journal.open()
    with journal:
        left = journal.accept("a", Request(prompt="x", seconds=1.0), "generate")
        given = journal.accept("b", Request(prompt="x", seconds=1.0, seed=0), "generate")
    assert left.request is not None and left.seed == left.request.seed is not None
    assert given.request is not None and given.seed == given.request.seed == 0
    again = Journal(tmp_path)
    with again:
        unfinished = again.open().unfinished
    assert [(entry.id, entry.seed, entry.request and entry.request.seed) for entry in unfinished] == [
        ("a", left.seed, left.seed), ("b", 0, 0)]


# -- the dataclasses against the table -------------------------------------------------------------


def _like(cls, drop=(), add=(), **changed):
    """A frozen dataclass like ``cls`` with fields dropped, added as (name, type, default), or changed to
    (type, default)."""
    fields = []
    for f in dataclasses.fields(cls):
        if f.name in drop:
            continue
        kind, default = changed.get(f.name, (f.type, f.default))
        spec = dataclasses.field(default_factory=f.default_factory) if default is dataclasses.MISSING \
            else dataclasses.field(default=default)
        fields.append((f.name, kind, spec))
    fields += [(name, kind, dataclasses.field(default=default)) for name, kind, default in add]
    return dataclasses.make_dataclass(cls.__name__, fields, frozen=True)


def test_the_real_dataclasses_match_the_table_and_a_copy_of_them_does_too():
    for cls in (Request, _like(Request)):
        check_fields(cls, REQUEST_SCOPES, REQUEST_OTHERS)
    for cls in (JamSettings, _like(JamSettings)):
        check_fields(cls, ("jam",), ("prompt",), jam=True)


def test_an_option_without_its_field_is_named():
    with pytest.raises(TypeError, match=r"^JamSettings does not match the option table \(bridge.options.OPTIONS\): "
                                        r"no field for the option 'glide_bars'$"):
        check_fields(_like(JamSettings, drop=("glide_bars",)), ("jam",), ("prompt",), jam=True)
    with pytest.raises(TypeError, match=r"no field for the option 'seconds'; no field for the option 'sync'$"):
        check_fields(_like(Request, drop=("seconds", "sync")), REQUEST_SCOPES, REQUEST_OTHERS)


def test_a_field_without_its_option_is_named():
    with pytest.raises(TypeError, match=r"a field 'colour' that is not an option given in an OSC job request or "
                                        r"on the command line or in a preset bank or as a MIDI CC param$"):
        check_fields(_like(Request, add=[("colour", "str", "red")]), REQUEST_SCOPES, REQUEST_OTHERS)
    with pytest.raises(TypeError, match="a field 'variations' that is not an option given on a running jam"):
        check_fields(_like(JamSettings, add=[("variations", "int", 1)]), ("jam",), ("prompt",), jam=True)


def test_a_field_with_another_default_or_type_is_named():
    with pytest.raises(TypeError, match=r"'bpm' defaults to 100.0, the table to 120.0$"):
        check_fields(_like(JamSettings, bpm=("float", 100.0)), ("jam",), ("prompt",), jam=True)
    with pytest.raises(TypeError, match=r"'bpm' defaults to 120.0, the table to None; 'bpm' is typed float, "
                                        r"the table says float \| None$"):
        check_fields(_like(Request, bpm=("float", 120.0)), REQUEST_SCOPES, REQUEST_OTHERS)
    with pytest.raises(TypeError, match=r"'top_k' is typed float, the table says int$"):
        check_fields(_like(Request, top_k=("float", 250)), REQUEST_SCOPES, REQUEST_OTHERS)
    with pytest.raises(TypeError, match=r"'seed' is typed int, the table says int \| None$"):
        check_fields(_like(Request, seed=("int", None)), REQUEST_SCOPES, REQUEST_OTHERS)
    with pytest.raises(TypeError, match=r"'top_p' is typed float \| None, the table says float$"):
        check_fields(_like(Request, top_p=("float | None", 0.0)), REQUEST_SCOPES, REQUEST_OTHERS)
    with pytest.raises(TypeError, match=r"'guidance' is typed int, the table says float$"):  # a type, not text
        check_fields(_like(JamSettings, guidance=(int, 3.0)), ("jam",), ("prompt",), jam=True)
