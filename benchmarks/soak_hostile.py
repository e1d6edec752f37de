"""The soak's hostile mix (``soak.py --hostile``): attack packets beside the ordinary traffic.

A thread of its own sends, at ``--hostile-rate`` per second: malformed bytes, arrays nested 1,100
deep (as job id and as option value), a bundle of 200 unknown addresses, a bundle of 256 pings, a
3,000-message bundle, a 60 KB unknown address, ``notify`` of the daemon's own port, and bursts of
TCP connections that never send a byte. Each attack is followed by a marker request from the same
socket (``/musicgen/api/help /musicgen/ping``, an answer no attack causes): every byte that arrives
before its answer is the reply to the attack (UDP on loopback keeps
order, and the daemon answers one packet before reading the next).

Two daemons are attacked:
- the soak's own, on 127.0.0.1, from 127.0.0.2: replies to that host go to a socket of its own,
  so they are told apart from the ordinary traffic's;
- a second one bound off loopback (this machine's own non-loopback address, else 0.0.0.0) with a
  token: the attacks carry no token, so the goal there is 0 bytes back; the marker carries it.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pythonosc.osc_message_builder import OscMessageBuilder

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("malformed", "nested-id", "nested-option", "bundle-200-unknown", "bundle-256-pings", "bundle-3000",
         "oversized-address", "notify-own-port")


def _message(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def _padded(raw: bytes) -> bytes:
    raw += b"\x00"
    return raw + b"\x00" * (-len(raw) % 4)


def _bundle(packets: list[bytes]) -> bytes:
    return b"#bundle\x00" + struct.pack(">Q", 1) + b"".join(struct.pack(">i", len(p)) + p for p in packets)


def attack_packet(kind: str, rng: random.Random, daemon_port: int) -> bytes:
    nested = b"[" * 1100 + b"]" * 1100
    if kind == "malformed":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == "nested-id":
        return _padded(b"/musicgen/generate") + _padded(b"," + nested + b"sf") + _padded(b"keys") + struct.pack(">f", 1)
    if kind == "nested-option":
        return (_padded(b"/musicgen/generate") + _padded(b",ssfs" + nested) + _padded(b"h1") + _padded(b"keys")
                + struct.pack(">f", 1) + _padded(b"seed"))
    if kind == "bundle-200-unknown":
        return _bundle([_message("/musicgen/nope", n) for n in range(200)])
    if kind == "bundle-256-pings":
        return _bundle([_message("/musicgen/ping")] * 256)
    if kind == "bundle-3000":
        return _bundle([_message("/musicgen/x")] * 3000)
    if kind == "oversized-address":
        return _message("/musicgen/" + "x" * 60000)
    if kind == "notify-own-port":
        return _message("/musicgen/notify", daemon_port)
    raise ValueError(kind)


def local_address() -> str:
    """This machine's own non-loopback IPv4 address (no packet is sent), else 0.0.0.0."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("198.51.100.1", 9))  # routing only (TEST-NET-2): a UDP connect sends nothing
            address = str(probe.getsockname()[0])
        except OSError:
            return "0.0.0.0"
    return "0.0.0.0" if address.startswith("127.") else address


class Target:
    """One daemon under attack: where to send, the socket its replies to us arrive at, and the counts."""

    def __init__(self, name: str, host: str, port: int, sock: socket.socket, token: str | None) -> None:
        self.name, self.host, self.port, self.sock, self.token = name, host, port, sock, token
        self.per_kind: dict[str, dict[str, Any]] = defaultdict(lambda: {"sent": 0, "bytes_in": 0, "reply_bytes": 0,
                                                                       "answered": 0, "max_ratio": 0.0})
        self.marker_ms: list[float] = []
        self.markers_lost = 0

    def attack(self, kind: str, packet: bytes) -> None:
        self.sock.sendto(packet, (self.host, self.port))
        # the marker: an answer no attack can cause (a bundle of pings gets pongs of its own)
        marker = _message("/musicgen/api/help", "/musicgen/ping", *(["token", self.token] if self.token else []))
        sent = time.monotonic()
        self.sock.sendto(marker, (self.host, self.port))
        reply_bytes = 0
        deadline = sent + 5.0
        while True:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                self.markers_lost += 1
                break
            if data.startswith(b"/musicgen/api/help\x00"):
                self.marker_ms.append((time.monotonic() - sent) * 1000)
                break
            reply_bytes += len(data)
        row = self.per_kind[kind]
        row["sent"] += 1
        row["bytes_in"] += len(packet)
        row["reply_bytes"] += reply_bytes
        row["answered"] += reply_bytes > 0
        row["max_ratio"] = max(row["max_ratio"], round(reply_bytes / len(packet), 3))


