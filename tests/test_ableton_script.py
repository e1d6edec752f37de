"""The Ableton Live Remote Script (daw_scripts/ableton/MusicGenBridge) driven with a fake Live
(tests/ableton/fake_live.py) and the real daemon on tiny-random over real UDP, ticked by hand as
Live's display timer would: each clip-name kind puts a bar-exact file in the right place; a bridge
that is down, a refused request and a Live without create_audio_clip each say what to do; no tick
blocks.
"""

from __future__ import annotations

import importlib
import json
import socket
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from ableton import fake_live
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import ArgValue, OscMessageBuilder

from bridge.app.bridge import Bridge
from bridge.config import Config
from bridge.tempo import bars_to_samples

SCRIPT_PARENT = Path(__file__).resolve().parent.parent / "daw_scripts" / "ableton"
fake_live.install()
sys.path.insert(0, str(SCRIPT_PARENT))
script = importlib.import_module("MusicGenBridge")
osc = importlib.import_module("MusicGenBridge.osc")
names = importlib.import_module("MusicGenBridge.names")
placing = importlib.import_module("MusicGenBridge.placing")
settings_module = importlib.import_module("MusicGenBridge.settings")
surface_module = importlib.import_module("MusicGenBridge.surface")

# Live ticks every ~100 ms; the script's ticks must be far shorter. Measured as the ticking thread's own
# CPU time, so the in-process daemon's worker holding the GIL, or a busy neighbour, does not count: only
# what the script itself does in a tick. That it never waits on I/O is the non-blocking socket (tested).
# Generous: nearly every tick under 20 ms, none over 100 ms.
TYPICAL_TICK, MAX_TICK = 0.02, 0.1


class LiveSession:
    """A fake Live with the script loaded, ticked by hand; it keeps how long each tick took."""

    def __init__(self, song: fake_live.Song) -> None:
        self.song = song
        self.c_instance = fake_live.CInstance(song)
        self.surface = script.create_instance(self.c_instance)
        self.ticks: list[float] = []

    def tick(self) -> None:
        started = time.thread_time()
        self.surface.update_display()
        self.ticks.append(time.thread_time() - started)

    def tick_until(self, condition, timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            if condition():
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what or condition} within {timeout} s; status bar: "
                                     f"{self.c_instance.messages[-8:]}")
            time.sleep(0.01)

    def requests(self) -> list[str]:
        return [line for line in self.c_instance.log if "MusicGenBridge: request " in line]

    def close(self) -> None:
        self.surface.disconnect()


@pytest.fixture
def live(monkeypatch, tmp_path):
    """``live(song, port)``: the script loaded into ``song``, talking to the bridge at ``port``."""
    monkeypatch.setattr(surface_module, "HERE", str(tmp_path))  # no settings.json from the checkout
    monkeypatch.setenv("MUSICGEN_BRIDGE_PING_SECONDS", "0.2")
    opened: list[LiveSession] = []

    def start(song: fake_live.Song, port: int, **env: str) -> LiveSession:
        monkeypatch.setenv("MUSICGEN_BRIDGE_PORT", str(port))
        for key, value in env.items():
            monkeypatch.setenv(f"MUSICGEN_BRIDGE_{key.upper()}", value)
        session = LiveSession(song)
        link = session.surface.controller.link
        assert link is not None and link.sock.gettimeout() == 0.0  # non-blocking: a tick never waits on the bridge
        opened.append(session)
        return session

    yield start
    for session in opened:
        session.close()
        ticks = sorted(session.ticks)
        assert ticks[-1] < MAX_TICK, f"a tick took {ticks[-1] * 1000:.1f} ms"
        assert ticks[int(0.95 * (len(ticks) - 1))] < TYPICAL_TICK, f"ticks took {ticks[len(ticks) // 2:]}"


def _midi_track(song, name="Keys", index=None):
    track = song.create_midi_track(index)
    track.name = name
    return track


def _pinned(clip, beats: float, path: str) -> None:
    """The placed clip spans exactly ``beats``: warped, looped and pinned at both ends of its file."""
    info = sf.info(path)
    assert clip.warping and clip.looping
    assert (clip.loop_start, clip.loop_end, clip.start_marker, clip.end_marker) == (0.0, beats, 0.0, beats)
    assert [(m.beat_time, m.sample_time) for m in clip.warp_markers] == [(0.0, 0.0), (beats, info.frames / info.samplerate)]


