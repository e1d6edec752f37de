"""The OSC codec wrapper and the TCP framings, without sockets."""

from __future__ import annotations

import struct

import pytest
from pythonosc.osc_message_builder import OscMessageBuilder

from bridge.frontends.osc.transport import (
    MAX_PACKET,
    BadPacket,
    FrameError,
    FrameReader,
    Message,
    decode_message,
    decode_packet,
    detect_framing,
    encode_bundle,
    encode_message,
    length_encode,
    slip_encode,
)


def raw(address: str, tags: str, payload: bytes = b"") -> bytes:
    def pad(b: bytes) -> bytes:
        b += b"\x00"
        return b + b"\x00" * (-len(b) % 4)

    return pad(address.encode()) + pad(tags.encode()) + payload


def test_round_trip_keeps_types():
    data = encode_message("/musicgen/generate", ["j1", "keys", 4.0, 3, 2**40, True, None])
    message = decode_message(data)
    assert message == Message("/musicgen/generate", ("j1", "keys", 4.0, 3, 2**40, 1, None))


def test_python_osc_builder_output_decodes():
    b = OscMessageBuilder("/a")
    b.add_arg("x")
    b.add_arg(1.5)
    assert decode_message(b.build().dgram) == Message("/a", ("x", 1.5))


def test_bad_utf8_is_a_bad_packet_naming_the_address():
    data = raw("/musicgen/generate", ",s", b"\xff\xfe\x00\x00")
    with pytest.raises(BadPacket) as info:
        decode_message(data)
    assert info.value.address == "/musicgen/generate" and "UTF-8" in info.value.message


def test_unknown_type_tags_are_refused_not_skipped():
    with pytest.raises(BadPacket, match="unsupported argument type"):
        decode_message(raw("/musicgen/ping", ",x", b"\x00\x00\x00\x01"))


def test_symbol_and_char_from_liblo_decode():
    data = raw("/a", ",Sc", b"sym\x00" + struct.pack(">i", ord("z")))
    assert decode_message(data).args == ("sym", "z")


@pytest.mark.parametrize("data", [
    b"", b"garbage!", b"/musicgen/ping", raw("/a", ",i"), raw("/a", ",i", b"\x00\x00\x00\x01\x00\x00\x00\x02"),
    raw("/a", "i"), b"#bundle\x00\x00", raw("/a", ",[i", b"\x00\x00\x00\x01"),
])
def test_garbage_never_raises_anything_but_bad_packet(data):
    items = decode_packet(data)
    assert len(items) == 1 and isinstance(items[0], BadPacket)


def test_bundles_open_recursively_and_keep_good_elements_around_a_bad_one():
    inner = encode_bundle([encode_message("/b", [2])], timetag=(2**32) * 4_000_000_000)  # far future
    bad = raw("/bad", ",s", b"\xff\x00\x00\x00")
    packet = encode_bundle([encode_message("/a", [1]), bad, inner])
    items = decode_packet(packet)
    assert items[0] == Message("/a", (1,))
    assert isinstance(items[1], BadPacket) and items[1].address == "/bad"
    assert items[2] == Message("/b", (2,))


def test_bundle_with_a_lying_size_is_bad():
    packet = b"#bundle\x00" + b"\x00" * 8 + struct.pack(">i", 1000) + encode_message("/a")
    assert isinstance(decode_packet(packet)[-1], BadPacket)


def test_deep_bundles_are_cut_off():
    packet = encode_message("/a")
    for _ in range(20):
        packet = encode_bundle([packet])
    assert isinstance(decode_packet(packet)[0], BadPacket)


def test_packets_over_the_cap_are_bad():
    items = decode_packet(raw("/big", ",s", b"x" * MAX_PACKET))
    assert isinstance(items[0], BadPacket) and items[0].address == "/big"


def test_framing_is_detected_from_the_first_byte():
    assert detect_framing(0xC0) == "slip"
    assert detect_framing(ord("/")) == "slip"
    assert detect_framing(0x00) == "length"


def test_length_frames_split_anywhere_reassemble():
    stream = length_encode(encode_message("/a", [1])) + length_encode(encode_message("/b", ["x"]))
    reader = FrameReader("length")
    out = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
    assert [decode_message(p).address if isinstance(p, bytes) else p for p in out] == ["/a", "/b"]
    assert reader.pending == 0


def test_length_frame_over_the_cap_is_fatal():
    reader = FrameReader("length", max_frame=100)
    (error,) = reader.feed(struct.pack(">I", 101) + b"x" * 10)
    assert isinstance(error, FrameError) and error.fatal


def test_slip_escapes_round_trip_and_oversize_frames_resync():
    packet = encode_message("/a", [b"\xc0\xdb\xc0"])
    assert FrameReader("slip").feed(slip_encode(packet)) == [packet]
    reader = FrameReader("slip", max_frame=64)
    out = reader.feed(slip_encode(b"/" + b"y" * 500) + slip_encode(packet))
    assert isinstance(out[0], FrameError) and not out[0].fatal
    assert out[1] == packet


def test_bad_slip_escape_is_an_error_for_that_frame_only():
    out = FrameReader("slip").feed(b"\xc0/a\xdb\x01\xc0" + slip_encode(encode_message("/b")))
    assert isinstance(out[0], FrameError)
    assert isinstance(out[1], bytes) and decode_message(out[1]).address == "/b"
