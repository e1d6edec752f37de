"""The script's one UDP socket to the bridge: non-blocking, polled from Live's tick, never waited on."""

from __future__ import annotations

import socket

from .osc import OscError, Value, decode_message, encode_message

LOOPBACK = ("127.0.0.1", "localhost", "::1")
MAX_DATAGRAM = 65536


class BridgeLink:
    """Sends requests to the bridge and reads its replies at the script's own port.

    The port is registered with ``/musicgen/notify``, so replies never depend on who else listens at
    the bridge's default reply port (REAPER, oscdump). Every error is kept as text for the status bar.
    """

    def __init__(self, host: str, port: int, token: str = "") -> None:
        self.address = (host, port)
        self.token = token
        self.malformed = 0
        self.last_error: str | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        # The bridge answers the host a request came from: off loopback, listen on every interface.
        self.sock.bind(("127.0.0.1" if host in LOOPBACK else "", 0))
        self.port = int(self.sock.getsockname()[1])

    def send(self, address: str, args: list[Value]) -> bool:
        """Send one message (with the token when one is set); False, and ``last_error``, when it failed."""
        if self.token:
            args = [*list(args), "token", self.token]
        try:
            self.sock.sendto(encode_message(address, args), self.address)
        except (OSError, OscError) as exc:  # OSError covers an unknown host name too (socket.gaierror)
            self.last_error = f"cannot send to {self.address[0]}:{self.address[1]} ({exc})"
            return False
        return True

    def receive(self, limit: int = 256) -> list[tuple[str, list[Value]]]:
        """The messages waiting at the port, at most ``limit`` (the rest wait for the next tick)."""
        messages = []
        for _ in range(limit):
            try:
                data = self.sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except ConnectionResetError:  # Windows reports a closed port of an earlier send this way
                continue
            except OSError as exc:
                self.last_error = f"cannot read replies ({exc})"
                break
            try:
                messages.append(decode_message(data))
            except OscError:
                self.malformed += 1
        return messages

    def close(self) -> None:
        self.send("/musicgen/unnotify", [self.port])
        self.sock.close()
