"""The client behind ``musicgen-bridge send``: one OSC message to the daemon, and optionally its answer.

For DAW scripts that cannot open sockets. Arguments are typed the way ``oscsend`` users expect,
by inference (``3`` int, ``2.5`` float, anything else text) or explicitly (``i:3``, ``f:2``,
``s:3``). With ``wait`` the client binds a UDP port of its own, registers it with
``/musicgen/notify``, sends the message, and waits: for a job, until its ``/musicgen/done`` (the
paths are printed one per line) or ``/musicgen/fail`` (non-zero exit, the message on stderr); for
anything else, until the first reply, printed as one line.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from bridge.config import Config
from bridge.errors import BadArgs, exit_code
from bridge.frontends.osc.transport import (
    BadPacket,
    FrameReader,
    Message,
    decode_packet,
    detect_framing,
    encode_message,
    length_encode,
)

JOB_ADDRESSES = ("/musicgen/generate", "/musicgen/continue", "/musicgen/melody", "/musicgen/loop", "/musicgen/infill",
                 "/musicgen/preset")
TIMEOUT_EXIT = 124  # as timeout(1): --timeout ran out before the answer
UNREACHABLE_EXIT = 69  # sysexits' EX_UNAVAILABLE: no bridge answered at that address
REACH_SECONDS = 3.0
"""How long ``--wait`` waits for the bridge to answer at all (its ``/musicgen/notify``) before saying it is not there."""
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_TYPED = re.compile(r"^([ifhsd]):(.*)$", re.DOTALL)


DEFAULT_PORT = Config.port


def parse_arg(text: str) -> Any:
    """One command-line word to an OSC value: ``i:``/``h:`` int, ``f:``/``d:`` float, ``s:`` text, or inferred."""
    typed = _TYPED.match(text)
    if typed:
        kind, value = typed.groups()
        try:
            if kind in "ih":
                return int(value)
            if kind in "fd":
                return float(value)
        except ValueError:
            raise BadArgs(f"{text!r}: {value!r} is not a {'whole number' if kind in 'ih' else 'number'}") from None
        return value
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


@dataclass
class Outcome:
    """What came back: an exit code, the lines for stdout, and a message for stderr."""

    code: int
    lines: list[str]
    error: str = ""


def _exit_code(fail_code: str) -> int:
    return exit_code(fail_code)


def _format(message: Message) -> str:
    return " ".join([message.address, *(str(a) for a in message.args)])


REPLY_ADDRESS = {"/musicgen/ping": "/musicgen/pong"}


class _Matcher:
    """Decides which reply answers the message we sent (every reply to this host reaches our port)."""

    def __init__(self, address: str, args: Sequence[Any]) -> None:
        self.address = address
        self.job_id = str(args[0]) if address in JOB_ADDRESSES and args else None
        self.cancel_id = str(args[0]) if address == "/musicgen/cancel" and args else None

    def outcome(self, reply: Message) -> Outcome | None:
        a = reply.args
        if reply.address == "/musicgen/fail":
            if len(a) < 4:
                return None
            if a[0] == self.address and (self.job_id is None or str(a[1]) == self.job_id):
                return Outcome(_exit_code(str(a[2])), [], f"{a[2]}: {a[3]}")
            if self.cancel_id is not None and a[2] == "cancelled" and self.cancel_id in ("*", str(a[1])):
                return Outcome(0, [_format(reply)])
            return None
        if self.job_id is not None:
            if reply.address == "/musicgen/done" and len(a) >= 4 and a[0] == self.address and str(a[1]) == self.job_id:
                return Outcome(0, [str(a[2]), *(str(p) for p in a[4:])])
            return None
        if reply.address == REPLY_ADDRESS.get(self.address, self.address):
            return Outcome(0, [_format(reply)])
        return None


def send(address: str, args: Sequence[Any], host: str = "127.0.0.1", port: int = 9000, *,
         reply_port: int | None = None, wait: bool = False, timeout: float = 60.0, token: str | None = None,
         tcp: bool = False, progress: TextIO | None = None) -> Outcome:
    """Send one message; with ``wait``, wait up to ``timeout`` s for its answer (see the module doc)."""
    if not address.startswith("/"):
        raise BadArgs(f"an OSC address starts with '/', got {address!r} (e.g. /musicgen/ping)")
    args = list(args)
    if wait and address in JOB_ADDRESSES and args and args[0] == "":
        args[0] = f"send-{os.getpid()}-{secrets.token_hex(3)}"  # to know which done is ours
    extra = ["token", token] if token else []
    if tcp:
        return _send_tcp(address, [*args, *extra], host, port, wait, timeout, progress)
    family = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        if not wait:
            sock.sendto(encode_message(address, [*args, *extra]), (host, port))
            return Outcome(0, [])
        loopback = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        sock.bind(("" if host not in ("127.0.0.1", "localhost", "::1") else loopback, reply_port or 0))
        own_port = sock.getsockname()[1]
        deadline = time.monotonic() + timeout
        reach = min(timeout, REACH_SECONDS)
        # first see that a bridge is there at all: registering the reply port is answered at once
        sock.sendto(encode_message("/musicgen/notify", [own_port, *extra]), (host, port))
        registered = _wait_for(sock, time.monotonic() + reach,
                               lambda m: (m.address == "/musicgen/notify" and list(m.args) == [own_port])
                               or (m.address == "/musicgen/fail" and bool(m.args) and m.args[0] == "/musicgen/notify"))
        if registered is None:
            code = UNREACHABLE_EXIT if reach < timeout else TIMEOUT_EXIT
            said = "timeout: " if code == TIMEOUT_EXIT else ""
            return Outcome(code, [], f"{said}no answer from a bridge at {host}:{port} within {reach:g} s: is it running "
                                     "(`musicgen-bridge serve`) on that host and port, and does it want a --token?")
        if registered.address == "/musicgen/fail":
            return Outcome(_exit_code(str(registered.args[2])), [], f"{registered.args[2]}: {registered.args[3]}")
        try:
            sock.sendto(encode_message(address, [*args, *extra]), (host, port))
            matcher = _Matcher(address, args)
            return _collect(lambda: _recv_udp(sock, deadline), matcher, timeout, progress)
        finally:
            sock.sendto(encode_message("/musicgen/unnotify", [own_port, *extra]), (host, port))


def _recv_udp(sock: socket.socket, deadline: float) -> list[Message] | None:
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    sock.settimeout(left)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return None
    return [m for m in decode_packet(data) if not isinstance(m, BadPacket)]


def _wait_for(sock: socket.socket, deadline: float, wanted: Any) -> Message | None:
    while True:
        messages = _recv_udp(sock, deadline)
        if messages is None:
            return None
        for message in messages:
            if wanted(message):
                return message


def _collect(receive: Any, matcher: _Matcher, timeout: float, progress: TextIO | None) -> Outcome:
    while True:
        messages = receive()
        if messages is None:
            what = f"job {matcher.job_id}" if matcher.job_id else matcher.address
            return Outcome(TIMEOUT_EXIT, [], f"timeout: no answer for {what} within {timeout:g} s")
        for message in messages:
            if progress is not None and message.address == "/musicgen/progress" and message.args and str(
                    message.args[0]) == matcher.job_id and len(message.args) > 1:
                progress.write(f"\r{matcher.job_id}: {float(message.args[1]) * 100:5.1f}%")
                progress.flush()
            if progress is not None and message.address == "/musicgen/warning" and len(message.args) > 1 and str(
                    message.args[0]) == matcher.job_id:
                progress.write(f"\n{matcher.job_id}: warning: {message.args[1]}\n")
                progress.flush()
            outcome = matcher.outcome(message)
            if outcome is not None:
                if progress is not None and matcher.job_id:
                    progress.write("\n")
                return outcome


def _send_tcp(address: str, args: list[Any], host: str, port: int, wait: bool, timeout: float,
              progress: TextIO | None) -> Outcome:
    """Over TCP, OSC 1.0 framing (as liblo); replies come back on the connection."""
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(length_encode(encode_message(address, args)))
        if not wait:
            return Outcome(0, [])
        reader: FrameReader | None = None

        def receive() -> list[Message] | None:
            nonlocal reader
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                sock.settimeout(left)
                try:
                    data = sock.recv(65536)
                except TimeoutError:
                    return None
                if not data:
                    return None
                if reader is None:
                    reader = FrameReader(detect_framing(data[0]))
                out: list[Message] = []
                for packet in reader.feed(data):
                    if isinstance(packet, bytes):
                        out += [m for m in decode_packet(packet) if isinstance(m, Message)]
                if out:
                    return out

        return _collect(receive, _Matcher(address, args), timeout, progress)


def add_parsers(sub: Any) -> None:
    """Add ``send`` to the CLI's subparsers."""
    send_parser = sub.add_parser(
        "send", help="send one OSC message to the bridge (and with --wait, print the result)",
        description="Send one OSC message. Arguments are typed by inference (3 int, 2.5 float, else text) or "
                    "explicitly (i:3 f:2 s:3). With --wait: wait for the job's done or fail and print the result "
                    "paths, one per line.",
        epilog='example: musicgen-bridge send /musicgen/generate "" "dusty lofi keys" 4 bpm 90 bars 2 --wait')
    add_send_arguments(send_parser)
    send_parser.set_defaults(handler=run_send)


