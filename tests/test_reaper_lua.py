"""The REAPER scripts under the real Lua 5.4 interpreter, with a stub `reaper` table (tests/lua/harness.lua).

Three tiers: the Lua OSC codec against python-osc; each script against a fake daemon on a real UDP
socket (this test receives the request, checks its address and arguments, and answers); and the
scripts against the real daemon (OscServer on the tiny-random model), over LuaSocket and through the
`musicgen-bridge send` fallback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import ArgValue, OscMessageBuilder

from bridge.tempo import bars_to_samples

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "daw_scripts" / "reaper"
HARNESS = ROOT / "tests" / "lua" / "harness.lua"
CODEC = ROOT / "tests" / "lua" / "codec.lua"
LUA = shutil.which("lua5.4")
pytestmark = pytest.mark.skipif(LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4 lua-socket)")
NO_LUASOCKET = {"LUA_PATH": "/nonexistent/?.lua", "LUA_CPATH": "/nonexistent/?.so"}


def _lua(*args, env=None, stdin=b"", timeout=120):
    assert LUA is not None  # (the module is skipped without it)
    return subprocess.run([LUA, *map(str, args)], input=stdin, capture_output=True, timeout=timeout, env=env,
                          check=False)


# -- the OSC codec -----------------------------------------------------------------------------------


def test_lua_osc_encoding_is_read_by_python_osc():
    proc = _lua(CODEC, SCRIPTS, "encode")
    message = OscMessage(proc.stdout)
    assert message.address == "/musicgen/generate"
    assert message.params == ["id-1", "dusty lofi keys ü", 0.0, "bars", 8, "bpm", 92.5, "", "abcd", -7,
                              2147483647, True, False]


def test_lua_decodes_python_osc_messages():
    builder = OscMessageBuilder("/musicgen/done")
    values: list[tuple[ArgValue, str]] = [("/musicgen/generate", "s"), ("job-7", "s"), ("/tmp/a b.wav", "s"), (4.25, "f"),
                                          (3, "i"), (-(2**40), "h"), (0.1, "d"), (True, "T"), (False, "F"),
                                          (b"\x01\x02\x03", "b"), ("", "s")]
    for value, kind in values:
        builder.add_arg(value, kind)
    proc = _lua(CODEC, SCRIPTS, "decode", stdin=builder.build().dgram)
    assert proc.stdout.decode().strip() == (
        "/musicgen/done|string=/musicgen/generate|string=job-7|string=/tmp/a b.wav|float=4.25|integer=3"
        "|integer=-1099511627776|float=0.1|boolean=true|boolean=false|string=\x01\x02\x03|string=")


@pytest.mark.parametrize("packet", [
    b"#bundle\x00" + bytes(8),  # a bundle: the bridge never sends one
    b"/musicgen/done\x00\x00,i\x00\x00\x00\x01",  # an int cut short
    b"musicgen\x00\x00\x00\x00",  # no leading slash
])
def test_lua_refuses_what_is_not_an_osc_message(packet):
    assert _lua(CODEC, SCRIPTS, "decode", stdin=packet).stdout.decode().strip() == "NOT OSC"


# -- the scripts against a fake daemon ----------------------------------------------------------------


class FakeDaemon:
    """A UDP peer playing the bridge: the test reads each request and writes each reply."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.reply_port: int | None = None
        self.seen: list[tuple[str, list]] = []

    def expect(self, address: str, timeout: float = 10.0) -> list:
        """The arguments of the next request at ``address``; /musicgen/notify is answered on the way."""
        self.sock.settimeout(timeout)
        while True:
            try:
                data, _peer = self.sock.recvfrom(65536)
            except TimeoutError:
                raise AssertionError(f"no {address} within {timeout} s; seen: {self.seen}") from None
            message = OscMessage(data)
            self.seen.append((message.address, list(message.params)))
            if message.address == "/musicgen/notify":
                self.reply_port = message.params[0]
                self.reply("/musicgen/notify", self.reply_port)
            if message.address == address:
                return list(message.params)

    def reply(self, address: str, *args) -> None:
        builder = OscMessageBuilder(address)
        for arg in args:
            builder.add_arg(arg)
        self.sock.sendto(builder.build().dgram, ("127.0.0.1", self.reply_port))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def daemon():
    fake = FakeDaemon()
    yield fake
    fake.close()