def _done(clip):
    return clip.name.endswith("[done]")


def _state(clip, tag):
    return lambda: clip.name.endswith(f"[{tag}]")


# -- the OSC codec, the grammar and the tempo maths ----------------------------------------------------


def test_script_osc_is_read_by_python_osc_and_reads_it():
    data = osc.encode_message("/musicgen/generate", ["id-1", "dusty lofi keys ü", 0.0, "bars", 8, "bpm", 92.5,
                                                     "", -7, 2**40, True, False, b"\x01\x02\x03"])
    message = OscMessage(data)
    assert message.address == "/musicgen/generate"
    assert message.params == ["id-1", "dusty lofi keys ü", 0.0, "bars", 8, "bpm", 92.5, "", -7, 2**40, True, False,
                              b"\x01\x02\x03"]
    builder = OscMessageBuilder("/musicgen/done")
    values: list[tuple[ArgValue, str]] = [("/musicgen/generate", "s"), ("job-7", "s"), ("/tmp/a b.wav", "s"), (4.25, "f"),
                                          (3, "i"), (-(2**40), "h"), (0.1, "d"), (True, "T"), (False, "F"),
                                          (b"\x01\x02\x03", "b"), ("", "s"), (None, "N")]
    for value, kind in values:
        builder.add_arg(value, kind)
    assert osc.decode_message(builder.build().dgram) == ("/musicgen/done", [
        "/musicgen/generate", "job-7", "/tmp/a b.wav", 4.25, 3, -(2**40), 0.1, True, False, b"\x01\x02\x03", "", None])


@pytest.mark.parametrize("packet", [
    b"#bundle\x00" + bytes(8),  # a bundle: the bridge never sends one
    b"/musicgen/done\x00\x00,i\x00\x00\x00\x01",  # an int cut short
    b"/musicgen/done\x00\x00,s\x00\x00abc",  # a string without its end
    b"musicgen\x00\x00\x00\x00",  # no leading slash
])
def test_script_refuses_what_is_not_an_osc_message(packet):
    with pytest.raises(osc.OscError):
        osc.decode_message(packet)


@pytest.mark.parametrize(("name", "expected"), [
    ("mg: dusty lofi keys", ("generate", "dusty lofi keys", None)),
    ("MG:  dusty   lofi keys [42%]", ("generate", "dusty lofi keys", "42%")),
    ("mg+: brighter, more drums [done]", ("continue", "brighter, more drums", "done")),
    ("mg+:", ("continue", "", None)),
    ("mg~: string quartet [bad_args]", ("melody", "string quartet", "bad_args")),
    ("mg jam: lofi groove [jamming]", ("jam", "lofi groove", "jamming")),
    ("mg:", None), ("mg jam:", None), ("Keys 1", None), ("img: x", None), ("", None),
])
def test_clip_name_grammar(name, expected):
    parsed = names.parse_name(name)
    assert (tuple(parsed) if parsed else None) == expected
    if parsed is not None:
        assert names.parse_name(parsed.with_state("done")) == parsed._replace(state="done")


@pytest.mark.parametrize(("num", "denom", "bpm", "beats", "quarters"), [
    (4, 4, 92.0, 4, 4.0), (3, 4, 92.0, 3, 3.0), (6, 8, 92.0, 3, 3.0), (7, 8, 184.0, 7, 3.5), (5, 4, 92.0, 5, 5.0)])
def test_meter_matches_the_reaper_scripts(num, denom, bpm, beats, quarters):
    bar = placing.meter(92.0, num, denom)
    assert bar == (bpm, beats, quarters)
    assert placing.bars_in(quarters * 3, bar) == 3 and placing.bars_in(0.1, bar) == 1
    # the bridge's length for those bars is the length of those quarter notes at the song's tempo
    assert bars_to_samples(3, bar.bpm, 32000, bar.beats_per_bar) == round(3 * quarters * 60 / 92.0 * 32000)


def test_settings_file_beats_the_environment_and_bad_values_are_named(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"port": 9100, "tokn": "x", "answer_timeout": -1}))
    found, problem = settings_module.load_settings(str(tmp_path), {"MUSICGEN_BRIDGE_PORT": "9200",
                                                                   "MUSICGEN_BRIDGE_TOKEN": "s3cret"})
    assert (found.port, found.token, found.answer_timeout, found.host) == (9100, "s3cret", 5.0, "127.0.0.1")
    assert "unknown setting 'tokn'" in problem and "answer_timeout -1 is not usable" in problem
    (tmp_path / "settings.json").write_text("{port: 1")
    found, problem = settings_module.load_settings(str(tmp_path), {"MUSICGEN_BRIDGE_PORT": "9200"})
    assert found.port == 9200 and "could not be read" in problem and "fix it or delete it" in problem


