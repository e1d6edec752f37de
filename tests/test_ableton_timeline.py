"""The Live script's jam in the Arrangement and the set's key, with the fake Live's transport playing
(``current_song_time`` moving on as the test ticks) against the real daemon on tiny-random over real
UDP: segments land on consecutive bars ahead of the playhead, never under it; stopping the transport or
deleting the clip stops the jam and keeps its segments; a Live without create_audio_clip says so; the
set's key reaches the prompt and the sidecar.
"""

from __future__ import annotations

import itertools
import json
import socket
import time

import pytest
import soundfile as sf
import test_ableton_script as base
from ableton import fake_live
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

live = base.live  # the fixture: the script loaded into a fake Live, talking to a bridge
MARGIN_BEATS = 4.0  # the default 2 s margin at 120 bpm


class Playing:
    """Ticks the script as Live does while the song's clock runs ``speed`` times real time; keeps where
    the playhead was when each arrangement clip appeared."""

    def __init__(self, session: base.LiveSession, speed: float = 1.0) -> None:
        self.session = session
        self.song = session.song
        self.speed = speed
        self.last = time.monotonic()
        self.seen: dict[int, tuple[fake_live.Clip, float]] = {}

    def tick(self) -> None:
        now = time.monotonic()
        self.song.t_advance((now - self.last) * self.speed)  # Live's clock, between two of its ticks
        self.last = now
        playhead = self.song.current_song_time
        self.session.tick()
        for track in self.song.tracks:
            if track.has_audio_input:
                for clip in track.arrangement_clips:
                    self.seen.setdefault(id(clip), (clip, playhead))

    def until(self, condition, timeout=60.0, what=""):
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {timeout} s: {self.session.c_instance.messages[-8:]}")
            self.tick()
            time.sleep(0.01)

    def segments(self) -> list[tuple[fake_live.Clip, float]]:
        return sorted(self.seen.values(), key=lambda pair: pair[0].start_time)


def _ahead_and_on_bars(segments, bar=4.0):
    for clip, playhead in segments:
        assert clip.start_time - playhead >= MARGIN_BEATS - 1e-9, f"{clip.start_time} with the playhead at {playhead}"
        assert clip.start_time % bar == 0.0
    for (a, _), (b, _) in itertools.pairwise(segments):
        assert b.start_time >= a.end_time - 1e-9  # none on top of another


def _jam_clip(song, name="mg jam: lofi groove"):
    keys = base._midi_track(song)
    clip = keys.create_midi_clip(0.0, 4.0)  # one bar a segment
    clip.name = name
    return keys, clip


def test_an_arrangement_jam_writes_consecutive_bars_ahead_of_the_playhead(osc_server, tiny_bridge, live):
    asked: list[dict] = []
    make = tiny_bridge.make_request

    def heard(mode, prompt, seconds, clip, options, clip_after=None):
        asked.append(dict(options))
        return make(mode, prompt, seconds, clip, options, clip_after)

    tiny_bridge.make_request = heard
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    _keys, clip = _jam_clip(song)
    session = live(song, server.port)
    # the song's clock at a quarter of real time: a bar is 8 s of the machine's time, so a busy machine (CI,
    # or this suite beside others) still makes each one before the playhead needs it; falling behind, the
    # jam would skip bars, rightly (the next test), and they would not be consecutive
    play = Playing(session, speed=0.25)
    for _ in range(3):
        play.tick()
    assert session.requests() == []  # it waits for the transport
    song.is_playing = True
    play.until(lambda: len(play.seen) >= 3, what="three segments")
    assert clip.name == "mg jam: lofi groove [jamming]"
    assert "/musicgen/jam/start 'lofi groove': 1 bars at 120 bpm" in session.requests()[0]
    assert asked[0]["play"] is False and asked[0]["ahead_bars"] == 2  # files only, a segment and a bar ahead at most
    clip.name = "mg jam: dark techno"  # from the next segment on
    play.until(lambda: any("the jam takes the prompt 'dark techno'" in m for m in session.c_instance.messages))
    song.is_playing = False  # stopping the transport stops the jam
    play.until(lambda: base._done(clip), what="the jam's end")
    segments = play.segments()
    _ahead_and_on_bars(segments)
    starts = [c.start_time for c, _ in segments]
    assert starts == [starts[0] + 4.0 * i for i in range(len(starts))]  # consecutive bars
    assert starts[0] - segments[0][1] < MARGIN_BEATS + 4.0  # the first bar it could reach
    for placed, _ in segments:
        assert sf.info(placed.file_path).frames == 64000  # one bar at 120 bpm, to the sample
        base._pinned(placed, 4.0, placed.file_path)
    assert {c.name for c, _ in segments[:2]} == {"lofi groove 1", "lofi groove 2"}
    assert any("segments stay in the Arrangement" in m for m in session.c_instance.messages)
    assert len(song.tracks) == 2 and song.tracks[1].has_audio_input  # one audio track to the right