def _env(port, **values):
    env = dict(os.environ, MUSICGEN_BRIDGE_PORT=str(port), HARNESS_SECONDS="60")
    env.update({f"HARNESS_{k.upper()}": str(v) for k, v in values.items()})
    return env


def _start(script, env):
    assert LUA is not None
    return subprocess.Popen([LUA, str(HARNESS), str(SCRIPTS / script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)


def _finish(proc, timeout=60):
    out, err = proc.communicate(timeout=timeout)
    out = out.decode()
    assert proc.returncode == 0, out + err.decode()
    return out


def _inserted(out):
    """(path, position, track) of each file inserted (InsertMedia) or left as an item when the script ended."""
    found = []
    for line in out.splitlines():
        if line.startswith("INSERTED "):
            path, rest = line[len("INSERTED ") :].rsplit(" AT ", 1)
            position, _, track, *_ = rest.split()
            found.append((path, float(position), int(track)))
        elif line.startswith("PROJECT ITEM "):
            item = _item(line[len("PROJECT ") :])
            found.append((item["path"], item["at"], item["track"]))
    return found


def _item(line):
    """An ITEM line: {"id", "path", "at", "len", "track", "play"} ("play": the play cursor then, -1 stopped)."""
    head, rest = line[len("ITEM ") :].split(" ", 1)
    path, rest = rest.rsplit(" AT ", 1)
    words = rest.split()
    fields = dict(zip(words[1::2], words[2::2], strict=False))
    return {"id": int(head), "path": path, "at": float(words[0]), "len": float(fields["LEN"]),
            "track": int(fields["TRACK"]), "play": float(fields.get("PLAY", "-1"))}


def _items(out):
    """Each ITEM line (an item placed), in order."""
    return [_item(line) for line in out.splitlines() if line.startswith("ITEM ")]


@pytest.mark.parametrize(("num", "denom", "bpm", "beats"), [(4, 4, 92.0, 4), (6, 8, 92.0, 3), (7, 8, 184.0, 7),
                                                          (3, 4, 92.0, 3)])
def test_generate_sends_the_project_tempo_and_inserts_at_the_cursor(daemon, tmp_path, num, denom, bpm, beats):
    proc = _start("musicgen_generate.lua", _env(daemon.port, input="dusty, lofi keys,2", bpm=92, num=num,
                                                denom=denom, cursor=12.5, tracks=2, selected_track=2))
    args = daemon.expect("/musicgen/generate")
    job_id = args[0]
    assert job_id.startswith("reaper-gen-")
    assert args[1:] == ["dusty, lofi keys", 0.0, "bpm", bpm, "bars", 2, "beats_per_bar", beats, "stream", 1]
    result = str(tmp_path / "take one.wav")
    daemon.reply("/musicgen/queued", job_id, 0)
    daemon.reply("/musicgen/progress", job_id, 0.5)
    daemon.reply("/musicgen/done", "/musicgen/generate", "someone-else", "/tmp/not-ours.wav", 1.0)
    daemon.reply("/musicgen/done", "/musicgen/generate", job_id, result, 5.2)
    out = _finish(proc)
    assert _inserted(out) == [(result, 12.5, 2)]  # at the edit cursor, on the selected track
    assert "CURSOR 12.500000" in out  # the cursor is left where it was
    assert daemon.expect("/musicgen/unnotify") == [daemon.reply_port]


def test_generate_without_a_track_makes_one_and_cancel_sends_nothing(daemon, tmp_path):
    proc = _start("musicgen_generate.lua", _env(daemon.port, input="keys,1", selected_track=0, tracks=0))
    job_id = daemon.expect("/musicgen/generate")[0]
    daemon.reply("/musicgen/done", "/musicgen/generate", job_id, "/r/a.wav", 2.0)
    out = _finish(proc)
    assert "NEW TRACK 1" in out and _inserted(out) == [("/r/a.wav", 0.0, 1)]
    cancelled = _finish(_start("musicgen_generate.lua", _env(daemon.port)))  # no HARNESS_INPUT: the user cancels
    assert _inserted(cancelled) == [] and "MESSAGE" not in cancelled


def test_generate_shows_the_bridges_failure(daemon):
    proc = _start("musicgen_generate.lua", _env(daemon.port, input="keys,2"))
    job_id = daemon.expect("/musicgen/generate")[0]
    daemon.reply("/musicgen/fail", "/musicgen/generate", job_id, "model_error", "the model failed: try again")
    out = _finish(proc)
    assert "MESSAGE musicgen-bridge: model_error  the model failed: try again" in out and not _inserted(out)


def test_continue_sends_the_item_and_inserts_right_after_it(daemon, tmp_path):
    clip = tmp_path / "my clip.wav"
    proc = _start("musicgen_continue.lua", _env(daemon.port, input=",1", bpm=120, item=clip, item_pos=4.0,
                                                item_len=3.0, tracks=3, selected_track=1, item_track=3))
    args = daemon.expect("/musicgen/continue")
    assert args[1:] == [str(clip), "", 0.0, "bpm", 120.0, "bars", 1, "beats_per_bar", 4, "stream", 1]
    daemon.reply("/musicgen/done", "/musicgen/continue", args[0], "/r/next.wav", 2.0)
    assert _inserted(_finish(proc)) == [("/r/next.wav", 7.0, 3)]  # after the item, on the item's track


@pytest.mark.parametrize("item", [{"item_len": 2.0, "item_source_len": 3.0}, {"item_rate": 1.5}])
def test_continue_refuses_an_item_that_does_not_play_its_file_to_the_end(daemon, tmp_path, item):
    env = _env(daemon.port, input=",1", item=tmp_path / "c.wav", item_pos=1.0, **({"item_len": 3.0} | item))
    out = _finish(_start("musicgen_continue.lua", env))
    assert "glue it first" in out and not _inserted(out)
    assert daemon.seen == []  # nothing was sent


def test_continue_without_a_selected_item_says_what_to_select(daemon):
    out = _finish(_start("musicgen_continue.lua", _env(daemon.port, input=",1")))
    assert "MESSAGE musicgen-bridge: bad_args  select the audio item to continue first" in out


def test_melody_goes_on_a_new_track_below_the_item(daemon, tmp_path):
    tune = tmp_path / "tune.wav"
    proc = _start("musicgen_melody.lua", _env(daemon.port, input="string quartet,2", bpm=100, item=tune,
                                              item_pos=8.0, item_len=4.0, tracks=2, item_track=1))
    args = daemon.expect("/musicgen/melody")
    assert args[1:] == [str(tune), "string quartet", 0.0, "bpm", 100.0, "bars", 2, "beats_per_bar", 4, "stream", 1]
    daemon.reply("/musicgen/done", "/musicgen/melody", args[0], "/r/quartet.wav", 4.8)
    out = _finish(proc)
    assert "NEW TRACK 2" in out and _inserted(out) == [("/r/quartet.wav", 8.0, 2)]


def test_jam_toggle_starts_then_stops_and_inserts_the_take(daemon, tmp_path):
    state = tmp_path / "extstate"
    proc = _start("musicgen_jam_toggle.lua", _env(daemon.port, input="lofi groove,2", bpm=90, cursor=3.0,
                                                  state=state, tracks=2, selected_track=2))
    args = daemon.expect("/musicgen/jam/start")
    jam_id = args[0]
    assert args[1:] == ["lofi groove", "bpm", 90.0, "bars", 2, "beats_per_bar", 4]
    daemon.reply("/musicgen/queued", jam_id, 0)
    daemon.reply("/musicgen/jam/segment", jam_id, 0, "/r/seg0.wav")
    out = _finish(proc)
    assert "TOGGLE 1" in out and not _inserted(out)
    assert f"musicgen_bridge/jam_id={jam_id}" in state.read_text()

    proc = _start("musicgen_jam_toggle.lua", _env(daemon.port, cursor=20.0, state=state, tracks=2, selected_track=1))
    assert daemon.expect("/musicgen/jam/stop") == []
    daemon.reply("/musicgen/done", "/musicgen/jam/start", jam_id, "/r/take.wav", 42.0)
    out = _finish(proc)
    assert "TOGGLE 0" in out
    assert _inserted(out) == [("/r/take.wav", 3.0, 2)]  # where and on the track the jam started
    assert "jam_id" not in state.read_text() and f"musicgen_bridge/last_job={jam_id}" in state.read_text()


def test_jam_that_fails_at_once_leaves_nothing_behind(daemon, tmp_path):
    state = tmp_path / "extstate"
    proc = _start("musicgen_jam_toggle.lua", _env(daemon.port, input="groove,4", state=state))
    jam_id = daemon.expect("/musicgen/jam/start")[0]
    daemon.reply("/musicgen/queued", jam_id, 0)
    daemon.reply("/musicgen/fail", "/musicgen/jam/start", jam_id, "no_audio_device", "no output device")
    out = _finish(proc)
    assert "MESSAGE musicgen-bridge: no_audio_device" in out and out.index("TOGGLE 1") < out.index("TOGGLE 0")
    assert "jam_id" not in state.read_text()


def test_import_last_asks_the_bridge_how_the_last_job_ended(daemon, tmp_path):
    state = tmp_path / "extstate"
    proc = _start("musicgen_generate.lua", _env(daemon.port, input="keys,1", state=state))
    job_id = daemon.expect("/musicgen/generate")[0]
    daemon.reply("/musicgen/done", "/musicgen/generate", job_id, "/r/first.wav", 2.0)
    _finish(proc)

    proc = _start("musicgen_import_last.lua", _env(daemon.port, state=state, cursor=30.0, tracks=1))
    assert daemon.expect("/musicgen/job") == [job_id]
    daemon.reply("/musicgen/job", job_id, "done", "/musicgen/generate", "/r/first.wav", "/r/second.wav")
    out = _finish(proc)
    assert _inserted(out) == [("/r/first.wav", 30.0, 1), ("/r/second.wav", 30.0, 2)]  # variations on new tracks

    proc = _start("musicgen_import_last.lua", _env(daemon.port, state=state))
    daemon.expect("/musicgen/job")
    daemon.reply("/musicgen/job", job_id, "running", "/musicgen/generate")
    assert "MESSAGE musicgen-bridge: busy  the last job" in _finish(proc)


def test_import_last_without_the_bridge_uses_the_remembered_file(tmp_path, unused_udp_port, make_clip):
    state = tmp_path / "extstate"
    clip = make_clip(seconds=0.5)
    state.write_text(f"musicgen_bridge/last_job=gone\nmusicgen_bridge/last_paths={clip}\n", encoding="utf-8")
    env = _env(unused_udp_port, state=state, cursor=1.5)
    env["MUSICGEN_BRIDGE_TIMEOUT"] = "1"
    assert _inserted(_finish(_start("musicgen_import_last.lua", env))) == [(str(clip), 1.5, 1)]
    nothing = _finish(_start("musicgen_import_last.lua", _env(unused_udp_port, state=tmp_path / "empty")))
    assert "MESSAGE musicgen-bridge: not_found  nothing was made from REAPER yet" in nothing


# -- the scripts against the real daemon --------------------------------------------------------------


@pytest.fixture
def unused_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_generate_script_inserts_the_bar_exact_result(osc_server, tiny_bridge, tmp_path):
    server, _client = osc_server(bridge=tiny_bridge)
    state = tmp_path / "extstate"
    out = _finish(_start("musicgen_generate.lua", _env(server.port, input="dusty lofi keys,2", bpm=92, cursor=12.5,
                                                      state=state)))
    [(path, at, _track)] = _inserted(out)
    frames = bars_to_samples(2, 92.0, 32000)
    assert at == 12.5 and sf.info(path).frames == frames
    *chunks, final = _items(out)
    assert chunks, "the result streamed in chunks"
    position = 12.5
    for chunk in chunks:  # each chunk item logged end to end, then removed
        assert chunk["at"] == pytest.approx(position, abs=1e-9) and f"DELETED ITEM {chunk['id']}" in out
        position += chunk["len"]
    assert position == pytest.approx(12.5 + frames / 32000, abs=1e-9)
    assert (final["path"], final["at"]) == (path, 12.5) and round(final["len"] * 32000, 6) == frames  # to the sample
    again = _finish(_start("musicgen_import_last.lua", _env(server.port, state=state, cursor=40.0)))
    assert _inserted(again) == [(path, 40.0, 1)]  # /musicgen/job on the real daemon


def test_continue_script_inserts_a_sample_aligned_continuation(osc_server, tiny_bridge, make_clip):
    server, _client = osc_server(bridge=tiny_bridge)
    clip = make_clip(seconds=3.0, rate=48000, channels=2)
    env = _env(server.port, input=",1", bpm=120, item=clip, item_pos=4.0, item_len=3.0)
    [(path, at, _track)] = _inserted(_finish(_start("musicgen_continue.lua", env)))
    assert at == 7.0  # right after the item
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.frames) == (48000, 2, 96000)  # one bar at 120 bpm, the clip's format


def test_script_shows_the_bridges_error(osc_server, tiny_bridge):
    server, _client = osc_server(bridge=tiny_bridge)
    out = _finish(_start("musicgen_generate.lua", _env(server.port, input="keys,600", bpm=120)))
    assert "MESSAGE musicgen-bridge: bad_args" in out and "bars 600 is out of range" in out


def test_script_without_a_daemon_says_so(unused_udp_port):
    env = _env(unused_udp_port, input="keys,2", bpm=120)
    env["MUSICGEN_BRIDGE_TIMEOUT"] = "1"
    out = _finish(_start("musicgen_generate.lua", env))
    assert "MESSAGE musicgen-bridge: timeout" in out and "musicgen-bridge serve" in out


def test_without_luasocket_the_scripts_use_the_send_command(osc_server, tiny_bridge, tmp_path):
    server, _client = osc_server(bridge=tiny_bridge)
    state = tmp_path / "extstate"
    env = _env(server.port, input="dusty lofi keys,1", bpm=120, state=state) | NO_LUASOCKET
    out = _finish(_start("musicgen_generate.lua", env))
    [(path, _at, _track)] = _inserted(out)
    assert sf.info(path).frames == bars_to_samples(1, 120.0, 32000)
    env = _env(server.port, state=state, cursor=2.0) | NO_LUASOCKET
    assert _inserted(_finish(_start("musicgen_import_last.lua", env))) == [(path, 2.0, 1)]
    env = _env(server.port, input="keys,0", bpm=120) | NO_LUASOCKET
    assert "MESSAGE musicgen-bridge: bad_args" in _finish(_start("musicgen_generate.lua", env))


# -- the ReaPack index ----------------------------------------------------------------------------------

INDEX_BASE = "https://raw.githubusercontent.com/OWNER/musicgen-bridge/main/daw_scripts/reaper"


def test_reapack_index_lists_every_script_with_the_library_and_is_up_to_date():
    import re
    import xml.etree.ElementTree as ET

    index = ET.parse(SCRIPTS / "index.xml").getroot()
    [package] = index.iter("reapack")
    [version] = package.iter("version")
    sources = {s.get("file"): (s.get("main"), s.text) for s in version.iter("source")}
    not_actions = {p.name for p in SCRIPTS.glob("*.lua") if "-- @noindex" in p.read_text(encoding="utf-8")}
    actions = {p.name for p in SCRIPTS.glob("*.lua")} - not_actions
    assert {f for f, (main, _url) in sources.items() if main == "main"} == actions
    for library in not_actions - {"make_reapack_index.lua"}:  # installed, not actions
        assert sources[library] == (None, f"{INDEX_BASE}/{library}")
    for script in actions:
        header = (SCRIPTS / script).read_text(encoding="utf-8")
        assert re.search(rf"^-- @version {re.escape(version.attrib['name'])}$", header, re.M), script
        assert re.search(r"^-- @description MusicGen: ", header, re.M), script
    generated = _lua(SCRIPTS / "make_reapack_index.lua", INDEX_BASE)
    assert generated.returncode == 0, generated.stderr.decode()
    assert generated.stdout.decode() == (SCRIPTS / "index.xml").read_text(encoding="utf-8"), \
        "index.xml is stale: run lua5.4 daw_scripts/reaper/make_reapack_index.lua URL > daw_scripts/reaper/index.xml"


@pytest.mark.parametrize("transport", ["luasocket", "command"])
def test_scripts_send_the_shared_token(osc_server, tiny_bridge, transport):
    server, _client = osc_server(bridge=tiny_bridge, token="s3cret")
    env = _env(server.port, input="keys,1", bpm=120)
    env.update(MUSICGEN_BRIDGE_TRANSPORT=transport, MUSICGEN_BRIDGE_TIMEOUT="2")
    refused = _finish(_start("musicgen_generate.lua", env))  # refused replies go to the daemon's reply port only
    assert "MESSAGE musicgen-bridge: timeout" in refused and "token" in refused and not _inserted(refused)
    env.update(MUSICGEN_BRIDGE_TOKEN="s3cret", MUSICGEN_BRIDGE_TIMEOUT="60")
    [(path, _at, _track)] = _inserted(_finish(_start("musicgen_generate.lua", env)))
    assert sf.info(path).frames == bars_to_samples(1, 120.0, 32000)


# -- the settings action ----------------------------------------------------------------------------------


def test_settings_dialog_is_what_the_next_action_uses(daemon, tmp_path, unused_udp_port):
    state = tmp_path / "extstate"
    answer = f"127.0.0.1|{daemon.port}|{unused_udp_port}|/opt/mgb/bin/musicgen-bridge|s3cret"
    out = _finish(_start("musicgen_settings.lua", _env(1, input=answer, state=state)))
    assert "settings saved" in out and "Token (empty: none): set" in out and "s3cret" not in out
    saved = state.read_text()
    assert f"musicgen_bridge/port={daemon.port}" in saved and "musicgen_bridge/token=s3cret" in saved
    assert "musicgen_bridge/command=/opt/mgb/bin/musicgen-bridge" in saved and "musicgen_bridge/host" not in saved
    proc = _start("musicgen_generate.lua", _env(1, input="keys,1", state=state))  # port 1 in the environment: unused
    args = daemon.expect("/musicgen/generate")
    assert args[-2:] == ["token", "s3cret"] and daemon.reply_port == unused_udp_port  # replies at the reply port
    daemon.reply("/musicgen/done", "/musicgen/generate", args[0], "/r/a.wav", 2.0)
    assert _inserted(_finish(proc)) == [("/r/a.wav", 0.0, 1)]


@pytest.mark.parametrize(("answer", "said"), [("127.0.0.1|abc|0||", "the bridge's OSC port must be a whole number"),
                                              ("127.0.0.1|9000|70000||", "the reply port must be a whole number"),
                                              ("127.0.0.1|9000", "the dialog gave 2 fields, not 5")])
def test_settings_dialog_refuses_bad_values_and_changes_nothing(tmp_path, answer, said):
    state = tmp_path / "extstate"
    state.write_text("musicgen_bridge/port=9100\n", encoding="utf-8")
    out = _finish(_start("musicgen_settings.lua", _env(1, input=answer, state=state)))
    assert f"MESSAGE musicgen-bridge: bad_args  {said}" in out
    assert state.read_text() == "musicgen_bridge/port=9100\n"