class Hostile:
    """The hostile mix's thread and its report; ``start()`` after the soak's daemon answers."""

    def __init__(self, port: int, reply_port: int, rate: float, seed: int, work: Path, model: str) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="hostile", daemon=True)
        loop_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        loop_sock.bind(("127.0.0.2", reply_port))  # the daemon answers host 127.0.0.2 at its reply port
        self.loopback = Target("loopback", "127.0.0.1", port, loop_sock, None)
        self.token = f"soak-{self.rng.randrange(10**9)}"
        self.guarded_host = local_address()
        guarded_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        guarded_sock.bind((self.guarded_host if self.guarded_host != "0.0.0.0" else "127.0.0.1", 0))
        self.guarded_port = _free_port(self.guarded_host)
        send_host = "127.0.0.1" if self.guarded_host == "0.0.0.0" else self.guarded_host
        self.guarded = Target("guarded", send_host, self.guarded_port, guarded_sock, self.token)
        self.log = (work / "guarded.log").open("w+")
        self.daemon = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--model", model, "--host", self.guarded_host, "--port",
             str(self.guarded_port), "--reply-port", str(guarded_sock.getsockname()[1]), "--token", self.token,
             "--output-dir", str(work / "guarded-out")], stdout=self.log, stderr=self.log, cwd=ROOT)
        self.tcp = {"opened": 0, "refused_at_once": 0, "closed_by_daemon": 0, "still_open_at_end": 0}
        self._idle: list[tuple[socket.socket, float]] = []
        self.rss: list[float] = []

    def wait_up(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.guarded.marker_ms:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the guarded daemon did not come up:\n{Path(self.log.name).read_text()}")
            self.guarded.attack("warm-up", _message("/musicgen/status", "token", self.token))
        self.guarded.per_kind.pop("warm-up")
        self.guarded.marker_ms.clear()
        self.guarded.markers_lost = 0

    def start(self) -> None:
        self.wait_up()
        self.thread.start()

    def _run(self) -> None:
        gap = 1.0 / self.rate
        while not self.stop_event.wait(gap):
            kind = self.rng.choice((*KINDS, "idle-tcp"))
            if kind == "idle-tcp":
                self._idle_tcp(self.rng.randrange(4, 24))
            else:
                self.loopback.attack(kind, attack_packet(kind, self.rng, self.loopback.port))
                self.guarded.attack(kind, attack_packet(kind, self.rng, self.guarded.port))
            self._tend_idle()
            rss = _rss_mb(self.daemon.pid)
            if rss is not None:
                self.rss.append(rss)

    def _idle_tcp(self, count: int) -> None:
        for _ in range(count):
            try:
                conn = socket.create_connection(("127.0.0.1", self.loopback.port), timeout=2)
            except OSError:
                self.tcp["refused_at_once"] += 1
                continue
            conn.setblocking(False)
            self.tcp["opened"] += 1
            self._idle.append((conn, time.monotonic()))

    def _tend_idle(self) -> None:
        keep = []
        for conn, opened in self._idle:
            try:
                data = conn.recv(1)
            except BlockingIOError:
                keep.append((conn, opened))
                continue
            except OSError:
                data = b""
            if data == b"":
                self.tcp["closed_by_daemon"] += 1
                conn.close()
            else:
                keep.append((conn, opened))
        self._idle = keep

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.thread.join(30)
        time.sleep(6.0)  # past the daemon's 5 s read timeout: every idle connection should be closed by now
        self._tend_idle()
        self.tcp["still_open_at_end"] = len(self._idle)
        for conn, _ in self._idle:
            conn.close()
        self.daemon.terminate()
        try:
            self.daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
        self.log.close()
        return self.report()

    def report(self) -> dict[str, Any]:
        def target(t: Target) -> dict[str, Any]:
            rows = {k: dict(v) for k, v in sorted(t.per_kind.items())}
            sent = sum(r["bytes_in"] for r in rows.values())
            back = sum(r["reply_bytes"] for r in rows.values())
            ms = sorted(t.marker_ms)
            return {"kinds": rows, "packets_sent": sum(r["sent"] for r in rows.values()),
                    "packets_answered": sum(r["answered"] for r in rows.values()), "bytes_in": sent,
                    "reply_bytes": back, "reply_per_request_byte": round(back / sent, 4) if sent else None,
                    "max_reply_per_request_byte": max((r["max_ratio"] for r in rows.values()), default=None),
                    "marker_pings": len(ms), "marker_pings_lost": t.markers_lost,
                    "marker_ping_ms_p99": ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else None}

        return {"rate_per_s": self.rate, "loopback": target(self.loopback),
                "guarded": {"host": self.guarded_host, **target(self.guarded),
                            "rss_mb": {"first": self.rss[0] if self.rss else None,
                                       "last": self.rss[-1] if self.rss else None,
                                       "max": max(self.rss, default=None)},
                            "log_tail": Path(self.log.name).read_text(errors="replace").splitlines()[-8:]},
                "idle_tcp": dict(self.tcp)}


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
