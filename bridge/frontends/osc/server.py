"""The OSC daemon: its sockets and its one loop; the one place exceptions become ``/musicgen/fail``.

One thread owns every socket (UDP, the TCP listener and its connections) through a selector: no
thread per datagram, nothing sleeps on bundle time tags, and the control path answers while the
job worker (``bridge.app.jobs``) runs the model. TCP listens on the same port number as UDP, detects
OSC 1.0 length-prefix or OSC 1.1 SLIP framing from each connection's first byte, caps frames at
64 KiB, and drops a connection whose frame stalls past the read timeout or that sends nothing
within it (at most 64 connections, 16 per host). No packet or route can end the loop: every step
runs guarded, and each packet's replies are capped (``PacketReplies``). Off loopback a sender that
has not proven the token gets no reply at all. Where replies go is ``replies.py``; what each
address does is ``routes.py``; the README's threat model says what a client can make it do.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bridge.app.job_events import OSC
from bridge.errors import BadArgs, BridgeError, Internal, Unauthorized, UnknownAddress
from bridge.frontends.osc.context import ClipRoots, Context, Services
from bridge.frontends.osc.fail import FAIL, fail_args
from bridge.frontends.osc.replies import (
    Connection,
    HostPeers,
    PacketReplies,
    ReplyRouter,
    Stats,
    TcpPeer,
    UdpPeer,
)
from bridge.frontends.osc.routes import RouteTable
from bridge.frontends.osc.routes import routes as default_routes
from bridge.frontends.osc.transport import (
    MAX_PACKET,
    BadPacket,
    FrameError,
    FrameReader,
    decode_packet,
    detect_framing,
    encode_message,
)
from bridge.logthrottle import ThrottledLog
from bridge.saferepr import safe_repr

if TYPE_CHECKING:
    from bridge.config import Config

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 64
MAX_CONNECTIONS_PER_HOST = 16
MAX_ECHO = 128  # characters of a client's address or id echoed back in a fail
UDP_BURST = 64  # datagrams read per wake-up before the loop looks at TCP again


def is_loopback(host: str) -> bool:
    """True when ``host`` names only loopback addresses ("" and 0.0.0.0 are every interface)."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - this is the check against binding everywhere
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


# -- the server -----------------------------------------------------------------------------------


