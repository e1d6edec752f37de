"""OSC bytes on the wire: packets to messages and back, and the two TCP framings.

python-osc is the codec underneath (``parsing.osc_types`` to read values, ``OscMessageBuilder``
to write), wrapped so that every malformed input becomes one :class:`BadPacket` naming the
address when it can be read, instead of python-osc's mix of ``ParseError``,
``UnicodeDecodeError`` escaping, and unknown type tags skipped with a warning (which shifts every
later argument). Bundles are opened recursively and their time tags ignored: everything runs
when it arrives, nothing sleeps.

TCP framing: OSC 1.0 sends each packet after a big-endian int32 length (liblo's ``osc.tcp://``);
OSC 1.1 wraps packets in SLIP (RFC 1055; python-osc's TCP client). :func:`detect_framing` picks
one from a connection's first byte.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pythonosc.osc_message_builder import BuildError, OscMessageBuilder
from pythonosc.parsing import osc_types

from bridge.saferepr import safe_repr

MAX_PACKET = 65536
"""Largest packet accepted, UDP or TCP (UDP itself stops at 65,507 bytes)."""
MAX_BUNDLE_DEPTH = 8
MAX_ARRAY_DEPTH = 8
"""OSC arrays (``[`` ... ``]``) nested deeper than this are refused: no option or id needs more than one."""
MAX_ARGS = 1024
"""Arguments in one message, counting those inside arrays (a 64 KiB packet could hold 13,000)."""
MAX_BUNDLE_MESSAGES = 256
"""Messages in one packet, counting nested bundles': a bigger bundle is refused whole, with one fail."""

BUNDLE_PREFIX = b"#bundle\x00"
_SUPPORTED_TAGS = "ihfdsScbmtrTFNI[]"
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")

SLIP_END = 0xC0
SLIP_ESC = 0xDB
SLIP_ESC_END = 0xDC
SLIP_ESC_ESC = 0xDD


