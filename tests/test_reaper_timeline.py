"""REAPER's timeline under the stand-in (tests/lua/harness.lua with tests/lua/timeline.lua): streamed
results land as items while they are made and are replaced by the final file; the jam's timeline mode
writes segments on consecutive bars ahead of an advancing play cursor, never under it, against a fake
daemon on a real UDP socket and the real daemon on tiny-random.
"""

from __future__ import annotations

import itertools
import queue
import threading

import pytest
import soundfile as sf
from test_reaper_lua import LUA, FakeDaemon, _env, _finish, _inserted, _items, _start

pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4 lua-socket)")


@pytest.fixture
def daemon():
    fake = FakeDaemon()
    yield fake
    fake.close()


# -- streaming onto the timeline (fake daemon) ----------------------------------------------------------


def _chunks(make_clip, seconds=(1.0, 0.5)):
    """Chunk files of these lengths at 32 kHz, and (start, path) for each as the bridge announces them."""
    found, start = [], 0.0
    for i, length in enumerate(seconds):
        found.append((start, str(make_clip(seconds=length, rate=32000, channels=1, name=f"{i:04d}.wav"))))
        start += length
    return found


def test_streamed_chunks_land_end_to_end_then_the_final_file_replaces_them(daemon, make_clip):
    proc = _start("musicgen_generate.lua", _env(daemon.port, input="keys,1", cursor=12.5, tracks=2, selected_track=2))
    args = daemon.expect("/musicgen/generate")
    job_id = args[0]
    assert args[-2:] == ["stream", 1]
    chunks = _chunks(make_clip)
    for index, (start, path) in enumerate(chunks):
        daemon.reply("/musicgen/chunk", job_id, index, path, start, 1.0)
    final = str(make_clip(seconds=1.5, rate=32000, channels=1, name="final.wav"))
    daemon.reply("/musicgen/done", "/musicgen/generate", job_id, final, 1.5)
    out = _finish(proc)
    first, second, placed = _items(out)
    assert (first["path"], first["at"], first["len"], first["track"]) == (chunks[0][1], 12.5, 1.0, 2)
    assert (second["path"], second["at"], second["len"]) == (chunks[1][1], 13.5, 0.5)  # end to end
    assert (placed["path"], placed["at"], placed["len"], placed["track"]) == (final, 12.5, 1.5, 2)
    lines = out.splitlines()
    swap = lines[lines.index(f"DELETED ITEM {first['id']}") :]
    assert swap[:4] == [f"DELETED ITEM {first['id']}", f"DELETED ITEM {second['id']}",
                        f"ITEM {placed['id']} {final} AT 12.500000000 LEN 1.500000000 TRACK 2 PLAY -1.000000",
                        "UNDO MusicGen: insert final.wav"]  # one undo step
    assert _inserted(out) == [(final, 12.5, 2)]  # nothing else is left


def test_a_stream_that_fails_or_is_cancelled_leaves_the_project_as_it_was(daemon, make_clip, tmp_path):
    state = tmp_path / "extstate"
    proc = _start("musicgen_continue.lua", _env(daemon.port, input=",1", item=make_clip(seconds=2.0), item_pos=4.0,
                                                item_len=2.0, state=state))
    job_id = daemon.expect("/musicgen/continue")[0]
    (start, path), = _chunks(make_clip, (1.0,))
    daemon.reply("/musicgen/chunk", job_id, 0, path, start, 1.0)
    cancel = _finish(_start("musicgen_cancel.lua", _env(daemon.port, state=state)))  # the cancel action
    assert daemon.expect("/musicgen/cancel") == [job_id] and "MESSAGE" not in cancel
    daemon.reply("/musicgen/fail", "/musicgen/continue", job_id, "cancelled", "the job was cancelled")
    out = _finish(proc)
    [chunk] = _items(out)
    assert chunk["at"] == 6.0 and f"DELETED ITEM {chunk['id']}" in out and _inserted(out) == []
    assert "MESSAGE musicgen-bridge: cancelled  the job was cancelled (the streamed items were removed)" in out
    nothing = _finish(_start("musicgen_cancel.lua", _env(daemon.port, state=state)))
    assert "MESSAGE musicgen-bridge: not_found  nothing is streaming" in nothing