class OscServer:
    """The OSC daemon: UDP and TCP on one port, replies, and the OSC front end's job events.

    It serves an application built by the composition root (``app``: the facade, the one job
    queue, the output device, the jam; :class:`bridge.app.root.App`) and subscribes to its job
    events as the ``osc`` front end: its own jobs' events, and those of jobs no front end claims
    (MIDI's), become replies. ``start()`` runs the loop in a thread (tests, the CLI);
    ``serve_forever()`` in the caller's. ``stop()`` closes the queue, so the running and queued
    jobs are cancelled and each reported while the sockets are still open, then closes the sockets.
    A port of 0 picks a free one; ``port`` tells which.
    """

    def __init__(self, app: Services, config: Config, routes: RouteTable | None = None, *, tcp: bool = True,
                 read_timeout: float = 5.0, idle_timeout: float = 3600.0,
                 max_connections: int = MAX_CONNECTIONS, max_per_host: int = MAX_CONNECTIONS_PER_HOST) -> None:
        self.app = app
        self.config = config
        self.host = config.host
        self.token = config.token or None
        if not is_loopback(self.host) and not self.token:
            raise BadArgs(f"listening on {self.host or 'every interface'} lets other machines in: start the "
                               "bridge with --token SECRET (or MUSICGEN_BRIDGE_TOKEN) and send `token SECRET` with "
                               "every message, or listen on 127.0.0.1")
        self.guarded = not is_loopback(self.host)
        """Off loopback: a sender that has not proven the token gets nothing back at all (no reflector)."""
        if config.port and config.reply_port == config.port:
            raise BadArgs(f"--reply-port {config.reply_port} is the bridge's own port: its replies would come back "
                          "as requests. Pick another reply port")
        self.clips = ClipRoots.from_config(config, self.guarded)
        self.routes = routes if routes is not None else default_routes
        self.tcp_enabled = tcp
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.max_per_host = max_per_host
        self.stats = Stats()
        self.refusals = ThrottledLog(log, interval=60.0)  # a client refused 300 times is one line and a count
        self.bugs = ThrottledLog(log, interval=60.0)  # a packet that trips a bug 1,000 times is one traceback
        default_host = self.host if is_loopback(self.host) else "127.0.0.1"
        self.router = ReplyRouter(config.reply_port, default_host, self.stats)
        self.jobs = app.jobs
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        self._selector: selectors.BaseSelector | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._connections: set[Connection] = set()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._bound = False
        self._serving = False
        self.subscription = app.events.subscribe(OSC, self.router, unclaimed=True, describe=self.router.describe,
                                                  restore=self.router.origin_from)

    # -- life -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._udp is None:
            raise Internal("the OSC server is not bound yet: call start() first")
        return int(self._udp.getsockname()[1])

    def bind(self) -> None:
        """Open the sockets (UDP, and TCP on the same port number)."""
        if self._bound:
            return
        family, address = self._resolve(self.host, self.config.port)
        for _attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.bind(address)
            except OSError as exc:
                udp.close()
                raise BadArgs(f"cannot listen on UDP {self.host}:{self.config.port}: {exc.strerror}. Is another "
                              "bridge running? Pick another --port") from None
            port = udp.getsockname()[1]
            tcp = None
            if self.tcp_enabled:
                tcp = socket.socket(family, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    tcp.bind((address[0], port, *address[2:]))
                except OSError as exc:
                    tcp.close()
                    udp.close()
                    if self.config.port == 0 and exc.errno == errno.EADDRINUSE:
                        continue  # the free UDP port is taken for TCP: try another
                    raise BadArgs(f"cannot listen on TCP {self.host}:{port}: {exc.strerror}. Pick another --port, "
                                  "or free the port") from None
                tcp.listen(16)
                tcp.setblocking(False)
            break
        else:
            raise BadArgs("could not find a port free for both UDP and TCP; give one with --port")
        udp.setblocking(False)
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self._udp, self._tcp = udp, tcp
        self.router.sock = udp
        self.router.own_ports = frozenset({port})
        if self.config.reply_port == port:
            udp.close()
            if tcp is not None:
                tcp.close()
            raise BadArgs(f"the reply port {port} is the bridge's own port: its replies would come back as "
                          "requests. Pick another --reply-port")
        selector = selectors.DefaultSelector()
        selector.register(udp, selectors.EVENT_READ, "udp")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if tcp is not None:
            selector.register(tcp, selectors.EVENT_READ, "listen")
        self._selector = selector
        self._bound = True
        log.info("OSC on %s:%d (UDP%s)", self.host, self.port, " and TCP" if tcp is not None else "")

    @staticmethod
    def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[Any, ...]]:
        try:
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise BadArgs(f"cannot resolve host {host!r}: {exc.strerror}; give an address like 127.0.0.1") from None
        family, _type, _proto, _name, address = infos[0]
        return family, tuple(address)

    def start(self) -> None:
        """Bind, start the job worker, and serve in a background thread."""
        self.bind()
        self.jobs.start()
        self._thread = threading.Thread(target=self._loop, name="musicgen-osc", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        """Bind, start the job worker, and serve in this thread until :meth:`stop`."""
        self.bind()
        self.jobs.start()
        self._loop()

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel and report every job, then close the sockets. Safe to call twice."""
        self.jobs.close(timeout)
        self.subscription.close()
        self._stop.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        elif self._serving and self._thread is None:
            self._stopped.wait(timeout)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self.refusals.flush()
        for conn in list(self._connections):
            conn.close(linger=1.0)
        self._connections.clear()
        for sock in (self._udp, self._tcp, self._wake_r, self._wake_w):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\x00")

    # -- the loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        selector = self._selector
        if selector is None:
            raise Internal("the OSC server loop started before bind()")
        self._serving = True
        try:
            while not self._stop.is_set():
                for key, mask in selector.select(timeout=0.25):
                    self._survive(self._dispatch, key.data, mask)
                self._survive(self._tend_connections, selector)
                self.refusals.tick()
                self.bugs.tick()
            # stop() reported the cancelled jobs before setting _stop: send what is still pending
            for conn in list(self._connections):
                conn.flush()
        finally:
            self._stopped.set()

    def _dispatch(self, what: Any, mask: int) -> None:
        if what == "udp":
            self._read_udp()
        elif what == "listen":
            self._accept()
        elif what == "wake":
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        elif isinstance(what, Connection):
            if mask & selectors.EVENT_READ:
                self._read_tcp(what)
            if mask & selectors.EVENT_WRITE:
                what.flush()

    def _survive(self, step: Any, *args: Any) -> None:
        """Run one step of the loop; a bug in it is logged (throttled), never the end of the loop."""
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001 - the one thread that answers every client must not die
            self.stats.add("loop_bugs")
            with contextlib.suppress(Exception):  # the log itself may be what failed
                self.bugs.log(logging.ERROR, ("loop", type(exc).__name__), "the OSC loop survived a bug (%s: %s); "
                              "please report it with this log", type(exc).__name__, _text_of(exc), exc_info=True)

    def _read_udp(self) -> None:
        udp = self._udp
        if udp is None:
            return
        for _ in range(UDP_BURST):
            try:
                data, sender = udp.recvfrom(MAX_PACKET + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("UDP receive error: %s", exc)
                return
            self.stats.add("datagrams")
            self.handle_packet(UdpPeer(str(sender[0])), data)

    def _accept(self) -> None:
        if self._tcp is None:
            return
        try:
            sock, address = self._tcp.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("TCP accept failed: %s", exc)
            return
        host = str(address[0])
        same_host = sum(1 for c in self._connections if c.host == host)
        if len(self._connections) >= self.max_connections or same_host >= self.max_per_host:
            self.stats.add("tcp_refused")
            self.refusals.warning(("tcp", host), "refusing TCP client %s: already %d connections (%d from its host; "
                                  "at most %d, %d per host)", address, len(self._connections), same_host,
                                  self.max_connections, self.max_per_host)
            sock.close()
            return
        sock.setblocking(False)
        conn = Connection(sock, address, self._wake)
        self._connections.add(conn)
        self.stats.add("tcp_accepted")
        if self._selector is not None:
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _read_tcp(self, conn: Connection) -> None:
        if conn.closed or conn.closing:
            return
        try:
            data = conn.sock.recv(MAX_PACKET)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("TCP client %s: %s", conn.address, exc)
            data = b""
        if not data:
            conn.closing = True  # the client hung up; send what is pending, then close
            return
        now = time.monotonic()
        conn.last_read = now
        if conn.reader is None:
            conn.framing = detect_framing(data[0])
            conn.reader = FrameReader(conn.framing)
        peer = TcpPeer(conn)
        for item in conn.reader.feed(data):
            if isinstance(item, FrameError):
                self.stats.add("malformed")
                if not self.token:
                    self.router.send(peer, FAIL, fail_args("", "", BadArgs(f"bad TCP frame: {item.message}")))
                if item.fatal:
                    conn.closing = True
                    return
            else:
                self.handle_packet(peer, item)
        conn.partial_since = (conn.partial_since or now) if conn.reader.pending else None

    def _tend_connections(self, selector: selectors.BaseSelector) -> None:
        """Flush output, time out stalled frames and idle clients, forget closed connections."""
        now = time.monotonic()
        for conn in list(self._connections):
            if not conn.closed and conn.reader is None and now - conn.last_read > self.read_timeout:
                self.stats.add("tcp_silent")  # connected and sent nothing: holds a slot, nothing to answer
                conn.closing = True
            elif not conn.closed and conn.partial_since is not None and now - conn.partial_since > self.read_timeout:
                self.stats.add("tcp_timeouts")
                pending = conn.reader.pending if conn.reader is not None else 0
                if not self.token:
                    conn.send(encode_message(FAIL, fail_args("", "", BadArgs(
                        f"incomplete TCP frame: {pending} bytes and nothing more for {self.read_timeout:g} s"))))
                conn.closing = True
                conn.partial_since = None
            elif (not conn.closed and self.idle_timeout and now - conn.last_read > self.idle_timeout
                  and not conn.has_output()):
                conn.closing = True
            if conn.has_output():
                conn.flush()
            if conn.closing and not conn.has_output():
                conn.close()
            if conn.closed:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(conn.sock)
                self._connections.discard(conn)
                continue
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.has_output() else 0)
            if selector.get_key(conn.sock).events != events:
                selector.modify(conn.sock, events, conn)

    # -- messages ---------------------------------------------------------------------------
    def handle_packet(self, origin: Any, data: bytes) -> None:
        """Every message in one packet (a bundle's in order), answered within the packet's reply cap."""
        replies = PacketReplies(self.router, origin)
        for item in decode_packet(data):
            if isinstance(item, BadPacket):
                self.stats.add("malformed")
                if self.token:
                    host = self._peers(origin).host
                    self.refusals.info((host, "malformed"), "malformed packet from %s, not answered (a token is "
                                       "required): %s", host, safe_repr(item.message, 200))
                else:
                    replies.send(FAIL, fail_args(item.address, "", BadArgs(item.message)))
            else:
                self.handle_message(origin, item.address, item.args, replies)
        replies.summarise()

    def handle_message(self, origin: Any, address: str, args: Sequence[Any],
                       replies: PacketReplies | None = None) -> None:
        """Run one message's route; any error becomes ``/musicgen/fail <address> <id> <code> <message>``."""
        self.stats.add("messages")
        if replies is None:
            replies = PacketReplies(self.router, origin)
        route = self.routes.get(address)
        job_id = ""
        if route is not None and route.takes_job_id and args and isinstance(args[0], (str, int)):
            job_id = str(args[0])[:MAX_ECHO]
        echoed = address[:MAX_ECHO]  # the address echoed in a fail: enough to match, never a 60 KB reply
        try:
            args = self._check_token(args, len(route.params) if route is not None else 0)
            if route is None:
                raise UnknownAddress(f"no address {safe_repr(address)}{self.routes.suggest(address[:MAX_ECHO])}: "
                                     "/musicgen/api/list lists them")
            ctx = Context(address=address, app=self.app, routes=self.routes, reply=replies.send,
                          peers=self._peers(origin), origin=origin, clips=self.clips)
            route.call(ctx, args)
        except BridgeError as exc:
            host = self._peers(origin).host
            if isinstance(exc, Unauthorized):
                self.stats.add("unauthorized")
                if self.guarded:  # an unproven sender off loopback gets nothing: the source may be forged
                    self.stats.add("unproven")
                    self.refusals.warning((host, "unproven"), "ignored %s from %s: %s (off loopback, a sender "
                                          "without the token gets no reply)", safe_repr(address), host, exc.message)
                    if isinstance(origin, TcpPeer):
                        origin.conn.closing = True
                    return
            replies.send(FAIL, fail_args(echoed, job_id, exc))  # the answer first, then the log
            self.refusals.info((host, exc.code), "refused %s from %s: %s: %s", safe_repr(address), host, exc.code,
                               exc.message)
        except Exception as exc:  # noqa: BLE001 - any bug in a route becomes `internal`, never the loop's end
            replies.send(FAIL, fail_args(echoed, job_id, Internal(
                f"the bridge hit a bug handling {safe_repr(address)} ({type(exc).__name__}: {_text_of(exc)}); "
                "please report it with the daemon's log")))
            self.bugs.log(logging.ERROR, (address[:MAX_ECHO], type(exc).__name__), "bug while handling %s %s: %s: %s",
                          safe_repr(address), safe_repr(list(args)), type(exc).__name__, _text_of(exc), exc_info=True)

    def _check_token(self, args: Sequence[Any], first_option: int) -> list[Any]:
        """Take the ``token`` option out of ``args``; raise Unauthorized when it is required and wrong."""
        given: Any = None
        rest = list(args)
        for i in range(len(rest) - 2, first_option - 1, -2):
            if rest[i] == "token":
                given = rest[i + 1]
                del rest[i : i + 2]
                break
        if self.token is not None and not (
                isinstance(given, str) and hmac.compare_digest(given.encode(), self.token.encode())):
            what = "without the" if given is None else "with a wrong"
            raise Unauthorized(f"request {what} shared token: add `token <the token the bridge was started with>` "
                               "to the message's options")
        return rest

    def _peers(self, origin: Any) -> HostPeers:
        host = origin.conn.host if isinstance(origin, TcpPeer) else getattr(origin, "host", self.router.default_host)
        return HostPeers(self.router, host)


def _text_of(exc: BaseException) -> str:
    """An exception's message, short, whatever it holds."""
    try:
        return safe_repr(str(exc), 300).strip("'\"")
    except Exception:  # noqa: BLE001 - str() of a broken exception can raise anything
        return "(no message)"

