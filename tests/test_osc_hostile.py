"""The OSC daemon under attack, on real UDP and TCP sockets: it answers a ping after every attack.

One test (or a few) per finding of issue 18's network side: nested packets, notify loops,
amplification and reflection, idle TCP, oversized replies and clip paths outside --allow-dir.
"""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import OscClient, TcpOscClient, stand_in_app
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.config import Config, load_config
from bridge.errors import BadArgs
from bridge.frontends.cli import build_parser
from bridge.frontends.osc.context import Context
from bridge.frontends.osc.replies import (
    MAX_FAILS_PER_PACKET,
    MAX_REPLIES_PER_PACKET,
    MAX_REPLY,
    StoredPeer,
    fit_reply,
)
from bridge.frontends.osc.routes import TEXT, RouteTable
from bridge.frontends.osc.routes import routes as default_routes
from bridge.frontends.osc.server import OscServer
from bridge.frontends.osc.transport import MAX_BUNDLE_MESSAGES, decode_packet, encode_bundle, encode_message
from bridge.saferepr import safe_repr

TOKEN = "s3cret"


@pytest.fixture
def daemon(fake_bridge, tmp_path):
    """``daemon(host="127.0.0.1", token=None, allow_dirs=None, **server_kwargs) -> (server, client)``."""
    started: list = []

    def start(host="127.0.0.1", token=None, allow_dirs=None, **server_kwargs):
        client = OscClient()
        config = Config(model="fake-model", host=host, port=0, reply_port=client.port, output_dir=tmp_path / "out",
                        token=token, allow_dirs=allow_dirs)
        server = OscServer(stand_in_app(config, fake_bridge), config, **server_kwargs)
        server.start()
        client.server_port = server.port
        started.append((server, client))
        return server, client

    yield start
    for server, client in started:
        server.stop(timeout=5)
        client.close()


def ping(client: OscClient, *extra) -> None:
    client.send("/musicgen/ping", *extra)
    client.expect("/musicgen/pong")


def replies_before_status(client: OscClient, timeout: float = 30.0) -> list:
    """Every reply to what was sent before: a status asked now is answered after all of them (one loop, in order)."""
    client.send("/musicgen/status")
    client.expect("/musicgen/status", timeout=timeout)
    received, client.inbox = client.inbox, []
    return received


def reply_bytes_until_pong(sock: socket.socket, timeout: float = 5.0) -> tuple[int, list]:
    """Bytes and messages that arrive at ``sock`` up to and including the next pong (sent last)."""
    total, messages = 0, []
    sock.settimeout(timeout)
    while True:
        data = sock.recv(65536)
        total += len(data)
        messages += decode_packet(data)
        if messages and getattr(messages[-1], "address", "") == "/musicgen/pong":
            return total, messages


def nested(depth: int) -> bytes:
    """An OSC type tag string of arrays ``depth`` deep (the 2.2 KB packet of issue 18 uses 1,100)."""
    return b"[" * depth + b"]" * depth


def message_with_tags(address: str, tags: bytes, payload: bytes = b"") -> bytes:
    def padded(raw: bytes) -> bytes:
        raw += b"\x00"
        return raw + b"\x00" * (-len(raw) % 4)

    return padded(address.encode()) + padded(b"," + tags) + payload


# -- finding 1: nested packets, and any exception in the loop -------------------------------------


@pytest.mark.parametrize("where", ["job id", "option value"])
def test_a_1100_deep_nested_array_is_refused_and_the_daemon_still_answers(daemon, where):
    server, client = daemon()
    if where == "job id":
        packet = message_with_tags("/musicgen/generate", nested(1100) + b"sf", b"keys\x00\x00\x00\x00" +
                                   struct.pack(">f", 1.0))
    else:
        packet = message_with_tags("/musicgen/generate", b"ssfs" + nested(1100),
                                   b"j1\x00\x00keys\x00\x00\x00\x00" + struct.pack(">f", 1.0) + b"seed\x00\x00\x00\x00")
    assert len(packet) > 2200
    client.send_raw(packet)
    fail = client.expect_fail("bad_args")
    assert fail.args[0] == "/musicgen/generate" and "nested deeper than 8" in fail.args[3]
    assert len(fail.args[3]) < 200
    ping(client)
    assert server.stats.malformed == 1 and server.stats.loop_bugs == 0


