"""Where the daemon's replies go: the peers a request came from, TCP connections' output, the
registered reply ports of each host, and the OSC front end's job listener that turns job events
into replies.

A UDP request is answered at its host's reply port and every port that host registered with
``/musicgen/notify``; a TCP request on its own connection while it is open (then as UDP). A job
no front end claims (a preset fired from MIDI) has no OSC origin: it is announced to every
registered port and the default target.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.app.jobs import Job, JobKind
from bridge.errors import BadArgs, BridgeError, Internal
from bridge.frontends.osc.context import ADDRESS_OF
from bridge.frontends.osc.fail import FAIL, fail_args
from bridge.frontends.osc.transport import FrameReader, encode_message, frame
from bridge.saferepr import safe_repr

if TYPE_CHECKING:
    from bridge.app.results import Chunk, JobResult

log = logging.getLogger(__name__)

MAX_PORTS_PER_HOST = 64
MAX_HOSTS = 64
MAX_OUTBUF = 1 << 20  # a TCP client that stops reading is dropped past this much unsent reply data
MAX_REPLY = 65507
"""The largest reply sent, UDP or TCP: a UDP datagram over IPv4 holds no more. Longer ones are cut."""
MAX_FAILS_PER_PACKET = 8
"""Fails sent for one packet; the rest of a bundle's fails are counted in one summary fail."""
MAX_REPLIES_PER_PACKET = 32
"""Replies of any kind sent for one packet (a bundle of 256 pings gets 32 pongs and a summary)."""


# -- who sent it ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UdpPeer:
    """A request that came in a datagram from ``host``: replies go to its registered ports."""

    host: str


@dataclass(frozen=True)
class StoredPeer:
    """A requester remembered in the job journal: its host and the ports it was answered on.

    After a restart the TCP connection and the registered ports are gone; replies go to these
    ports (UDP) and to whatever the host registers anew.
    """

    host: str
    ports: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class TcpPeer:
    """A request that came on a TCP connection: replies go back on it while it is open."""

    conn: Connection


@dataclass
class Stats:
    """Counters for what came in and went out; nothing is dropped without being counted here."""

    datagrams: int = 0
    messages: int = 0
    malformed: int = 0
    unauthorized: int = 0
    replies: int = 0
    reply_errors: int = 0
    tcp_accepted: int = 0
    tcp_refused: int = 0
    tcp_timeouts: int = 0
    tcp_silent: int = 0  # closed having sent nothing within the read timeout
    replies_held: int = 0  # over a packet's reply cap: counted in its summary fail instead
    replies_cut: int = 0  # over MAX_REPLY: cut to fit, with a note
    unproven: int = 0  # off loopback, from a sender that did not prove the token: not answered at all
    loops_refused: int = 0  # replies that would have gone to the bridge's own port
    loop_bugs: int = 0  # exceptions the OSC loop survived (each logged, throttled)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)


class Connection:
    """One TCP client: its framing, its partial input and its pending output."""

    def __init__(self, sock: socket.socket, address: Any, wake: Any) -> None:
        self.sock = sock
        self.address = address
        self.host = str(address[0])
        self.framing: str | None = None
        self.reader: FrameReader | None = None
        self.closed = False
        self.closing = False  # close once the output is flushed
        self.last_read = time.monotonic()
        self.partial_since: float | None = None
        self._out = bytearray()
        self._lock = threading.Lock()
        self._wake = wake

    def send(self, packet: bytes) -> bool:
        """Queue a packet for this connection (any thread); False when it is gone."""
        with self._lock:
            if self.closed or self.closing:
                return False
            if len(self._out) + len(packet) > MAX_OUTBUF:
                log.warning("TCP client %s is not reading its replies; closing it", self.address)
                self.closing = True
                self._out.clear()
                return False
            self._out += frame(packet, self.framing or "length")
        self._wake()
        return True

    def has_output(self) -> bool:
        with self._lock:
            return bool(self._out)

    def flush(self) -> None:
        """Write what the socket takes now (non-blocking); mark closed on a broken pipe."""
        with self._lock:
            if not self._out or self.closed:
                return
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("TCP client %s went away: %s", self.address, exc)
                self.closed = True
                self._out.clear()
                return
            del self._out[:sent]

    def close(self, linger: float = 0.0) -> None:
        """Close, first trying for up to ``linger`` seconds to write what is pending."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            pending = bytes(self._out)
            self._out.clear()
        if pending and linger > 0:
            with contextlib.suppress(OSError):
                self.sock.settimeout(linger)
                self.sock.sendall(pending)
        with contextlib.suppress(OSError):
            self.sock.close()


# -- replies --------------------------------------------------------------------------------------


def _is_local(host: str) -> bool:
    """A loopback address, or one of this machine's own (where a reply to our own port would land)."""
    try:
        address = ipaddress.ip_address(host.split("%", maxsplit=1)[0])
    except ValueError:
        return False
    if address.is_loopback or address.is_unspecified:
        return True
    try:
        with socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))  # only this machine's own addresses can be bound
    except OSError:
        return False
    return True