def test_a_bridge_that_dies_mid_stream_removes_the_chunks_and_says_why(daemon, make_clip):
    env = _env(daemon.port, input="keys,1")
    env["MUSICGEN_BRIDGE_TIMEOUT"] = "2"  # silence for this long (at most 10 s) means the bridge is gone
    proc = _start("musicgen_generate.lua", env)
    job_id = daemon.expect("/musicgen/generate")[0]
    (start, path), = _chunks(make_clip, (1.0,))
    daemon.reply("/musicgen/chunk", job_id, 0, path, start, 1.0)
    daemon.expect("/musicgen/ping")  # asked whether it is still there; no answer: it died
    out = _finish(proc)
    [chunk] = _items(out)
    assert f"DELETED ITEM {chunk['id']}" in out and _inserted(out) == []
    assert "MESSAGE musicgen-bridge: no_bridge" in out and "stopped answering" in out and "removed" in out


def test_stream_0_inserts_only_when_done(daemon, tmp_path):
    state = tmp_path / "extstate"
    state.write_text("musicgen_bridge/stream=0\n", encoding="utf-8")
    proc = _start("musicgen_generate.lua", _env(daemon.port, input="keys,1", cursor=3.0, state=state))
    args = daemon.expect("/musicgen/generate")
    assert "stream" not in args
    daemon.reply("/musicgen/done", "/musicgen/generate", args[0], "/r/a.wav", 2.0)
    out = _finish(proc)
    assert _inserted(out) == [("/r/a.wav", 3.0, 1)] and not _items(out)


# -- the jam on the timeline --------------------------------------------------------------------------

MARGIN = 2.0  # musicgen_timeline.lua's default: a segment lands at least this far ahead of the play cursor


class Running:
    """A script that keeps running (the jam): its output lines are read as they come."""

    def __init__(self, script, env) -> None:
        self.proc = _start(script, env)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            self._queue.put(raw.decode().rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, condition, timeout=60.0, what=""):
        """Read lines until ``condition(lines)`` holds."""
        while not condition(self.lines):
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"not {what} within {timeout} s: {self.lines[-20:]}") from None
            if line is None:
                raise AssertionError(f"the script ended before {what}: {self.lines[-20:]}")
            self.lines.append(line)

    def finish(self, timeout=60):
        self.proc.wait(timeout=timeout)  # (stdout is the reading thread's alone)
        err = self.proc.stderr.read()
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.lines.append(line)
        out = "\n".join(self.lines)
        assert self.proc.returncode == 0, out + err.decode()
        return out


def _n_items(n):
    return lambda lines: sum(line.startswith("ITEM ") for line in lines) >= n


def _on_the_grid(items, bar=2.0):
    """Every item starts on a bar, at least MARGIN ahead of the play cursor when it was placed, and
    none starts before the one before it ends."""
    for item in items:
        assert item["play"] >= 0, "the project plays"
        assert item["at"] - item["play"] >= MARGIN - 1e-6, f"placed {item['at'] - item['play']:.3f} s ahead: {item}"
        assert abs(item["at"] / bar - round(item["at"] / bar)) < 1e-9, f"not on a bar: {item}"
    for before, after in itertools.pairwise(items):
        assert after["at"] >= before["at"] + before["len"] - 1e-9, f"overlap: {before} {after}"


def test_jam_timeline_places_segments_on_consecutive_bars_and_keeps_them(daemon, make_clip, tmp_path):
    state = tmp_path / "extstate"
    jam = Running("musicgen_jam_toggle.lua", _env(daemon.port, input="lofi groove,1", bpm=120, playing=1,
                                                  play_from=10.0, state=state, tracks=1))
    args = daemon.expect("/musicgen/jam/start")
    jam_id, jam_port = args[0], daemon.reply_port
    assert args[1:] == ["lofi groove", "bpm", 120.0, "bars", 1, "beats_per_bar", 4, "play", 0, "ahead_bars", 2]
    assert type(args[-1]) is int  # an OSC int: the bridge takes a whole number of bars
    daemon.reply("/musicgen/queued", jam_id, 0)
    segment = str(make_clip(seconds=2.0, rate=32000, channels=1, name="segment.wav"))  # one bar at 120 bpm
    for index in range(3):  # with issue 15's 4th argument, the session beat (-1: not synced)
        daemon.reply("/musicgen/jam/segment", jam_id, index, segment, -1.0)
    jam.wait_for(_n_items(3), what="three segments")
    assert "TOGGLE 1" in jam.lines and "NEW TRACK 2" in jam.lines
    first, second, third = _items("\n".join(jam.lines))
    _on_the_grid([first, second, third])
    assert (second["at"] - first["at"], third["at"] - second["at"]) == (2.0, 2.0)  # consecutive bars
    assert first["at"] - first["play"] < MARGIN + 2.0 + 0.5  # the first reachable bar, not later

    changed = _start("musicgen_jam_set.lua", _env(daemon.port, input="dark techno", state=state))
    assert daemon.expect("/musicgen/jam/set") == ["prompt", "dark techno"]
    daemon.reply("/musicgen/jam/set", "prompt", "dark techno", "bars", 1)
    assert "the jam takes the prompt 'dark techno' from its next segment" in _finish(changed)

    stopper = _finish(_start("musicgen_jam_toggle.lua", _env(daemon.port, state=state)))  # the toggle again
    assert "MESSAGE" not in stopper
    assert daemon.expect("/musicgen/jam/stop") == []
    daemon.reply_port = jam_port  # (the jam_set script registered its own port since)
    daemon.reply("/musicgen/jam/segment", jam_id, 3, segment, -1.0)  # the segment being made still lands
    daemon.reply("/musicgen/done", "/musicgen/jam/start", jam_id, "/r/take.wav", 8.0)
    out = jam.finish()
    items = _items(out)
    assert len(items) == 4 and items[3]["at"] == third["at"] + 2.0, out
    kept = [line for line in out.splitlines() if line.startswith("PROJECT ITEM ")]
    assert len(kept) == 4, out
    assert all(line.endswith("NAME MusicGen jam") for line in kept)  # the take stays
    assert "TOGGLE 0" in out and "jam_id" not in state.read_text()