# -- Session view, the real daemon ----------------------------------------------------------------------


@pytest.mark.parametrize(("num", "denom", "tempo", "beats"), [(4, 4, 120.0, 8.0), (7, 8, 92.0, 7.0)])
def test_mg_on_a_midi_clip_lands_bar_exact_on_the_audio_track_to_the_right(
        osc_server, tiny_bridge, live, num, denom, tempo, beats):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=tempo, numerator=num, denominator=denom)
    keys = _midi_track(song)
    _midi_track(song, "Bass")  # not an audio track: the result gets a new track between them
    prompt = keys.clip_slots[1].create_clip(beats)
    session = live(song, server.port)
    prompt.name = "mg: dusty lofi keys"
    session.tick_until(lambda: _done(prompt), what="done")
    assert prompt.name == "mg: dusty lofi keys [done]"
    result_track = song.tracks[1]
    assert result_track.has_audio_input and result_track.name == "dusty lofi keys"
    assert song.tracks[2].name == "Bass"
    placed = result_track.clip_slots[1].t_clip()  # the same scene
    assert placed.name == "dusty lofi keys"
    bar = placing.meter(tempo, num, denom)
    bars = round(beats / bar.quarters_per_bar)
    assert sf.info(placed.file_path).frames == bars_to_samples(bars, bar.bpm, 32000, bar.beats_per_bar)
    assert sf.info(placed.file_path).frames == round(beats * 60 / tempo * 32000)
    _pinned(placed, beats, placed.file_path)
    [request] = session.requests()
    assert f"/musicgen/generate 'dusty lofi keys': {bars} bars at {bar.bpm:g} bpm, {bar.beats_per_bar} beats a bar" in request
    assert any("is on track 'dusty lofi keys', scene 2" in m for m in session.c_instance.messages)


def test_a_done_clip_waits_for_a_rename_and_each_take_is_kept(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    keys = _midi_track(song)
    existing = song.create_audio_track()  # an audio track to the right is used when its slot is free
    prompt = keys.clip_slots[0].create_clip(4.0)
    prompt.name = "mg: keys"  # typed before the script loaded: asked for at load
    session = live(song, server.port)
    session.tick_until(lambda: _done(prompt))
    assert existing.clip_slots[0].has_clip and len(song.tracks) == 2
    song.create_midi_track()  # the set changes: the script looks at every clip again
    for _ in range(5):
        session.tick()
    assert len(session.requests()) == 1  # a done clip is not asked for again
    prompt.name = "mg: keys, more swing [done]"  # the user edits the prompt and keeps the tag
    session.tick_until(lambda: prompt.name == "mg: keys, more swing [done]" and len(session.requests()) == 2
                       and len(song.tracks) == 4)
    assert [t.has_audio_input for t in song.tracks] == [False, True, True, False]
    assert song.tracks[2].clip_slots[0].t_clip().name == "keys, more swing"  # the first take stays where it was
    assert existing.clip_slots[0].t_clip().name == "keys"


def test_mg_plus_continues_an_audio_clip_into_the_next_scene(osc_server, tiny_bridge, live, make_clip):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0, scenes=2)
    drums = song.create_audio_track()
    source_file = make_clip(seconds=2.0, rate=48000, channels=2)
    first = drums.clip_slots[0].t_put_audio(str(source_file))
    placing.pin_to_bars(first, 4.0, 2.0)  # one bar at 120 bpm, as a placed result is
    session = live(song, server.port)
    first.name = "mg+: brighter, more drums"
    session.tick_until(lambda: _done(first))
    placed = drums.clip_slots[1].t_clip()
    info = sf.info(placed.file_path)
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, bars_to_samples(1, 120.0, 48000))
    _pinned(placed, 4.0, placed.file_path)
    assert any(f"from {source_file}" in line for line in session.requests())
    first.name = "mg+: darker"  # the next scene's slot is taken now: a scene is inserted for the new take
    session.tick_until(lambda: _done(first))
    assert len(song.scenes) == 3 and drums.clip_slots[1].t_clip().name == "darker"
    assert drums.clip_slots[2].clip is placed