class BadPacket(Exception):
    """A packet that is not valid OSC; ``address`` is "" when not even that could be read."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__(message)
        self.address = address
        self.message = message


@dataclass(frozen=True)
class Message:
    """One OSC message: an address and its arguments as Python values."""

    address: str
    args: tuple[Any, ...]


# -- reading ------------------------------------------------------------------------------------
def _read_string(data: bytes, index: int, what: str) -> tuple[str, int]:
    end = data.find(b"\x00", index)
    if end < 0:
        raise ValueError(f"{what} has no terminating zero byte")
    padded = index + ((end - index) // 4 + 1) * 4
    if padded > len(data):
        raise ValueError(f"{what} is not padded to a multiple of 4 bytes")
    try:
        return data[index:end].decode("utf-8"), padded
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not valid UTF-8 text ({exc.reason} at byte {index + exc.start})") from None


def peek_address(data: bytes) -> str:
    """The address at the start of ``data``, as well as it can be read, for error replies."""
    if not data.startswith(b"/"):
        return ""
    end = data.find(b"\x00")
    raw = data[: end if end >= 0 else 128][:128]
    return raw.decode("utf-8", errors="replace")


def _read_arg(tag: str, data: bytes, index: int) -> tuple[Any, int]:
    if tag == "i":
        return osc_types.get_int(data, index)
    if tag == "h":
        return osc_types.get_int64(data, index)
    if tag == "f":
        return osc_types.get_float(data, index)
    if tag == "d":
        return osc_types.get_double(data, index)
    if tag in "sS":
        return _read_string(data, index, "a string argument")
    if tag == "c":
        code, index = osc_types.get_int(data, index)
        return chr(code), index
    if tag == "b":
        return osc_types.get_blob(data, index)
    if tag == "m":
        return osc_types.get_midi(data, index)
    if tag == "t":
        return osc_types.get_timetag(data, index)
    if tag == "r":
        return osc_types.get_rgba(data, index)
    return {"T": True, "F": False, "N": None, "I": float("inf")}[tag], index


def decode_message(data: bytes) -> Message:
    """One OSC message, or :class:`BadPacket` saying what is wrong with it."""
    address = peek_address(data)
    try:
        address, index = _read_string(data, 0, "the address")
        if not address.startswith("/"):
            raise ValueError("the address must start with '/'")
        if index >= len(data):
            return Message(address, ())
        tags, index = _read_string(data, index, "the type tag string")
        if not tags.startswith(","):
            raise ValueError(f"the type tag string must start with ',', got {tags[:16]!r}")
        unknown = sorted({t for t in tags[1:] if t not in _SUPPORTED_TAGS})
        if unknown:
            raise ValueError(f"unsupported argument type(s) {''.join(unknown)!r}: send i, h, f, d, s, T, F or N")
        stack: list[list[Any]] = [[]]
        count = 0
        for tag in tags[1:]:
            if tag != "]":
                count += 1
                if count > MAX_ARGS:
                    raise ValueError(f"more than {MAX_ARGS} arguments (arrays count as one each)")
            if tag == "[":
                if len(stack) > MAX_ARRAY_DEPTH:
                    raise ValueError(f"arrays nested deeper than {MAX_ARRAY_DEPTH} levels")
                stack.append([])
            elif tag == "]":
                if len(stack) < 2:
                    raise ValueError("']' without '[' in the type tags")
                done = stack.pop()
                stack[-1].append(done)
            else:
                value, index = _read_arg(tag, data, index)
                stack[-1].append(value)
        if len(stack) != 1:
            raise ValueError("'[' without ']' in the type tags")
        if index != len(data):
            raise ValueError(f"{len(data) - index} bytes left over after the arguments the type tags declare")
        return Message(address, tuple(stack[0]))
    except (osc_types.ParseError, ValueError, IndexError, TypeError, OverflowError, struct.error) as exc:
        raise BadPacket(address, f"malformed OSC message: {exc}") from None


def decode_packet(data: bytes) -> list[Message | BadPacket]:
    """Every message in a packet (bundles opened, time tags ignored), in order.

    A bad element inside a bundle becomes a :class:`BadPacket` in its place; the good ones
    around it still count. A packet that is bad as a whole gives a single :class:`BadPacket`, and so
    does a bundle of more than :data:`MAX_BUNDLE_MESSAGES` messages (none of them is run).
    """
    if len(data) > MAX_PACKET:
        return [BadPacket(peek_address(data), f"packet of {len(data)} bytes is over the {MAX_PACKET}-byte limit")]
    out: list[Message | BadPacket] = []
    _decode_into(data, out, 0)
    if len(out) > MAX_BUNDLE_MESSAGES:
        return [BadPacket("", f"a bundle of more than {MAX_BUNDLE_MESSAGES} messages: none of it was run; send "
                              f"at most {MAX_BUNDLE_MESSAGES} per bundle")]
    return out


def _decode_into(data: bytes, out: list[Message | BadPacket], depth: int) -> None:
    if data.startswith(b"/"):
        try:
            out.append(decode_message(data))
        except BadPacket as exc:
            out.append(exc)
        return
    if not data.startswith(BUNDLE_PREFIX):
        what = "an empty packet" if not data else f"a packet starting with {safe_repr(data, 8)}"
        out.append(BadPacket("", f"not OSC: {what} (a message starts with '/', a bundle with '#bundle')"))
        return
    if depth >= MAX_BUNDLE_DEPTH:
        out.append(BadPacket("", f"bundles nested deeper than {MAX_BUNDLE_DEPTH} levels"))
        return
    index = len(BUNDLE_PREFIX) + 8  # the time tag: ignored, everything runs on arrival
    if len(data) < index:
        out.append(BadPacket("", "bundle too short for its time tag"))
        return
    while index < len(data):
        if len(out) > MAX_BUNDLE_MESSAGES:
            return  # decode_packet refuses the whole bundle
        if index + 4 > len(data):
            out.append(BadPacket("", "bundle element size cut short"))
            return
        (size,) = _INT32.unpack_from(data, index)
        index += 4
        if size <= 0 or size % 4 or index + size > len(data):
            out.append(BadPacket("", f"bundle element size {size} does not fit the {len(data) - index} bytes left"))
            return
        _decode_into(data[index : index + size], out, depth + 1)
        index += size


# -- writing ------------------------------------------------------------------------------------
def encode_message(address: str, args: Sequence[Any] = ()) -> bytes:
    """An OSC message with explicit types: str s, int i (h past 32 bits), float f, bool i 0/1."""
    builder = OscMessageBuilder(address=address)
    for value in args:
        if isinstance(value, bool):
            builder.add_arg(int(value), OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, int):
            wide = not (-(2**31) <= value < 2**31)
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_INT64 if wide else OscMessageBuilder.ARG_TYPE_INT)
        elif isinstance(value, float):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_FLOAT)
        elif isinstance(value, bytes):
            builder.add_arg(value, OscMessageBuilder.ARG_TYPE_BLOB)
        elif value is None:
            builder.add_arg(None, OscMessageBuilder.ARG_TYPE_NIL)
        else:
            builder.add_arg(str(value), OscMessageBuilder.ARG_TYPE_STRING)
    try:
        return builder.build().dgram
    except BuildError as exc:
        raise ValueError(f"cannot encode {address} {safe_repr(list(args))}: {exc}") from None


def encode_bundle(messages: Sequence[bytes], timetag: int = 1) -> bytes:
    """A bundle of already encoded packets (time tag 1 means "now"); used by tests and clients."""
    parts = [BUNDLE_PREFIX, struct.pack(">Q", timetag)]
    for packet in messages:
        parts += [_INT32.pack(len(packet)), packet]
    return b"".join(parts)


# -- TCP framing --------------------------------------------------------------------------------
class FrameError(Exception):
    """A TCP frame that breaks the framing or the size cap; ``fatal`` when the stream cannot resync."""

    def __init__(self, message: str, fatal: bool) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal


def detect_framing(first_byte: int) -> str:
    """'slip' for OSC 1.1 (starts with END, or with a bare packet), else 'length' (OSC 1.0)."""
    return "slip" if first_byte in (SLIP_END, ord("/"), ord("#")) else "length"


def slip_encode(packet: bytes) -> bytes:
    escaped = packet.replace(bytes([SLIP_ESC]), bytes([SLIP_ESC, SLIP_ESC_ESC]))
    escaped = escaped.replace(bytes([SLIP_END]), bytes([SLIP_ESC, SLIP_ESC_END]))
    return bytes([SLIP_END]) + escaped + bytes([SLIP_END])


def length_encode(packet: bytes) -> bytes:
    return _UINT32.pack(len(packet)) + packet


def frame(packet: bytes, framing: str) -> bytes:
    return slip_encode(packet) if framing == "slip" else length_encode(packet)


class FrameReader:
    """Turns a TCP byte stream into packets, in either framing, with a size cap."""

    def __init__(self, framing: str, max_frame: int = MAX_PACKET) -> None:
        self.framing = framing
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._discarding = False  # SLIP: skipping an oversize frame up to its END

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        """Complete packets in ``data`` (plus what came before), and errors in their place."""
        if self.framing == "slip":
            return self._feed_slip(data)
        return self._feed_length(data)

    def _feed_length(self, data: bytes) -> list[bytes | FrameError]:
        self._buffer += data
        out: list[bytes | FrameError] = []
        while len(self._buffer) >= 4:
            (size,) = _UINT32.unpack_from(self._buffer, 0)
            if size > self.max_frame:
                self._buffer.clear()
                out.append(FrameError(f"frame of {size} bytes is over the {self.max_frame}-byte limit "
                                      "(or the stream is not length-prefixed OSC)", fatal=True))
                return out
            if len(self._buffer) < 4 + size:
                break
            packet = bytes(self._buffer[4 : 4 + size])
            del self._buffer[: 4 + size]
            if packet:
                out.append(packet)
        return out

    def _feed_slip(self, data: bytes) -> list[bytes | FrameError]:
        out: list[bytes | FrameError] = []
        start = 0
        while start <= len(data):
            end = data.find(bytes([SLIP_END]), start)
            piece = data[start:] if end < 0 else data[start:end]
            if not self._discarding:
                self._buffer += piece
                if len(self._buffer) > 2 * self.max_frame + 2:  # escaped size can be twice the raw size
                    self._buffer.clear()
                    self._discarding = True
                    out.append(FrameError(f"SLIP frame over the {self.max_frame}-byte limit", fatal=False))
            if end < 0:
                break
            if self._discarding:
                self._discarding = False
            elif self._buffer:
                decoded = self._unescape(bytes(self._buffer))
                self._buffer.clear()
                if isinstance(decoded, FrameError) or len(decoded) <= self.max_frame:
                    out.append(decoded)
                else:
                    out.append(FrameError(f"SLIP frame of {len(decoded)} bytes is over the {self.max_frame}-byte "
                                          "limit", fatal=False))
            start = end + 1
        return out

    @staticmethod
    def _unescape(raw: bytes) -> bytes | FrameError:
        out = bytearray()
        escape = False
        for byte in raw:
            if escape:
                if byte == SLIP_ESC_END:
                    out.append(SLIP_END)
                elif byte == SLIP_ESC_ESC:
                    out.append(SLIP_ESC)
                else:
                    return FrameError(f"bad SLIP escape 0xDB 0x{byte:02X}", fatal=False)
                escape = False
            elif byte == SLIP_ESC:
                escape = True
            else:
                out.append(byte)
        if escape:
            return FrameError("SLIP frame ends inside an escape", fatal=False)
        return bytes(out)