def add_send_arguments(p: Any) -> None:
    p.add_argument("address", help="the OSC address, e.g. /musicgen/generate")
    p.add_argument("args", nargs="*", help='arguments, e.g. "" "dusty lofi keys" 4 bpm 90 (i:3 f:2 s:3 force a type)')
    p.add_argument("--host", default="127.0.0.1", help="the bridge's host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the bridge's port (default {DEFAULT_PORT})")
    p.add_argument("--reply-port", type=int, default=None, help="with --wait, listen on this port (default: any free "
                   "one, registered with /musicgen/notify)")
    p.add_argument("--wait", action="store_true", help="wait for the answer: a job's done or fail, else the first reply")
    p.add_argument("--timeout", type=float, default=600.0, help=f"seconds to wait with --wait (default 600); exit "
                   f"{TIMEOUT_EXIT} when they run out, {UNREACHABLE_EXIT} when no bridge answers within "
                   f"{REACH_SECONDS:g} s")
    p.add_argument("--token", default=None, help="the shared token (default $MUSICGEN_BRIDGE_TOKEN)")
    p.add_argument("--tcp", action="store_true", help="send over TCP (replies come back on the connection)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr while waiting")


def run_send(args: Any, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run a parsed ``send`` command line: print the result lines, return the exit code."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    values = [parse_arg(word) for word in args.args]
    try:
        outcome = send(args.address, values, args.host, args.port, reply_port=args.reply_port, wait=args.wait,
                       timeout=args.timeout, token=args.token or os.environ.get("MUSICGEN_BRIDGE_TOKEN"),
                       tcp=args.tcp, progress=None if args.quiet or not args.wait else err)
    except OSError as exc:
        err.write(f"musicgen-bridge: cannot reach the bridge at {args.host}:{args.port}: {exc.strerror or exc}; is "
                  "it running (`musicgen-bridge serve`)?\n")
        return UNREACHABLE_EXIT
    for line in outcome.lines:
        out.write(line + "\n")
    out.flush()
    if outcome.error:
        err.write(f"musicgen-bridge: {outcome.error}\n")
    return outcome.code