def test_mg_tilde_follows_the_melody_on_a_melody_model(osc_server, melody_engine, tmp_path, live, make_clip):
    bridge = Bridge(melody_engine, Config(model="tiny-random-melody", output_dir=tmp_path / "out"))
    server, _client = osc_server(bridge=bridge)
    song = fake_live.Song(tempo=100.0)
    vocal = song.create_audio_track()
    tune = vocal.clip_slots[2].t_put_audio(str(make_clip(seconds=2.4, rate=22050, channels=1)))
    placing.pin_to_bars(tune, 4.0, 2.4)
    session = live(song, server.port)
    tune.name = "mg~: string quartet"
    session.tick_until(lambda: _done(tune))
    placed = song.tracks[1].clip_slots[2].t_clip()
    assert sf.info(placed.file_path).frames == bars_to_samples(1, 100.0, 32000)
    _pinned(placed, 4.0, placed.file_path)


def test_a_refused_request_shows_the_bridges_code_and_what_to_do(osc_server, tiny_bridge, live, make_clip):
    server, _client = osc_server(bridge=tiny_bridge)  # tiny-random is not a melody model
    song = fake_live.Song()
    vocal = song.create_audio_track()
    tune = vocal.clip_slots[0].t_put_audio(str(make_clip(seconds=2.0)))
    session = live(song, server.port)
    tune.name = "mg~: string quartet"
    session.tick_until(_state(tune, "bad_args"))
    assert any("bad_args" in m and "musicgen-melody" in m for m in session.c_instance.messages)
    assert any("failed" in line and "bad_args" in line for line in session.c_instance.log)
    keys = _midi_track(song)
    midi = keys.clip_slots[0].create_clip(4.0)
    midi.name = "mg+: go on"  # continuing needs an audio clip: refused by the script, nothing sent
    session.tick_until(_state(midi, "bad_args"))
    assert any("needs an audio clip" in m for m in session.c_instance.messages)
    assert len(session.requests()) == 1


def test_a_bridge_that_is_down_is_named_with_the_way_out(live):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    song = fake_live.Song()
    clip = _midi_track(song).clip_slots[0].create_clip(4.0)
    session = live(song, port, answer_timeout="0.5")
    clip.name = "mg: keys"
    session.tick()
    assert clip.name == "mg: keys [queued]"
    session.tick_until(_state(clip, "no_bridge"), timeout=10)
    message = session.c_instance.messages[-1]
    assert f"did not answer at 127.0.0.1:{port}" in message and "musicgen-bridge serve" in message
    assert any("no answer from the bridge" in m for m in session.c_instance.messages)


def test_the_script_registers_again_when_the_bridge_restarts(tiny_bridge, tmp_path, live):
    from bridge.app.root import App
    from bridge.frontends.osc.server import OscServer

    def serve(port: int) -> OscServer:
        config = Config(model="tiny-random", port=port, reply_port=1, output_dir=tmp_path / "out")
        server = OscServer(App.around(config, tiny_bridge), config)
        server.start()
        return server

    first = serve(0)
    port = first.port
    song = fake_live.Song()
    clip = _midi_track(song).clip_slots[0].create_clip(4.0)
    session = live(song, port)
    session.tick_until(lambda: any("connected" in m for m in session.c_instance.messages), timeout=10)
    assert not any("no answer" in m for m in session.c_instance.messages)
    first.stop(timeout=5)
    clip.name = "mg: keys"  # asked while the bridge is away: sent again when it is back
    session.tick_until(lambda: any("no answer" in m for m in session.c_instance.messages), timeout=10)
    second = serve(port)  # a new bridge knows nothing of the script's reply port
    try:
        session.tick_until(lambda: _done(clip), what="done after the restart")
        assert sum("connected" in m for m in session.c_instance.messages) == 2
        assert len(session.requests()) == 1
    finally:
        second.stop(timeout=5)


