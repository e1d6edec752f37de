"""Soak: a real daemon driven for many minutes with mixed jobs, cancels, bad input and a jam.

Not a CI test. Starts ``python -m bridge.cli serve --model tiny-random`` on a free loopback port
with a fresh output folder, drives it over UDP from this process for ``--minutes`` (default 30),
and tracks every job the daemon accepted (``/musicgen/queued``) until its ``done`` or ``fail``.
Then it waits for the last ends, stops the daemon and reports: the daemon's RSS, threads and open
files over time (``/proc/PID``), jobs accepted and ended, replies lost (accepted without an end:
the target is 0), duplicate ends, refusals, ping latency percentiles and the daemon's log lines.
Prints a table; ``--json FILE`` keeps everything (default: ``soak.json`` in the work folder).
``--hostile`` adds the attack mix of ``soak_hostile.py`` (and a second, token-guarded daemon).

    python benchmarks/soak.py --minutes 30 --json benchmarks/results/cpu-soak-tiny-random-30min.json

Only this machine is sent to; requests are paced at ``--rate`` per second and at most
``--max-active`` jobs are outstanding, so the queue never fills on purpose.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder
from soak_hostile import Hostile
from soak_table import print_hostile, print_table

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
END_ADDRESSES = ("/musicgen/done", "/musicgen/fail")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _proc_facts(pid: int) -> dict[str, Any] | None:
    """RSS and peak RSS (MB), threads and open file descriptors of ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            values[key] = int(rest.split()[0])
    return {"rss_mb": values.get("VmRSS", 0) / 1024, "peak_rss_mb": values.get("VmHWM", 0) / 1024,
            "threads": values.get("Threads", 0), "fds": fds}


def _presets(folder: Path) -> list[tuple[str, str]]:
    """(bank, preset) pairs of the project's banks; empty when they do not read."""
    pairs = []
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and isinstance(data.get("presets"), dict):
            bank = str(data.get("bank", path.stem))
            pairs += [(bank, str(name)) for name in data["presets"]]
    return pairs


@dataclass
class Tracked:
    """One job request the soak sent."""

    kind: str
    address: str
    sent: float
    asked_seconds: float | None = None
    clip: str | None = None
    expect: str = "done"  # done | cancelled-or-done | refused
    queued: float | None = None
    ended: float | None = None
    end: list[Any] = field(default_factory=list)
    ends: int = 0


