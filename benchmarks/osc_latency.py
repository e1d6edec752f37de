"""How fast the daemon's control path answers while the model is generating.

Starts a real `musicgen-bridge serve` on loopback, starts a long generation, and once it reports
progress sends `/musicgen/ping` many times (round trip to `/musicgen/pong`) and a second generation
(round trip to `/musicgen/queued`), then cancels everything. Prints a table; `--json FILE` keeps the
numbers.

    python benchmarks/osc_latency.py --model small-arch-random --pings 200 --json osc.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Peer:
    """A UDP socket that sends to the daemon and reads its replies."""

    def __init__(self, port: int, reply_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", reply_port))  # replies go to the sender's host at the reply port
        self.port = port

    def send(self, address: str, *args: Any) -> None:
        builder = OscMessageBuilder(address=address)
        for arg in args:
            builder.add_arg(arg)
        self.sock.sendto(builder.build().dgram, ("127.0.0.1", self.port))

    def expect(self, address: str, timeout: float, first: Any = None) -> OscMessage:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, _ = self.sock.recvfrom(65536)
            except TimeoutError:
                break
            message = OscMessage(data)
            if message.address == address and (first is None or (message.params and message.params[0] == first)):
                return message
        raise TimeoutError(f"no {address} within {timeout} s")


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small-arch-random")
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the generation under way")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    port, reply_port = _free_port(), _free_port()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"mgb-osc-latency-{os.getpid()}"
    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads could fill and stall the daemon
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--model", args.model, "--port", str(port),
         "--reply-port", str(reply_port), "--output-dir", str(out)], stderr=log, text=True)
    try:
        peer = Peer(port, reply_port)
        deadline = time.monotonic() + 300
        while True:  # the daemon answers once the model is loaded
            peer.send("/musicgen/ping")
            try:
                peer.expect("/musicgen/pong", timeout=1.0)
                break
            except TimeoutError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise SystemExit(f"the daemon did not come up: {log.read()}") from None
        peer.send("/musicgen/generate", "long", "lofi keys", args.seconds)
        peer.expect("/musicgen/progress", timeout=120, first="long")
        rtts = []
        for _ in range(args.pings):
            started = time.perf_counter()
            peer.send("/musicgen/ping")
            peer.expect("/musicgen/pong", timeout=5)
            rtts.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
        queued = []
        for i in range(10):
            started = time.perf_counter()
            peer.send("/musicgen/generate", f"next{i}", "keys", 1.0)
            peer.expect("/musicgen/queued", timeout=5, first=f"next{i}")
            queued.append((time.perf_counter() - started) * 1000)
        peer.send("/musicgen/cancel", "*")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
    result = {
        "model": args.model, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "ping_ms": {"median": statistics.median(rtts), "p95": _percentile(rtts, 0.95), "max": max(rtts),
                    "count": len(rtts)},
        "queued_ms": {"median": statistics.median(queued), "max": max(queued), "count": len(queued)},
    }
    print(f"control path while {args.model} generates ({result['machine']})")
    print(f"ping -> pong      median {result['ping_ms']['median']:.2f} ms, p95 {result['ping_ms']['p95']:.2f} ms, "
          f"max {result['ping_ms']['max']:.2f} ms ({len(rtts)} pings)")
    print(f"generate -> queued median {result['queued_ms']['median']:.2f} ms, max {result['queued_ms']['max']:.2f} ms")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