# -- Arrangement view -------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["12.3", "12.1"])  # 12.1: create_audio_clip does not return the clip
def test_arrangement_clips_place_at_their_time(osc_server, tiny_bridge, live, version, make_clip):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(version=version, tempo=120.0)
    keys = _midi_track(song)
    prompt = keys.create_midi_clip(8.0, 8.0)
    audio = song.create_audio_track()
    blocker = audio.t_put_audio(str(make_clip(seconds=2.0)), 10.0)  # overlaps bars 3-4: the take goes further right
    loop = audio.t_put_audio(str(make_clip(seconds=2.0, name="loop.wav")), 32.0)
    placing.pin_to_bars(loop, 4.0, 2.0)
    session = live(song, server.port)
    prompt.name = "mg: dusty lofi keys"
    loop.name = "mg+: more"
    session.tick_until(lambda: _done(prompt) and _done(loop))
    new_track = song.tracks[2]
    [placed] = new_track.arrangement_clips
    assert placed.start_time == 8.0 and sf.info(placed.file_path).frames == bars_to_samples(2, 120.0, 32000)
    _pinned(placed, 8.0, placed.file_path)
    after = [c for c in audio.arrangement_clips if c not in (blocker, loop)]
    assert [c.start_time for c in after] == [36.0]  # right after the clip it continues, on its track
    _pinned(after[0], 4.0, after[0].file_path)
    assert any("at bar 3" in m for m in session.c_instance.messages)


# -- Live versions without the API ---------------------------------------------------------------------


def test_a_live_without_create_audio_clip_says_where_the_file_is(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(version="11.2")
    keys = _midi_track(song)
    session_clip = keys.clip_slots[0].create_clip(4.0)
    arrangement_clip = keys.create_midi_clip(0.0, 4.0)
    session = live(song, server.port)
    session_clip.name = "mg: keys"
    arrangement_clip.name = "mg: pads"
    session.tick_until(lambda: _state(session_clip, "not_placed")() and _state(arrangement_clip, "not_placed")())
    shown = [m for m in session.c_instance.messages if "not_placed" in m]
    assert len(shown) == 2
    for message in shown:
        path = message.split("the file is at ")[1].split(";")[0]
        assert Path(path).is_absolute() and sf.info(path).frames == bars_to_samples(1, 120.0, 32000)
        assert "Live 11.3.25 or 12.0.5" in message and "drag it" in message


# -- the jam -----------------------------------------------------------------------------------------


def test_a_jam_clip_starts_and_stops_the_jam_and_the_take_lands_beside_it(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    keys = _midi_track(song)
    jam = keys.clip_slots[3].create_clip(4.0)  # one bar a segment
    session = live(song, server.port, jam_play="0")
    jam.name = "mg jam: lofi groove"
    for _ in range(3):
        session.tick()
    assert session.requests() == []  # a jam starts when its clip is launched, not when it is named
    jam.fire()
    session.tick_until(lambda: any("jam segment 1" in m for m in session.c_instance.messages), what="a segment")
    assert jam.name == "mg jam: lofi groove [jamming]"
    assert "/musicgen/jam/start 'lofi groove': 1 bars at 120 bpm" in session.requests()[0]
    jam.name = "mg jam: dark techno"  # a new prompt while it jams: from the next segment on
    session.tick_until(lambda: jam.name == "mg jam: dark techno [jamming]")
    assert any("the jam takes the prompt 'dark techno'" in m for m in session.c_instance.messages)
    jam.stop()
    session.tick()
    assert jam.name == "mg jam: dark techno [stopping]"
    session.tick_until(lambda: _done(jam), what="the take")
    take = song.tracks[1].clip_slots[3].t_clip()
    frames = sf.info(take.file_path).frames
    assert frames % 64000 == 0 and frames >= 64000  # whole one-bar segments at 120 bpm
    _pinned(take, frames / 64000 * 4.0, take.file_path)


# -- leaving -----------------------------------------------------------------------------------------


def test_disconnect_lets_go_of_every_listener_and_the_reply_port(osc_server, tiny_bridge, monkeypatch, tmp_path):
    server, client = osc_server(bridge=tiny_bridge)
    monkeypatch.setattr(surface_module, "HERE", str(tmp_path))
    monkeypatch.setenv("MUSICGEN_BRIDGE_PORT", str(server.port))
    song = fake_live.Song()
    clip = _midi_track(song).clip_slots[0].create_clip(4.0)
    session = LiveSession(song)
    session.tick()
    assert clip.t_listener_count("name") == 1 and song.t_listener_count("tracks") == 1
    port = session.surface.controller.link.port
    session.close()
    assert clip.t_listener_count("name") == 0 and song.t_listener_count("tracks") == 0
    assert song.tracks[0].clip_slots[0].t_listener_count("has_clip") == 0
    client.register()  # the bridge answered the script's unnotify to this host's ports
    assert client.expect("/musicgen/unnotify").args == (port,)