class Soak:
    def __init__(self, args: argparse.Namespace, daemon_pid: int, port: int, sock: socket.socket,
                 out: Path) -> None:
        self.args = args
        self.pid = daemon_pid
        self.port = port
        self.sock = sock
        self.out = out
        self.rng = random.Random(args.seed)
        self.presets = _presets(ROOT / "presets")
        self.jobs: dict[str, Tracked] = {}
        self.numbers = 0
        self.results: deque[str] = deque()
        self.ping_sent: float | None = None
        self.ping_ms: list[float] = []
        self.pings_lost = 0
        self.garbage_sent = 0
        self.garbage_answered = 0
        self.unknown_replies: Counter[str] = Counter()
        self.stray_ends = 0
        self.cancels_sent = 0
        self.late_cancels = 0
        self.pending_cancels: deque[tuple[float, str]] = deque()
        self.jam: dict[str, Any] | None = None
        self.jams_started = 0
        self.jam_segments = 0
        self.wrong_lengths: list[str] = []
        self.samples: list[dict[str, Any]] = []
        self.started = time.monotonic()
        self.sent_messages = 0
        self.status_seen = 0

    # -- sending ----------------------------------------------------------------------------
    def send(self, address: str, *args: Any) -> None:
        builder = OscMessageBuilder(address=address)
        for arg in args:
            builder.add_arg(arg)
        self.send_raw(builder.build().dgram)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, (HOST, self.port))
        self.sent_messages += 1

    def new_id(self, kind: str) -> str:
        self.numbers += 1
        return f"soak-{kind}-{self.numbers}"

    def active(self) -> int:
        return sum(1 for t in self.jobs.values() if t.expect != "refused" and t.ended is None
                   and (t.queued is not None or time.monotonic() - t.sent < 5))

    def submit(self, kind: str, address: str, *args: Any, asked: float | None = None, clip: str | None = None,
               expect: str = "done") -> str:
        job_id = self.new_id(kind)
        self.jobs[job_id] = Tracked(kind=kind, address=address, sent=time.monotonic(), asked_seconds=asked, clip=clip,
                                    expect=expect)
        self.send(address, job_id, *args)
        return job_id

    def act(self) -> None:
        """One paced action: a job of some kind, a cancel, or bad input."""
        roll = self.rng.random()
        seconds = round(self.rng.uniform(0.5, 2.0), 2)
        if roll < 0.30:
            self.submit("generate", "/musicgen/generate", "soak keys", seconds, "seed", self.rng.randrange(1000),
                        asked=seconds)
        elif roll < 0.45 and self.results:
            clip = self.rng.choice(list(self.results)[-10:])
            self.submit("continue", "/musicgen/continue", clip, "more keys", seconds, asked=seconds, clip=clip)
        elif roll < 0.55 and self.presets:
            bank, preset = self.rng.choice(self.presets)
            self.submit("preset", "/musicgen/preset", bank, preset, "bars", 1, "bpm", 120.0, asked=2.0)
        elif roll < 0.65:
            self.submit("stream", "/musicgen/generate", "streamed keys", seconds, "stream", 1, asked=seconds)
        elif roll < 0.75:
            job_id = self.submit("cancel", "/musicgen/generate", "cancel me", 8.0, asked=8.0,
                                 expect="cancelled-or-done")
            self.pending_cancels.append((time.monotonic() + self.rng.uniform(0.05, 1.0), job_id))
        elif roll < 0.80:
            self.submit("bad-option", "/musicgen/generate", "keys", 1.0, "colour", "red", expect="refused")
        elif roll < 0.85:
            self.submit("missing-clip", "/musicgen/continue", str(self.out / "no-such-clip.wav"), "keys", 1.0,
                        expect="refused")
        elif roll < 0.92:
            self.garbage_sent += 1
            self.send_raw(bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 64))))
        else:
            self.send("/musicgen/nope", 1)
            self.garbage_sent += 1

    # -- receiving --------------------------------------------------------------------------
    def receive(self, timeout: float) -> None:
        readable, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        while readable:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return
            try:
                message = OscMessage(data)
            except Exception:  # noqa: BLE001 - a reply we cannot parse is counted, not fatal
                self.unknown_replies["(unparsable)"] += 1
            else:
                self.on_message(message.address, list(message.params))
            readable, _, _ = select.select([self.sock], [], [], 0)

    def on_message(self, address: str, params: list[Any]) -> None:
        now = time.monotonic()
        if address == "/musicgen/pong":
            if self.ping_sent is not None:
                self.ping_ms.append((now - self.ping_sent) * 1000)
                self.ping_sent = None
            return
        if address == "/musicgen/status":
            self.status_seen += 1
            return
        if address in ("/musicgen/progress", "/musicgen/chunk", "/musicgen/warning"):
            return
        if address == "/musicgen/jam/segment":
            self.jam_segments += 1
            if self.jam is not None and params and params[0] == self.jam["id"]:
                self.jam["segments"] += 1
            return
        if address == "/musicgen/queued":
            tracked = self.jobs.get(str(params[0])) if params else None
            if tracked is not None:
                tracked.queued = now
            return
        if address in END_ADDRESSES:
            job_id = str(params[1]) if len(params) > 1 else ""
            tracked = self.jobs.get(job_id)
            if tracked is not None and params[0] != tracked.address:
                # about another request naming this job: a cancel that came too late (not_found)
                self.late_cancels += params[0] == "/musicgen/cancel"
                return
            if tracked is None:
                if job_id == "" and address == "/musicgen/fail":
                    self.garbage_answered += 1
                else:
                    self.stray_ends += 1
                return
            tracked.ends += 1
            if tracked.ended is None:
                tracked.ended = now
                tracked.end = [address, *params[2:]]
                self.on_end(job_id, tracked, address, params)
            return
        self.unknown_replies[address] += 1

    def on_end(self, job_id: str, tracked: Tracked, address: str, params: list[Any]) -> None:
        if address == "/musicgen/done" and tracked.kind in ("generate", "stream", "continue", "cancel"):
            path, seconds = str(params[2]), float(params[3])
            if tracked.asked_seconds is not None and abs(seconds - tracked.asked_seconds) > 1e-3:
                self.wrong_lengths.append(f"{job_id}: asked {tracked.asked_seconds} s, got {seconds} s")
            if tracked.kind == "generate":
                self.results.append(path)
                self.prune()
        if self.jam is not None and job_id == self.jam["id"]:
            self.jam = None

    def prune(self) -> None:
        """Keep the output folder small: forget results past the last 20 that no unfinished job reads."""
        in_use = {t.clip for t in self.jobs.values() if t.clip and t.ended is None}
        while len(self.results) > 20:
            old = self.results.popleft()
            if old in in_use:
                self.results.append(old)
                break
            for victim in (Path(old), Path(old + ".json")):
                with contextlib.suppress(OSError):
                    victim.unlink()

    # -- the run ----------------------------------------------------------------------------
    def sample(self) -> None:
        facts = _proc_facts(self.pid)
        if facts is not None:
            self.samples.append({"t": round(time.monotonic() - self.started, 1), **facts})

    def run(self) -> None:
        args = self.args
        end = self.started + args.minutes * 60
        next_act = next_ping = next_status = next_sample = self.started
        next_jam = self.started + min(args.jam_every, 20.0)
        gap = 1.0 / args.rate
        while (now := time.monotonic()) < end:
            if now >= next_sample:
                self.sample()
                next_sample = now + args.sample_every
            if now >= next_ping:
                if self.ping_sent is not None:
                    self.pings_lost += 1
                self.ping_sent = time.monotonic()
                self.send("/musicgen/ping")
                next_ping = now + 0.5
            if now >= next_status:
                self.send("/musicgen/status")
                next_status = now + 5.0
            while self.pending_cancels and self.pending_cancels[0][0] <= now:
                _, job_id = self.pending_cancels.popleft()
                self.send("/musicgen/cancel", job_id)
                self.cancels_sent += 1
            if self.jam is None and now >= next_jam and self.active() == 0:
                job_id = self.submit("jam", "/musicgen/jam/start", "soak jam", "bpm", 120.0, "bars", 1, "play", 0)
                self.jam = {"id": job_id, "started": now, "segments": 0, "stop_sent": False}
                self.jams_started += 1
                next_jam = now + args.jam_every
            elif self.jam is not None:
                if not self.jam["stop_sent"] and (self.jam["segments"] >= 3 or now - self.jam["started"] > 60):
                    self.send("/musicgen/jam/stop")
                    self.jam["stop_sent"] = True
            elif now >= next_act and now < next_jam and self.active() < args.max_active:
                self.act()
                next_act = now + gap
            self.receive(0.02)

    def drain(self, timeout: float) -> None:
        """After the run: send nothing new (but a pending jam stop) and wait for the ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.jam is not None and not self.jam["stop_sent"]:
                self.send("/musicgen/jam/stop")
                self.jam["stop_sent"] = True
            while self.pending_cancels:
                _, job_id = self.pending_cancels.popleft()
                self.send("/musicgen/cancel", job_id)
                self.cancels_sent += 1
            now = time.monotonic()
            if all(t.ended is not None for t in self.jobs.values() if t.queued is not None or now - t.sent < 5):
                break
            self.receive(0.1)
        self.receive(0.5)  # anything late, e.g. a duplicate end
        self.sample()

    # -- the report -------------------------------------------------------------------------
    def report(self, log_text: str, exit_code: int | None) -> dict[str, Any]:
        accepted = {k: t for k, t in self.jobs.items() if t.queued is not None}
        lost = sorted(k for k, t in accepted.items() if t.ended is None)
        by_kind: dict[str, Counter[str]] = {}
        for t in self.jobs.values():
            if t.queued is not None:
                outcome = "lost" if t.ended is None else ("done" if t.end[0] == "/musicgen/done" else
                                                           f"fail {t.end[1]}")
            elif t.ended is not None:
                outcome = f"refused {t.end[1]}"
            else:
                outcome = "unanswered"
            by_kind.setdefault(t.kind, Counter())[outcome] += 1
        unexpected = sorted(
            f"{k} ({t.kind}): {t.end[1]} {t.end[2]}" for k, t in accepted.items()
            if t.ended is not None and t.end[0] == "/musicgen/fail"
            and not (t.expect == "cancelled-or-done" and t.end[1] == "cancelled"))
        log_lines = [line for line in log_text.splitlines() if line.strip()]
        rss = [s["rss_mb"] for s in self.samples]
        result = {
            "model": self.args.model, "minutes": self.args.minutes, "rate_per_s": self.args.rate,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "messages_sent": self.sent_messages,
            "jobs": {"sent": len(self.jobs), "accepted": len(accepted),
                     "ended": sum(1 for t in accepted.values() if t.ended is not None),
                     "lost": lost, "duplicate_ends": sum(max(0, t.ends - 1) for t in self.jobs.values()),
                     "jobs_ended_twice": sorted(k for k, t in self.jobs.items() if t.ends > 1),
                     "unanswered_requests": sorted(k for k, t in self.jobs.items()
                                                   if t.queued is None and t.ended is None),
                     "unexpected_failures": unexpected, "wrong_lengths": self.wrong_lengths,
                     "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())}},
            "cancels_sent": self.cancels_sent, "cancels_too_late": self.late_cancels,
            "garbage_sent": self.garbage_sent,
            "garbage_answered": self.garbage_answered, "stray_ends": self.stray_ends,
            "unknown_replies": dict(self.unknown_replies),
            "jams": {"started": self.jams_started, "segments": self.jam_segments},
            "ping_ms": {"count": len(self.ping_ms), "lost": self.pings_lost,
                        "p50": _percentile(self.ping_ms, 0.50), "p95": _percentile(self.ping_ms, 0.95),
                        "p99": _percentile(self.ping_ms, 0.99), "max": max(self.ping_ms, default=None)},
            "rss_mb": {"first": rss[0] if rss else None, "last": rss[-1] if rss else None,
                       "max": max(rss, default=None),
                       "peak": self.samples[-1]["peak_rss_mb"] if self.samples else None},
            "samples": self.samples,
            "daemon": {"log_lines": len(log_lines), "tracebacks": log_text.count("Traceback"),
                       "log_tail": log_lines[-20:], "exit_code": exit_code},
        }
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to drive the daemon (default 30)")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--rate", type=float, default=4.0, help="job requests and bad input per second, at most")
    parser.add_argument("--max-active", type=int, default=4, help="jobs outstanding at once, at most")
    parser.add_argument("--jam-every", type=float, default=120.0, help="seconds between jam start/stop cycles")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the last ends")
    parser.add_argument("--seed", type=int, default=12, help="seed of the request mix")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (default: the work folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (output, daemon log)")
    parser.add_argument("--hostile", type=float, default=0.0, metavar="RATE",
                        help="also send attack packets at RATE per second (see soak_hostile.py)")
    args = parser.parse_args()
    if args.minutes <= 0 or args.rate <= 0 or args.max_active < 1:
        parser.error("--minutes and --rate must be above 0, --max-active 1 or more")

    work = Path(tempfile.mkdtemp(prefix="mgb-soak-"))
    out = work / "out"
    port, reply_port = _free_port(), _free_port()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, reply_port))  # replies go to the sender's host at the reply port
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    log_path = work / "daemon.log"
    log_file = log_path.open("w+")  # a file, not a pipe: a pipe nobody reads could fill and stall the daemon
    daemon = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--model", args.model, "--host", HOST, "--port", str(port),
         "--reply-port", str(reply_port), "--output-dir", str(out)], stdout=log_file, stderr=log_file, cwd=ROOT)
    exit_code: int | None = None
    hostile = Hostile(port, reply_port, args.hostile, args.seed, work, args.model) if args.hostile > 0 else None
    hostile_report = None
    try:
        soak = Soak(args, daemon.pid, port, sock, out)
        deadline = time.monotonic() + 300
        while not soak.ping_ms:  # the daemon answers once the model is loaded
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not come up:\n{log_path.read_text()}")
            soak.ping_sent = time.monotonic()
            soak.send("/musicgen/ping")
            soak.receive(1.0)
        soak.ping_ms.clear()
        if hostile is not None:
            hostile.start()
        soak.started = time.monotonic()
        soak.run()
        if hostile is not None:
            hostile_report = hostile.stop()
        soak.drain(args.drain)
    finally:
        if hostile is not None and hostile_report is None:
            hostile.stop()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                exit_code = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                exit_code = daemon.wait()
        else:
            exit_code = daemon.returncode
        sock.close()
        log_file.close()
    result = soak.report(log_path.read_text(errors="replace"), exit_code)
    if hostile_report is not None:
        result["hostile"] = hostile_report
    json_path = args.json if args.json is not None else work / "soak.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    if hostile_report is not None:
        print_hostile(hostile_report)
    print(f"\nJSON: {json_path}" + (f"; work folder kept: {work}" if args.keep else ""))
    if not args.keep:
        if args.json is not None or json_path.parent != work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
    return 1 if result["jobs"]["lost"] or result["jobs"]["duplicate_ends"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
