"""OSC 1.0 messages by hand (Live's Python has no python-osc): what the bridge sends and reads."""

from __future__ import annotations

import struct
from typing import Union

Value = Union[str, int, float, bool, bytes, None]
INT32 = (-(2**31), 2**31 - 1)


class OscError(ValueError):
    """A datagram that is not an OSC message this script can read."""


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (4 - len(data) % 4)


def _blob(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data + b"\0" * (-len(data) % 4)


def encode_message(address: str, args: list[Value]) -> bytes:
    """One OSC message: str as ``s``, bool as ``T``/``F``, int as ``i`` (``h`` past 32 bits), float as ``f``."""
    tags = ","
    body = b""
    for value in args:
        if isinstance(value, bool):
            tags += "T" if value else "F"
        elif isinstance(value, int):
            if INT32[0] <= value <= INT32[1]:
                tags, body = tags + "i", body + struct.pack(">i", value)
            else:
                tags, body = tags + "h", body + struct.pack(">q", value)
        elif isinstance(value, float):
            tags, body = tags + "f", body + struct.pack(">f", value)
        elif isinstance(value, str):
            tags, body = tags + "s", body + _pad(value.encode("utf-8"))
        elif isinstance(value, bytes):
            tags, body = tags + "b", body + _blob(value)
        elif value is None:
            tags += "N"
        else:
            raise OscError(f"cannot send a {type(value).__name__} over OSC")
    return _pad(address.encode("utf-8")) + _pad(tags.encode("ascii")) + body


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    end = data.find(b"\0", pos)
    if end < 0:
        raise OscError("a string is not terminated")
    try:
        text = data[pos:end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OscError(f"a string is not UTF-8: {exc}") from exc
    return text, end + 4 - (end % 4)


_FIXED = {"i": (">i", 4), "h": (">q", 8), "f": (">f", 4), "d": (">d", 8)}
_CONSTANT = {"T": True, "F": False, "N": None}


def decode_message(data: bytes) -> tuple[str, list[Value]]:
    """The address and arguments of one OSC message; raises OscError for anything else (bundles too)."""
    if not data.startswith(b"/"):
        raise OscError("not an OSC message (no leading /)")
    address, pos = _read_string(data, 0)
    if pos >= len(data):
        return address, []
    tags, pos = _read_string(data, pos)
    if not tags.startswith(","):
        raise OscError("no type tags")
    args: list[Value] = []
    for tag in tags[1:]:
        if tag in _FIXED:
            fmt, size = _FIXED[tag]
            if pos + size > len(data):
                raise OscError("an argument is cut short")
            args.append(struct.unpack(fmt, data[pos : pos + size])[0])
            pos += size
        elif tag == "s":
            text, pos = _read_string(data, pos)
            args.append(text)
        elif tag == "b":
            if pos + 4 > len(data):
                raise OscError("a blob is cut short")
            size = struct.unpack(">i", data[pos : pos + 4])[0]
            if size < 0 or pos + 4 + size > len(data):
                raise OscError("a blob is cut short")
            args.append(data[pos + 4 : pos + 4 + size])
            pos += 4 + size + (-size % 4)
        elif tag in _CONSTANT:
            args.append(_CONSTANT[tag])
        else:
            raise OscError(f"unknown type tag {tag!r}")
    return address, args


def first_float(args: list[Value], index: int, default: float = 0.0) -> float:
    """``args[index]`` as a float when it is a number, else ``default``."""
    value: Value | None = args[index] if index < len(args) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return default
