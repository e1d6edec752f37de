"""The REAPER actions "loop from prompt" and "fill the time selection between two items" under the real Lua 5.4
interpreter with the stub `reaper` (tests/lua/harness.lua, items and a time selection from tests/lua/items.lua),
against a fake daemon on a real UDP socket, and the loop against the real daemon on tiny-random."""

from __future__ import annotations

import json

import pytest
import soundfile as sf
from test_reaper_lua import HARNESS, LUA, ROOT, SCRIPTS, _env, _finish, _inserted, _start, daemon  # noqa: F401

from bridge.tempo import bars_to_samples

ITEMS = ROOT / "tests" / "lua" / "items.lua"
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4 lua-socket)")


def _items(*items):
    return ";".join("|".join(str(v) for v in item) for item in items)


def test_loop_sends_the_prompt_the_negative_and_the_bars_and_inserts_at_the_cursor(daemon):  # noqa: F811
    proc = _start("musicgen_loop.lua", _env(daemon.port, input="warm, dusty pads -- no drums|vocals|2", bpm=90,
                                            cursor=6.0, tracks=2, selected_track=2))
    args = daemon.expect("/musicgen/loop")
    assert args[0].startswith("reaper-loop-")
    assert args[1:] == ["warm, dusty pads", 0.0, "bpm", 90.0, "bars", 2, "beats_per_bar", 4, "negative",
                        "drums, vocals"]
    daemon.reply("/musicgen/done", "/musicgen/loop", args[0], "/r/loop.wav", 5.33)
    assert _inserted(_finish(proc)) == [("/r/loop.wav", 6.0, 2)]


def test_loop_without_a_negative_sends_none_and_bad_bars_say_so(daemon):  # noqa: F811
    proc = _start("musicgen_loop.lua", _env(daemon.port, input="keys||1"))
    args = daemon.expect("/musicgen/loop")
    assert args[1:] == ["keys", 0.0, "bpm", 120.0, "bars", 1, "beats_per_bar", 4]
    daemon.reply("/musicgen/fail", "/musicgen/loop", args[0], "bad_args", "a loop of 0.5 s is too short")
    assert "MESSAGE musicgen-bridge: bad_args  a loop of 0.5 s is too short" in _finish(proc)
    out = _finish(_start("musicgen_loop.lua", _env(daemon.port, input="keys||0")))
    assert "give a whole number of bars" in out and [a for a, _ in daemon.seen if a == "/musicgen/loop"] == [
        "/musicgen/loop"]


def test_fill_sends_the_two_items_and_the_gap_and_inserts_into_it(daemon, tmp_path):  # noqa: F811
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    items = _items((2, first, 0.0, 4.0, 1.0, 1, 5.0), (2, second, 8.0, 4.0, 0.0, 1, 6.0), (1, "/x.wav", 4.0, 4.0, 0, 1, 4))
    proc = _start("musicgen_fill.lua", _env(daemon.port, extra=ITEMS, items=items, time_sel="4.0,8.0",
                                            input="glue|no vocals", tracks=2, selected_track=2))
    args = daemon.expect("/musicgen/infill")
    assert args[0].startswith("reaper-fill-")
    assert args[1:] == [str(first), str(second), "glue", 4.0, "negative", "vocals"]
    daemon.reply("/musicgen/done", "/musicgen/infill", args[0], "/r/fill.wav", 4.0)
    assert _inserted(_finish(proc)) == [("/r/fill.wav", 4.0, 2)]  # into the gap, on the items' track


@pytest.mark.parametrize(("items", "time_sel", "words"), [
    ([(1, "/a.wav", 0.0, 4.0, 0, 1, 4), (1, "/b.wav", 8.0, 4.0, 0, 1, 4)], None, "make a time selection"),
    ([(1, "/a.wav", 0.0, 3.0, 0, 1, 3), (1, "/b.wav", 8.0, 4.0, 0, 1, 4)], "4,8", "must start where one audio item ends"),
    ([(1, "/a.wav", 0.0, 4.0, 0, 1, 4), (1, "/c.wav", 5.0, 1.0, 0, 1, 1), (1, "/b.wav", 8.0, 4.0, 0, 1, 4)], "4,8",
     "not empty"),
    ([(1, "/a.wav", 0.0, 4.0, 0, 1, 9), (1, "/b.wav", 8.0, 4.0, 0, 1, 4)], "4,8", "from the end"),
    ([(1, "/a.wav", 0.0, 4.0, 0, 1, 4), (1, "/b.wav", 8.0, 4.0, 2, 1, 6)], "4,8", "from the start"),
])
def test_fill_refuses_a_selection_that_is_not_a_gap_between_two_items(daemon, items, time_sel, words):  # noqa: F811
    values = {"extra": ITEMS, "items": _items(*items), "input": "glue|"} | ({"time_sel": time_sel} if time_sel else {})
    out = _finish(_start("musicgen_fill.lua", _env(daemon.port, **values)))
    assert "MESSAGE musicgen-bridge: bad_args" in out and words in out and not _inserted(out)
    assert daemon.seen == []  # nothing was sent


def test_loop_against_the_real_daemon(osc_server, tiny_bridge):
    server, _client = osc_server(bridge=tiny_bridge)
    proc = _start("musicgen_loop.lua", _env(server.port, input="warm pads -- no drums||1", bpm=100, cursor=2.0))
    [(path, position, track)] = _inserted(_finish(proc, timeout=120))
    assert (position, track) == (2.0, 1)
    assert sf.info(path).frames == bars_to_samples(1, 100.0, 32000)
    sidecar = json.loads(open(path + ".json").read())
    assert (sidecar["mode"], sidecar["prompt"], sidecar["options"]["negative"]) == ("loop", "warm pads", "drums")