def with_arrays(address: str, *args) -> bytes:
    """A message whose list arguments are sent as OSC arrays (python-osc's builder)."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


def test_a_nested_value_the_decoder_allows_is_shown_short_in_the_refusal(daemon):
    _server, client = daemon()
    deep: list = [list(range(500))]
    for _ in range(6):
        deep = [deep]
    client.send_raw(with_arrays("/musicgen/generate", deep, "keys", 1.0))
    fail = client.expect_fail("bad_args")
    assert "wants a job id" in fail.args[3] and len(fail.args[3]) < 400
    client.send_raw(with_arrays("/musicgen/generate", "j2", "keys", 1.0, "seed", deep))
    fail = client.expect_fail("bad_args")
    assert fail.args[1] == "j2" and "option 'seed'" in fail.args[3] and len(fail.args[3]) < 300
    ping(client)


def test_more_than_1024_arguments_are_refused_in_one_short_fail(daemon):
    _server, client = daemon()
    client.send("/musicgen/jam/set", *range(1025))
    fail = client.expect_fail("bad_args")
    assert fail.args[0] == "/musicgen/jam/set" and "more than 1024 arguments" in fail.args[3]
    client.send("/musicgen/generate", "ok", "keys", 0.5, *(["seed", 1] * 300))  # 605 arguments are fine
    assert client.expect("/musicgen/done").args[1] == "ok"
    ping(client)


def test_safe_repr_never_raises_and_stays_short():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    assert safe_repr(deep) == "[[[[...1 items]]]]"
    assert len(safe_repr("x" * 100_000)) < 120 and "(100000 long)" in safe_repr("x" * 100_000)
    assert safe_repr([1, "b", None, {"k": (2.5,)}]) == "[1, 'b', None, {'k': (2.5)}]"
    assert safe_repr(list(range(100))).endswith("... 92 more]")


class _ExplodingHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise RecursionError("the log handler fails too")

    def handle(self, record: logging.LogRecord) -> bool:  # no handleError: let it escape, as logging does
        self.emit(record)
        return True


def test_the_osc_loop_survives_a_route_bug_that_breaks_logging_too(daemon):
    table = RouteTable()
    for route in default_routes:
        table.add(route.address, options=route.options, **dict(route.params))(route.handler)

    @table.add("/musicgen/explode", what=TEXT)
    def explode(ctx: Context, *, what: str) -> None:
        """Raise (a test route)."""
        raise RecursionError(what)

    server, client = daemon(routes=table)
    handler = _ExplodingHandler()
    logger = logging.getLogger("bridge.frontends.osc.server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # refusals are logged at INFO
    try:
        client.send("/musicgen/explode", "boom")
        assert "RecursionError: boom" in client.expect_fail("internal").args[3]  # then its log line raises
        client.send("/musicgen/notify", server.port)
        assert client.expect_fail("bad_args").args[0] == "/musicgen/notify"  # and this refusal's log line too
        ping(client)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert server.stats.loop_bugs == 2
    assert server._thread is not None and server._thread.is_alive()


# -- finding 4: notify loops -------------------------------------------------------------------------


def test_notify_to_the_bridges_own_port_is_refused_and_nothing_loops(daemon):
    server, client = daemon()
    client.send("/musicgen/notify", server.port)
    fail = client.expect_fail("bad_args")
    assert fail.args[0] == "/musicgen/notify" and "own port" in fail.args[3]
    datagrams = server.stats.datagrams
    ping(client)
    client.send("/musicgen/status")
    client.expect("/musicgen/status")
    assert server.stats.datagrams == datagrams + 2  # the two requests, and no replies of its own came back
    assert server.router.targets("127.0.0.1") == [("127.0.0.1", client.port)]


def test_a_journal_requester_naming_the_bridges_own_port_is_not_sent_to(daemon):
    server, client = daemon()
    datagrams = server.stats.datagrams
    server.router.send(StoredPeer("127.0.0.1", (server.port,)), "/musicgen/done", ["/musicgen/generate", "j", "x", 1.0])
    assert client.expect("/musicgen/done").args[1] == "j"  # the requester's host still hears at its reply port
    ping(client)
    assert server.stats.loops_refused == 1 and server.stats.datagrams == datagrams + 1  # only the ping came in


def test_a_reply_port_equal_to_the_bridges_port_is_refused(fake_bridge, tmp_path):
    config = Config(host="127.0.0.1", port=19876, reply_port=19876, output_dir=tmp_path)
    with pytest.raises(BadArgs, match="own port"):
        OscServer(stand_in_app(config, fake_bridge), config)


# -- finding 5: amplification and reflection ---------------------------------------------------------


def test_a_bundle_of_bad_messages_gets_a_few_fails_and_one_summary(daemon):
    _server, client = daemon()
    bundle = encode_bundle([encode_message("/musicgen/no/such", [n]) for n in range(200)]
                           + [encode_message("/musicgen/ping")])
    client.send_raw(bundle)
    _received, messages = reply_bytes_until_pong(client.sock)
    assert [m.args[2] for m in messages if m.address == "/musicgen/fail"] == ["unknown_address"] * \
        MAX_FAILS_PER_PACKET
    client.expect("/musicgen/fail", lambda m: m.args[3].startswith(f"{200 - MAX_FAILS_PER_PACKET} more replies "
                                                                  "to this packet were not sent (192 fail "
                                                                  "unknown_address)"))
    ping(client)


def test_a_bundle_of_many_pings_gets_at_most_the_reply_cap(daemon):
    _server, client = daemon()
    client.send_raw(encode_bundle([encode_message("/musicgen/ping")] * 200))
    received = replies_before_status(client)
    assert len([m for m in received if m.address == "/musicgen/pong"]) == MAX_REPLIES_PER_PACKET
    assert next(m.args[3] for m in received if m.address == "/musicgen/fail").startswith("168 more replies")
    ping(client)


def test_a_huge_bundle_is_refused_whole_with_one_fail(daemon):
    server, client = daemon()
    bundle = encode_bundle([encode_message("/musicgen/x")] * 3000)
    assert len(bundle) < 65507
    client.send_raw(bundle)
    client.send("/musicgen/ping")
    received = replies_before_status(client)
    assert [m.address for m in received] == ["/musicgen/fail", "/musicgen/pong"]
    assert f"more than {MAX_BUNDLE_MESSAGES} messages" in received[0].args[3]
    assert server.stats.messages == 2  # the ping and the status asked after it: nothing of the bundle ran


def test_off_loopback_a_sender_without_the_token_gets_nothing_at_all(daemon):
    server, client = daemon(host="0.0.0.0", token=TOKEN)
    assert server.guarded
    client.send("/musicgen/ping")
    client.send("/musicgen/generate", "x", "keys", 1.0, "token", "wrong")
    client.send_raw(b"\x01garbage")
    client.send_raw(encode_bundle([encode_message("/musicgen/ping")] * 100))
    client.send("/musicgen/notify", client.port)
    client.send("/musicgen/ping", "token", TOKEN)
    received, messages = reply_bytes_until_pong(client.sock)
    assert [m.address for m in messages] == ["/musicgen/pong"]  # the one proven request, nothing before it
    assert received == len(encode_message("/musicgen/pong", [messages[0].args[0]]))
    assert server.stats.unproven == 103 and server.stats.malformed == 1


def test_off_loopback_a_tcp_client_without_the_token_is_dropped_unanswered(daemon):
    server, client = daemon(host="0.0.0.0", token=TOKEN)
    tcp = TcpOscClient(server.port)
    try:
        tcp.send("/musicgen/ping")
        tcp.sock.settimeout(5)
        assert tcp.sock.recv(65536) == b""  # closed, and not one byte came back
    finally:
        tcp.close()
    ping(client, "token", TOKEN)


def test_on_loopback_with_a_token_the_refusal_is_still_answered(daemon):
    server, client = daemon(token=TOKEN)
    assert not server.guarded
    client.send("/musicgen/ping")
    assert client.expect_fail("unauthorized").args[0] == "/musicgen/ping"


def test_reply_bytes_per_request_byte_stay_bounded_under_a_flood(daemon):
    _server, client = daemon()
    sent = 0
    packets = [encode_bundle([encode_message("/musicgen/nope", [n]) for n in range(200)]),
               encode_bundle([encode_message("/musicgen/ping")] * 256),
               message_with_tags("/musicgen/generate", nested(1100)),
               encode_message("/musicgen/" + "x" * 60000)]
    for packet in packets:
        client.send_raw(packet)
        sent += len(packet)
    client.send("/musicgen/ping")
    received, _ = reply_bytes_until_pong(client.sock)
    assert received <= 2 * sent


# -- finding 6: idle TCP --------------------------------------------------------------------------------


def test_a_tcp_connection_that_sends_nothing_is_closed(daemon):
    server, client = daemon(read_timeout=0.3)
    silent = TcpOscClient(server.port)
    try:
        assert silent.closed_by_server(timeout=10)
        assert server.stats.tcp_silent == 1
    finally:
        silent.close()
    ping(client)


def test_tcp_connections_are_capped_per_host_and_a_talking_one_still_works(daemon):
    server, client = daemon(max_per_host=2)
    first, second = TcpOscClient(server.port), TcpOscClient(server.port)
    third = TcpOscClient(server.port)
    try:
        first.send("/musicgen/ping")
        first.expect("/musicgen/pong")  # the first two were accepted before the third was looked at
        assert third.closed_by_server()
        assert server.stats.tcp_refused == 1
        second.send("/musicgen/ping")
        second.expect("/musicgen/pong")
    finally:
        for conn in (first, second, third):
            conn.close()
    ping(client)


# -- finding 7: replies over the UDP limit -------------------------------------------------------------


def _big_reply_routes() -> RouteTable:
    table = RouteTable()
    for route in default_routes:
        table.add(route.address, options=route.options, **dict(route.params))(route.handler)

    @table.add("/musicgen/test/big", what=TEXT)
    def big(ctx: Context, *, what: str) -> None:
        """Answer with a reply over the UDP limit (a test route)."""
        if what == "text":
            ctx.reply("/musicgen/test/big", ["keep", "y" * 70_000])
        else:
            ctx.reply("/musicgen/test/big", list(range(20_000)))

    return table


def test_a_reply_over_the_udp_limit_is_cut_to_fit_with_a_note(daemon):
    server, client = daemon(routes=_big_reply_routes())
    client.send("/musicgen/test/big", "text")
    reply = client.expect("/musicgen/test/big")
    assert reply.args[0] == "keep" and reply.args[1].startswith("yyyy") and "[cut: " in reply.args[1]
    assert len(encode_message("/musicgen/test/big", list(reply.args))) <= MAX_REPLY
    assert server.stats.replies_cut == 1
    ping(client)


def test_a_reply_that_cannot_be_cut_becomes_a_clear_fail(daemon):
    _server, client = daemon(routes=_big_reply_routes())
    client.send("/musicgen/test/big", "numbers")
    fail = client.expect_fail("internal")
    assert fail.args[0] == "/musicgen/test/big" and "over the 65507-byte limit" in fail.args[3]
    ping(client)


def test_fit_reply_cuts_whole_characters():
    packet, cut = fit_reply("/a", ["é" * 40_000], limit=1000)
    assert cut and len(packet) <= 1000
    assert fit_reply("/a", ["short"]) == (encode_message("/a", ["short"]), False)


# -- finding 9: which clips a client may read ------------------------------------------------------------


def _wav(path, seconds: float = 1.0) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(8000 * seconds), dtype=np.float32), 8000)
    return str(path)


def test_clips_outside_allow_dir_all_get_the_same_not_found(daemon, tmp_path):
    allowed = tmp_path / "allowed"
    _server, client = daemon(allow_dirs=(allowed,))
    outside_wav = _wav(tmp_path / "elsewhere" / "real.wav")
    outside_text = tmp_path / "elsewhere" / "notes.wav"
    outside_text.write_text("not audio")
    (allowed / "link.wav").parent.mkdir(parents=True, exist_ok=True)
    (allowed / "link.wav").symlink_to(outside_wav)
    messages = []
    for n, path in enumerate([outside_wav, str(outside_text), str(tmp_path / "elsewhere" / "missing.wav"),
                              "/etc", str(allowed / "link.wav"), str(allowed / ".." / "elsewhere" / "real.wav")]):
        client.send("/musicgen/continue", f"c{n}", path, "more", 1.0)
        fail = client.expect_fail("not_found")
        assert fail.args[1] == f"c{n}"
        messages.append(fail.args[3])
    assert len(set(messages)) == 1 and "real" not in messages[0] and "--allow-dir" in messages[0]
    client.send("/musicgen/continue", "inside", _wav(allowed / "clip.wav"), "more", 1.0)
    assert client.expect("/musicgen/done").args[1] == "inside"
    client.send("/musicgen/play", outside_wav)
    assert client.expect_fail("not_found").args[3] == messages[0].replace("clip:", "the file to play:")
    ping(client)


def test_off_loopback_clips_default_to_the_output_folder(daemon, tmp_path):
    _server, client = daemon(host="0.0.0.0", token=TOKEN)
    client.send("/musicgen/generate", "g", "keys", 0.5, "token", TOKEN)
    result = client.expect("/musicgen/done").args[2]
    client.send("/musicgen/continue", "c", result, "more", 0.5, "token", TOKEN)
    assert client.expect("/musicgen/done").args[1] == "c"
    client.send("/musicgen/continue", "d", _wav(tmp_path / "mine.wav"), "more", 0.5, "token", TOKEN)
    assert "--allow-dir" in client.expect_fail("not_found").args[3]


def test_on_loopback_without_allow_dir_any_clip_is_read_as_before(daemon, tmp_path):
    server, client = daemon()
    assert server.clips.roots is None
    client.send("/musicgen/continue", "c", _wav(tmp_path / "anywhere" / "x.wav"), "more", 0.5)
    assert client.expect("/musicgen/done").args[1] == "c"


def test_allow_dirs_come_from_the_flag_the_environment_and_the_config_file(tmp_path):
    args = build_parser().parse_args(["serve", "--allow-dir", "/a", "--allow-dir", "/b"])
    assert args.allow_dirs == [Path("/a"), Path("/b")]
    assert load_config(environ={"MUSICGEN_BRIDGE_ALLOW_DIRS": "/x:/y"}).allow_dirs == (Path("/x"), Path("/y"))
    file = tmp_path / "c.yaml"
    file.write_text("allow_dirs: [/m, /n]\n")
    assert load_config(file, environ={}).allow_dirs == (Path("/m"), Path("/n"))