def fit_reply(address: str, args: Sequence[Any], limit: int = MAX_REPLY) -> tuple[bytes, bool]:
    """``address args`` encoded in at most ``limit`` bytes, and whether text had to be cut for it.

    The longest text arguments are cut, each ending with a note of how much was cut; ValueError
    when that is not enough (a reply of thousands of numbers), so the caller can say so instead.
    """
    packet = encode_message(address, args)
    if len(packet) <= limit:
        return packet, False
    values = list(args)
    for _attempt in range(len(values)):
        texts = [i for i, v in enumerate(values) if isinstance(v, str) and v]
        if not texts:
            break
        longest = max(texts, key=lambda i: len(values[i].encode()))
        raw = values[longest].encode()
        keep = max(0, len(raw) - (len(packet) - limit) - 96)
        kept = raw[:keep].decode("utf-8", errors="ignore")
        values[longest] = f"{kept}... [cut: {len(raw) - len(kept.encode())} bytes more; replies stop at {limit} bytes]"
        packet = encode_message(address, values)
        if len(packet) <= limit:
            return packet, True
    raise ValueError(f"the reply {safe_repr(address)} is {len(packet)} bytes, over the {limit}-byte limit, "
                     "and has no text to cut")


class ReplyRouter:
    """Where replies go, and the OSC front end's job listener that turns job events into replies."""

    def __init__(self, reply_port: int, default_host: str, stats: Stats) -> None:
        self.reply_port = reply_port
        self.default_host = default_host
        self.stats = stats
        self.sock: socket.socket | None = None
        self.own_ports: frozenset[int] = frozenset()
        """The ports the bridge listens on: never a reply target (it would answer itself, forever)."""
        self._ports: OrderedDict[str, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    # registered ports
    def register(self, host: str, port: int) -> None:
        """Send ``host``'s replies to ``port`` too; BadArgs for a port the bridge itself listens on."""
        if port in self.own_ports:
            self.stats.add("loops_refused")
            raise BadArgs(f"port {port} is the bridge's own port: replies sent there would come back as requests, "
                          "and each would be answered again. Give the port your script listens on")
        with self._lock:
            ports = self._ports.setdefault(host, [])
            self._ports.move_to_end(host)
            if port == self.reply_port or port in ports:
                return
            ports.append(port)
            if len(ports) > MAX_PORTS_PER_HOST:
                dropped = ports.pop(0)
                log.info("host %s registered more than %d reply ports; dropping the oldest, %d", host,
                         MAX_PORTS_PER_HOST, dropped)
            while len(self._ports) > MAX_HOSTS:
                old_host, _ = self._ports.popitem(last=False)
                log.info("more than %d hosts registered reply ports; forgetting %s", MAX_HOSTS, old_host)

    def unregister(self, host: str, port: int) -> None:
        with self._lock:
            ports = self._ports.get(host, [])
            if port in ports:
                ports.remove(port)

    def targets(self, host: str) -> list[tuple[str, int]]:
        with self._lock:
            return [(host, self.reply_port)] + [(host, p) for p in self._ports.get(host, [])]

    def everyone(self) -> list[tuple[str, int]]:
        with self._lock:
            out = [(self.default_host, self.reply_port)]
            for host, ports in self._ports.items():
                out += [(host, self.reply_port)] if host != self.default_host else []
                out += [(host, p) for p in ports]
            return list(dict.fromkeys(out))

    # requesters as plain data, for the job journal (the OSC subscription's describe and restore)
    def describe(self, origin: Any) -> dict[str, Any] | None:
        """Where replies to ``origin`` go, as JSON-able data (None: everyone, a job with no OSC origin)."""
        if isinstance(origin, TcpPeer):
            host, transport = origin.conn.host, "tcp"
        elif isinstance(origin, (UdpPeer, StoredPeer)):
            host, transport = origin.host, "udp"
        else:
            return None
        ports = [port for _host, port in self.targets(host)]
        if isinstance(origin, StoredPeer):
            ports = list(dict.fromkeys([*origin.ports, *ports]))
        return {"host": host, "ports": ports, "transport": transport}

    def origin_from(self, reply: Any) -> Any:
        """The requester a journal record names (see :meth:`describe`); None (everyone) when it names none."""
        if not isinstance(reply, dict) or not isinstance(reply.get("host"), str):
            return None
        ports = tuple(p for p in reply.get("ports", []) if isinstance(p, int) and not isinstance(p, bool)
                      and 0 < p < 65536)
        return StoredPeer(reply["host"], ports)

    # sending
    def send(self, origin: Any, address: str, args: Sequence[Any]) -> None:
        """Send one message to whoever ``origin`` is (None: everyone registered)."""
        try:
            packet, cut = fit_reply(address, args)
        except ValueError as exc:
            log.error("could not send the reply %s: %s", safe_repr(address), exc)
            self.stats.add("reply_errors")
            if address != FAIL:  # say so instead, in a reply that fits
                self.send(origin, FAIL, fail_args(address, "", Internal(f"{exc}; please report it")))
            return
        self.stats.add("replies_cut", int(cut))
        if isinstance(origin, TcpPeer):
            if origin.conn.send(packet):
                self.stats.add("replies")
                return
            targets = self.targets(origin.conn.host)  # the connection is gone: fall back to UDP
        elif isinstance(origin, UdpPeer):
            targets = self.targets(origin.host)
        elif isinstance(origin, StoredPeer):
            targets = list(dict.fromkeys([(origin.host, p) for p in origin.ports] + self.targets(origin.host)))
        else:
            targets = self.everyone()
        for target in targets:
            self._sendto(packet, target)

    def _sendto(self, packet: bytes, target: tuple[str, int]) -> None:
        sock = self.sock
        if sock is None:
            self.stats.add("reply_errors")
            return
        if target[1] in self.own_ports and _is_local(target[0]):
            self.stats.add("loops_refused")
            return
        try:
            sock.sendto(packet, target)
            self.stats.add("replies")
        except OSError as exc:
            self.stats.add("reply_errors")
            log.debug("reply to %s:%d failed: %s", target[0], target[1], exc)

    # the job listener
    def queued(self, job: Job, position: int) -> None:
        self.send(job.origin, "/musicgen/queued", [job.id, position])

    def progress(self, job: Job, fraction: float) -> None:
        self.send(job.origin, "/musicgen/progress", [job.id, float(fraction)])

    def chunk(self, job: Job, chunk: Chunk) -> None:
        if job.kind is JobKind.JAM:
            self.send(job.origin, "/musicgen/jam/segment", [job.id, chunk.index, str(chunk.path), float(chunk.beat)])
            return
        self.send(job.origin, "/musicgen/chunk", [job.id, chunk.index, str(chunk.path), float(chunk.start_seconds),
                                                  float(chunk.seconds)])

    def warning(self, job: Job, message: str) -> None:
        self.send(job.origin, "/musicgen/warning", [job.id, message])

    def done(self, job: Job, result: JobResult) -> None:
        paths = [str(p) for p in result.paths]
        if not paths:
            self.fail(job, Internal(f"job {job.id} finished without writing a file; please report it"))
            return
        self.send(job.origin, "/musicgen/done", [ADDRESS_OF[job.kind], job.id, paths[0], float(result.seconds),
                                                 *paths[1:]])

    def fail(self, job: Job, error: BridgeError) -> None:
        self.send(job.origin, FAIL, fail_args(ADDRESS_OF[job.kind], job.id, error))


class PacketReplies:
    """The replies to one packet, capped so a bundle cannot be answered many times its own size.

    At most :data:`MAX_FAILS_PER_PACKET` fails and :data:`MAX_REPLIES_PER_PACKET` replies in all
    are sent; the rest are counted and :meth:`summarise` sends one fail that says how many were
    held back and of what kind. Safe from any thread (a route may answer later, from elsewhere).
    """

    def __init__(self, router: ReplyRouter, origin: Any) -> None:
        self.router = router
        self.origin = origin
        self.sent = 0
        self.fails = 0
        self.held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def send(self, address: str, args: Sequence[Any]) -> None:
        is_fail = address == FAIL
        with self._lock:
            if self.sent >= MAX_REPLIES_PER_PACKET or (is_fail and self.fails >= MAX_FAILS_PER_PACKET):
                self.held[f"fail {args[2]}" if is_fail and len(args) > 2 else address] += 1
                self.router.stats.add("replies_held")
                return
            self.sent += 1
            self.fails += is_fail
        self.router.send(self.origin, address, args)

    def summarise(self) -> None:
        """Send the one fail that counts what was held back, if anything was."""
        with self._lock:
            count = sum(self.held.values())
            kinds = ", ".join(f"{n} {what}" for what, n in self.held.most_common(4))
            self.held.clear()
        if count:
            self.router.send(self.origin, FAIL, fail_args("", "", BadArgs(
                f"{count} more replies to this packet were not sent ({kinds}): the bridge answers one packet with "
                f"at most {MAX_FAILS_PER_PACKET} fails and {MAX_REPLIES_PER_PACKET} replies; send fewer messages "
                "per bundle")))


class HostPeers:
    """The :class:`~bridge.frontends.osc.routes.Peers` of one sender's host."""

    def __init__(self, router: ReplyRouter, host: str) -> None:
        self.router = router
        self.host = host

    def register(self, port: int) -> None:
        self.router.register(self.host, port)

    def unregister(self, port: int) -> None:
        self.router.unregister(self.host, port)
