"""The Live Remote Script's `mg loop:` and `mg fill:` clips and negative prompts, with the fake Live and the real
daemon on tiny-random over real UDP (the same harness as tests/test_ableton_script.py)."""

from __future__ import annotations

import importlib
import json

import pytest
import soundfile as sf
from ableton import fake_live
from test_ableton_script import _done, _midi_track, _pinned, live  # noqa: F401  (live: the fixture)

from bridge.tempo import bars_to_samples

loopfill = importlib.import_module("MusicGenBridge.loopfill")
names = importlib.import_module("MusicGenBridge.names")
placing = importlib.import_module("MusicGenBridge.placing")


@pytest.mark.parametrize(("prompt", "expected"), [
    ("warm pads -- no drums", ("warm pads", "drums")),
    ("warm pads -- no drums, no vocals", ("warm pads", "drums, vocals")),
    ("warm pads --drums,without vocals", ("warm pads", "drums, vocals")),
    ("warm pads", ("warm pads", "")),
    ("lo-fi keys - dusty", ("lo-fi keys - dusty", "")),
])
def test_the_negative_prompt_follows_a_double_dash(prompt, expected):
    assert loopfill.split_negative(prompt) == expected


def test_loop_and_fill_names_parse_and_keep_their_state():
    assert tuple(names.parse_name("mg loop: warm pads -- no drums [40%]")) == ("loop", "warm pads -- no drums", "40%")
    parsed = names.parse_name("MG Fill: glue")
    assert tuple(parsed) == ("fill", "glue", None)
    assert parsed.with_state("done") == "mg fill: glue [done]"


def _sidecar(path):
    return json.loads(open(path + ".json").read())


def test_mg_loop_lands_a_seamless_loop_of_the_clips_length_placed_looping(osc_server, tiny_bridge, live):  # noqa: F811
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    keys = _midi_track(song)
    prompt = keys.clip_slots[0].create_clip(8.0)
    session = live(song, server.port)
    prompt.name = "mg loop: warm pads -- no drums"
    session.tick_until(lambda: _done(prompt), what="done")
    placed = song.tracks[1].clip_slots[0].t_clip()
    assert sf.info(placed.file_path).frames == bars_to_samples(2, 120.0, 32000)
    _pinned(placed, 8.0, placed.file_path)  # warped, looping, pinned to its two bars
    sidecar = _sidecar(placed.file_path)
    assert sidecar["mode"] == "loop" and sidecar["prompt"] == "warm pads"
    assert sidecar["options"]["negative"] == "drums" and "winner" in sidecar["loop"]
    assert any("/musicgen/loop 'warm pads -- no drums'" in line for line in session.requests())


def test_mg_fill_between_two_audio_clips_replaces_the_midi_clip(osc_server, tiny_bridge, live, make_clip):  # noqa: F811
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    keys = _midi_track(song)
    audio = song.create_audio_track()
    first = audio.t_put_audio(str(make_clip(seconds=2.0, rate=44100, channels=2, name="a.wav")), 0.0)
    second = audio.t_put_audio(str(make_clip(seconds=2.0, rate=44100, channels=2, name="b.wav")), 8.0)
    for clip in (first, second):
        placing.pin_to_bars(clip, 4.0, 2.0)
    gap = keys.create_midi_clip(4.0, 4.0)
    session = live(song, server.port)
    gap.name = "mg fill: glue -- no vocals"
    session.tick_until(lambda: gap not in keys.arrangement_clips, what="the fill clip replaced")
    [fill] = [c for c in audio.arrangement_clips if c not in (first, second)]
    assert fill.start_time == 4.0
    info = sf.info(fill.file_path)
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 2 * 44100)  # the first clip's rate and layout
    _pinned(fill, 4.0, fill.file_path)
    sidecar = _sidecar(fill.file_path)
    assert sidecar["mode"] == "infill" and sidecar["options"]["negative"] == "vocals"
    assert sidecar["infill"]["before"]["path"] == first.file_path and sidecar["infill"]["after"]["path"] == second.file_path
    assert any("between its clips" in m for m in session.c_instance.messages)


def test_mg_fill_without_two_clips_around_it_says_what_it_needs(osc_server, tiny_bridge, live, make_clip):  # noqa: F811
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    keys = _midi_track(song)
    audio = song.create_audio_track()
    audio.t_put_audio(str(make_clip(seconds=2.0, name="a.wav")), 0.0)
    gap = keys.create_midi_clip(4.0, 4.0)
    slot_clip = keys.clip_slots[0].create_clip(4.0)
    session = live(song, server.port)
    gap.name = "mg fill: glue"
    slot_clip.name = "mg fill: glue"
    session.tick_until(lambda: gap.name.endswith("[bad_args]") and slot_clip.name.endswith("[bad_args]"))
    assert any("needs two audio clips in the Arrangement" in m for m in session.c_instance.messages)
    assert any("works in the Arrangement" in m for m in session.c_instance.messages)
    assert gap in keys.arrangement_clips
