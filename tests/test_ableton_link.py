"""The Live script's `mg jam:` asks for `sync link` (and no bpm) when the bridge runs with Link and Live's Link is on."""

from __future__ import annotations

import pytest
from ableton import fake_live
from test_ableton_script import _midi_track, live  # noqa: F401  (the fixture, and the track helper)

from bridge.app.link import LinkState


class InLink:
    """What the bridge's Link session answers for /musicgen/link: in a session with the DAW."""

    def state(self) -> LinkState:
        return LinkState(enabled=True, peers=1, tempo=120.0, beat=2.0, playing=True)


@pytest.mark.parametrize("live_link", [True, False])
def test_mg_jam_asks_for_sync_link_when_the_bridge_and_live_are_in_link(osc_server, fake_bridge, live,  # noqa: F811
                                                                        live_link):
    asked: list[dict] = []
    make = fake_bridge.make_request

    def recording(mode, prompt, seconds, clip, options):
        asked.append({"mode": mode, **options})
        return make(mode, prompt, seconds, clip, options)

    fake_bridge.make_request = recording
    server, _client = osc_server(link=InLink())
    song = fake_live.Song(tempo=120.0)
    song.is_ableton_link_enabled = live_link
    keys = _midi_track(song)
    jam = keys.clip_slots[3].create_clip(4.0)
    session = live(song, server.port, jam_play="0")
    jam.name = "mg jam: lofi groove"
    session.tick_until(lambda: session.surface.controller._bridge_in_link, what="the bridge's Link state")
    jam.fire()
    session.tick_until(lambda: asked, what="the jam request")
    assert asked[0]["mode"] == "jam" and asked[0]["bars"] == 1
    if live_link:
        assert asked[0]["sync"] == "link" and "bpm" not in asked[0]  # the session sets the tempo
    else:  # Live's Link is off: the bridge's session is not Live's, so the jam takes Live's tempo
        assert asked[0]["bpm"] == 120.0 and "sync" not in asked[0]


def test_mg_jam_sends_its_bpm_when_the_bridge_is_not_in_link(osc_server, fake_bridge, live):  # noqa: F811
    asked: list[dict] = []
    make = fake_bridge.make_request

    def recording(mode, prompt, seconds, clip, options):
        asked.append(dict(options))
        return make(mode, prompt, seconds, clip, options)

    fake_bridge.make_request = recording
    server, _client = osc_server()
    song = fake_live.Song(tempo=120.0)
    keys = _midi_track(song)
    jam = keys.clip_slots[3].create_clip(4.0)
    session = live(song, server.port, jam_play="0")
    jam.name = "mg jam: lofi groove"
    session.tick_until(lambda: session.surface.controller._connected is True, what="the connection")
    for _ in range(5):
        session.tick()
    jam.fire()
    session.tick_until(lambda: asked, what="the jam request")
    assert asked[0]["bpm"] == 120.0 and "sync" not in asked[0]
    assert session.surface.controller._bridge_in_link is False