def test_a_playhead_faster_than_the_jam_never_gets_a_segment_under_it(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    _keys, clip = _jam_clip(song)
    session = live(song, server.port)
    play = Playing(session, speed=200.0)  # no machine makes a bar in 10 ms: the playhead overtakes the jam
    song.is_playing = True
    play.until(lambda: len(play.seen) >= 5, what="five segments")
    song.is_playing = False
    play.until(lambda: base._done(clip))
    _ahead_and_on_bars(play.segments())
    assert sum("the playhead overtook the jam" in m for m in session.c_instance.messages) == 1  # said once


def test_deleting_the_jam_clip_stops_the_jam_and_keeps_its_segments(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    song.is_playing = True
    keys, clip = _jam_clip(song)  # named while the Arrangement plays: it starts at once
    session = live(song, server.port)
    play = Playing(session)
    play.until(lambda: len(play.seen) >= 2)
    keys.delete_clip(clip)
    play.until(lambda: session.surface.controller.jobs == [], what="the jam's end")
    assert any("was deleted, so the jam stops" in m for m in session.c_instance.messages)
    assert len(song.tracks[1].arrangement_clips) == len(play.seen) >= 2


def test_a_session_jam_launched_while_the_arrangement_records_writes_into_it(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    song.record_mode = True
    song.is_playing = True
    jam = base._midi_track(song).clip_slots[0].create_clip(4.0)
    session = live(song, server.port, jam_play="1")
    play = Playing(session)
    play.tick()  # the script is loaded and listening
    jam.name = "mg jam: lofi groove"
    jam.fire()
    play.until(lambda: len(play.seen) >= 2)
    # (with jam_play the bridge would play it too and fail here: this bridge has no audio device)
    jam.stop()
    play.until(lambda: base._done(jam))
    _ahead_and_on_bars(play.segments())
    assert not any(slot.has_clip for slot in song.tracks[1].clip_slots)  # no take in the Session


def test_a_live_without_create_audio_clip_says_the_arrangement_jam_cannot_be(osc_server, tiny_bridge, live):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(version="11.2", tempo=120.0)
    _keys, clip = _jam_clip(song)
    session = live(song, server.port)
    song.is_playing = True
    session.tick_until(base._state(clip, "not_placed"))
    assert any("cannot put a file into the Arrangement" in m and "11.3.25" in m for m in session.c_instance.messages)
    assert session.requests() == []


@pytest.mark.parametrize(("name", "env"), [("mg key: dusty keys", {}), ("mg: dusty keys", {"key": "true"})])
def test_the_sets_key_reaches_the_prompt_and_the_sidecar(osc_server, tiny_bridge, live, name, env):
    server, _client = osc_server(bridge=tiny_bridge)
    song = fake_live.Song(tempo=120.0)
    song.root_note, song.scale_name = 9, "Minor"
    clip = base._midi_track(song).clip_slots[0].create_clip(4.0)
    session = live(song, server.port, **env)
    clip.name = name
    session.tick_until(lambda: base._done(clip))
    placed = song.tracks[1].clip_slots[0].t_clip()
    sidecar = json.loads(open(placed.file_path + ".json", encoding="utf-8").read())
    assert sidecar["key"] == "A minor" and sidecar["options"]["key"] == "A minor"
    assert sidecar["prompt"] == "dusty keys" and sidecar["text_sent_to_model"].startswith("dusty keys, in A minor")



def test_a_bridge_stopped_mid_jam_leaves_the_segments_and_says_so(tiny_bridge, tmp_path, live):
    from bridge.app.root import App
    from bridge.config import Config
    from bridge.frontends.osc.server import OscServer

    config = Config(model="tiny-random", port=0, reply_port=1, output_dir=tmp_path / "out")
    server = OscServer(App.around(config, tiny_bridge), config)
    server.start()
    song = fake_live.Song(tempo=120.0)
    _keys, clip = _jam_clip(song)
    session = live(song, server.port)
    play = Playing(session)
    play.tick()
    song.is_playing = True
    try:
        play.until(lambda: len(play.seen) >= 2)
    finally:
        server.stop(timeout=5)  # the bridge shuts down: it cancels the jam and says so
    play.until(base._state(clip, "cancelled"), timeout=20)
    placed = len(song.tracks[1].arrangement_clips)
    assert placed >= 2 and any("is shutting down" in m and f"the jam's {placed} segments stay in the Arrangement" in m
                               for m in session.c_instance.messages)


def test_a_bridge_that_dies_mid_jam_leaves_the_segments_and_says_so(live, make_clip):
    """A bridge that crashes says nothing: a UDP peer plays it, answers until two segments, then falls silent."""
    segment = str(make_clip(seconds=2.0, rate=32000, channels=1, name="segment.wav"))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as bridge:
        bridge.bind(("127.0.0.1", 0))
        bridge.settimeout(10)
        song = fake_live.Song(tempo=120.0)
        _keys, clip = _jam_clip(song)
        session = live(song, bridge.getsockname()[1])
        play = Playing(session)
        play.tick()
        song.is_playing = True
        while True:  # answer as the bridge would until the jam starts
            play.tick()
            data, peer = bridge.recvfrom(65536)
            message = OscMessage(data)
            if message.address in ("/musicgen/notify", "/musicgen/ping"):
                bridge.sendto(OscMessageBuilder("/musicgen/pong").build().dgram, peer)
            if message.address == "/musicgen/jam/start":
                for index in range(2):
                    reply = OscMessageBuilder("/musicgen/jam/segment")
                    for value in (message.params[0], index, segment):
                        reply.add_arg(value)
                    bridge.sendto(reply.build().dgram, peer)
                break
        play.until(lambda: len(play.seen) == 2)
        play.until(lambda: any("no answer from the bridge" in m for m in session.c_instance.messages), timeout=20)
    [said] = [m for m in session.c_instance.messages if "no answer from the bridge" in m]
    assert "the jam's 2 segments stay in the Arrangement" in said
    assert len(song.tracks[1].arrangement_clips) == 2 and clip.name == "mg jam: lofi groove [jamming]"