def test_jam_timeline_keeps_its_segments_when_the_bridge_dies(daemon, make_clip, tmp_path):
    env = _env(daemon.port, input="groove,1", bpm=120, playing=1, state=tmp_path / "extstate")
    env["MUSICGEN_BRIDGE_TIMEOUT"] = "2"
    jam = Running("musicgen_jam_toggle.lua", env)
    jam_id = daemon.expect("/musicgen/jam/start")[0]
    segment = str(make_clip(seconds=2.0, rate=32000, channels=1, name="segment.wav"))
    daemon.reply("/musicgen/jam/segment", jam_id, 0, segment)
    daemon.reply("/musicgen/jam/segment", jam_id, 1, segment)
    out = jam.finish()  # no more answers: the bridge is gone
    assert "MESSAGE musicgen-bridge: no_bridge" in out and "the 2 segments placed stay" in out
    assert sum(line.startswith("PROJECT ITEM ") for line in out.splitlines()) == 2 and "DELETED" not in out


def test_jam_timeline_on_the_real_daemon_and_a_new_prompt(osc_server, tiny_bridge, tmp_path):
    server, _client = osc_server(bridge=tiny_bridge)
    state = tmp_path / "extstate"
    jam = Running("musicgen_jam_toggle.lua", _env(server.port, input="lofi groove,1", bpm=120, playing=1,
                                                  state=state))
    jam.wait_for(_n_items(3), what="three segments")
    changed = _finish(_start("musicgen_jam_set.lua", _env(server.port, input="dark techno", state=state)))
    assert "the jam takes the prompt 'dark techno' from its next segment" in changed  # the bridge's own answer
    _finish(_start("musicgen_jam_toggle.lua", _env(server.port, state=state)))
    out = jam.finish()
    items = _items(out)
    _on_the_grid(items)
    assert [round(b["at"] - a["at"], 9) for a, b in itertools.pairwise(items)] == [2.0] * (len(items) - 1)
    for item in items:  # each segment is one bar at 120 bpm, to the sample
        assert round(item["len"] * 32000, 6) == 64000 == sf.info(item["path"]).frames
    assert sum(line.startswith("PROJECT ITEM ") for line in out.splitlines()) == len(items)
    assert "the jam stopped" in out and "TOGGLE 0" in out


def test_a_play_cursor_faster_than_the_jam_never_gets_a_segment_under_it(osc_server, tiny_bridge, tmp_path):
    server, _client = osc_server(bridge=tiny_bridge)
    state = tmp_path / "extstate"
    # the stand-in's play cursor runs 200x: no machine makes a bar of audio in 10 ms, so it overtakes the jam
    jam = Running("musicgen_jam_toggle.lua", _env(server.port, input="groove,1", bpm=120, playing=1, play_speed=200,
                                                  state=state))
    jam.wait_for(_n_items(6), what="six segments")
    _finish(_start("musicgen_jam_toggle.lua", _env(server.port, state=state)))
    out = jam.finish()
    _on_the_grid(_items(out))
    assert sum("the play cursor overtook the jam" in line for line in out.splitlines()) == 1  # said once
