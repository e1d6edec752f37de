"""A jam synced to an Ableton Link peer, on the JACK dummy device: bar onsets, tempo follow (issue 15).

Run it inside a private network namespace (Link peers find each other by UDP multicast):

    unshare -rn bash -c 'ip link set lo up; ip link set lo multicast on; ip route add 224.0.0.0/4 dev lo;
      python benchmarks/jam_sync.py --bars 16 --change-after 8'

It starts its own ``jackd -d dummy``, a stand-in DAW (``benchmarks/link_peer.py``) at 97 bpm, then the
bridge (tiny-random, ``--link``), and jams with ``sync link``, one bar a segment; after ``--change-after``
segments the DAW goes to 110 bpm. It prints a table (or ``--json``: what the test asserts on).

What is measured, honestly: the playback child records exactly what its callback handed to the device,
frame by frame from its first callback (the device's sample clock). Each segment's first sample is found
in that recording by matching the take's audio (so a misplaced segment shows, whatever the child
claims), and its device frame is turned into a host time by the child's host-time filter as it stood at
the end of the take (a fit of the callback times over the last 512 callbacks). The error is that time
minus the Link session's time of the segment's bar line. What PortAudio reports as the output latency
is part of the filter; the JACK dummy has no real converter, so "heard" means PortAudio's DAC time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

HERE = Path(__file__).resolve().parent
SEARCH = 400  # frames either side of the claimed onset searched in the recording


def _start_jack(rate: int, period: int) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    name = f"mgb-sync-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, JACK_DEFAULT_SERVER=name, JACK_NO_AUDIO_RESERVATION="1")
    jackd = subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(rate), "-p", str(period)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ports = subprocess.run(["jack_lsp", "-s", name], capture_output=True, text=True, env=env, check=False).stdout
        if "system:playback" in ports:
            os.environ.update(JACK_DEFAULT_SERVER=name)
            return jackd, env
        time.sleep(0.1)
    jackd.kill()
    raise RuntimeError("jackd -d dummy did not start")


class Peer:
    """The stand-in DAW, a separate process (started before the bridge's Link exists: spawn, never fork)."""

    def __init__(self, bpm: float) -> None:
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, str(HERE / "link_peer.py"), f"{bpm:g}"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdin is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the Link peer did not start")

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            self.proc.stdout.readline()

    def close(self) -> None:
        try:
            self.say("quit")
        except (BrokenPipeError, OSError):
            pass
        self.proc.wait(10)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def scenario(bars: int, change_after: int, first_bpm: float, second_bpm: float, period: int,
             out: Path, glide_after: int = 2, glide_bars: int = 4, stop_after: int = 0) -> dict[str, Any]:
    from bridge.app.root import App
    from bridge.audio.playback import Player
    from bridge.config import Config

    jackd, _env = _start_jack(48000, period)
    peer = Peer(first_bpm)
    app = None
    try:
        app = App.build(Config(model="tiny-random", output_dir=out, link=True))
        link = app.link
        assert link is not None
        _wait(lambda: link.peers() >= 1 and abs(link.raw_tempo() - first_bpm) < 0.01, 60, "the Link peer")
        if stop_after:
            peer.say("play 1")  # the set plays (Link start/stop sync)
            _wait(link.playing, 20, "the set to play")
        chunks: list[Any] = []
        warnings: list[str] = []
        seen: dict[str, int] = {}

        def watch_tempo() -> None:
            _wait(lambda: abs(link.raw_tempo() - second_bpm) < 0.01, 60, "the new tempo")
            seen["announced"] = len(chunks)
            seen["at_ns"] = link.now_ns()

        def stop_and_start() -> None:
            seen["stopped"] = len(chunks)
            seen["stop_at_ns"] = link.now_ns()
            peer.say("play 0")
            time.sleep(1.5)  # the set stays stopped a while (the stimulus; nothing is asserted on this time)
            peer.say("play 1")

        def on_chunk(chunk: Any) -> None:
            chunks.append(chunk)
            if len(chunks) == stop_after:
                threading.Thread(target=stop_and_start, daemon=True).start()
            if len(chunks) == glide_after:
                app.bridge.jam.set({"prompt": "bright bells", "glide_bars": glide_bars})
            if len(chunks) == change_after:
                threading.Thread(target=watch_tempo, daemon=True).start()
                peer.say(f"tempo {second_bpm:g}")

        record = out / "played.wav"
        request = app.bridge.make_request("jam", "lofi", None, None, {"sync": "link", "bars": 1, "play": True,
                                                                      "seed": 5})
        bar_seconds = 4 * 60.0 / first_bpm
        request = dataclasses.replace(request, seconds=bars * bar_seconds - 1e-6, extra={"record": str(record)})
        result = app.jam.run(app.bridge.engine, "sync", request, lambda: False, on_chunk=on_chunk,
                             on_warning=warnings.append)
        player = app.output.player()
        if not isinstance(player, Player):  # the measure reads the PortAudio child's clock fit and callbacks
            raise RuntimeError(f"the bridge played through {type(player).__name__}, not the PortAudio player")
        take = result.take
        if take is None:
            raise RuntimeError("the sync jam returned no take to measure")
        report = _analyse(take, chunks, seen, warnings, record, player.clock_line, player.callback_times,
                          app.bridge.engine.sample_rate, first_bpm, second_bpm, change_after)
        frame_rate = app.bridge.engine.loaded.frame_rate
        report["glide_per_bar"] = _glide_per_bar(take.glide_log, round(frame_rate * 4 * 60.0 / first_bpm))
        report["glide_bars"] = glide_bars
        return report
    finally:
        if app is not None:
            app.close()
        peer.close()
        jackd.terminate()
        jackd.wait(10)


def _analyse(take: Any, chunks: list[Any], seen: dict[str, int], warnings: list[str], record: Path,
             line: Any, times: np.ndarray, rate: int, first_bpm: float, second_bpm: float,
             change_after: int) -> dict[str, Any]:
    played, device_rate = sf.read(str(record), always_2d=True, dtype="float32")
    whole, _ = sf.read(str(take.path), always_2d=True, dtype="float32")
    ratio = Fraction(device_rate, rate)
    stream = resample_poly(whole[:, 0], ratio.numerator, ratio.denominator)
    _f0, _t0, slope, residual = line
    segments = []
    start = 0
    by_ring = {p.ring_frame: p for p in take.placements if p.ring_frame >= 0}
    flushes = [p.device_frame for p in take.placements if p.ring_frame < 0]
    for i, chunk in enumerate(chunks):
        samples = int(sf.info(str(chunk.path)).frames)
        placed = by_ring.get(round(start * ratio))  # none: its bar line came after the set stopped (dropped)
        entry: dict[str, Any] = {"index": chunk.index, "beat": chunk.beat, "bpm": take.segment_bpm[i],
                                 "start_sample": start, "samples": samples, "dropped": placed is None}
        start += samples
        if placed is not None:
            ring, device, target, host_ns = placed
            probe = stream[ring:ring + 2048]
            lo = max(0, device - SEARCH)
            window = played[lo:device + SEARCH + probe.size, 0]
            errs = [float(np.abs(window[k:k + probe.size] - probe).max()) if window[k:k + probe.size].size == probe.size
                    else float("inf") for k in range(0, min(2 * SEARCH, window.size - probe.size) + 1)]
            best = int(np.argmin(errs))
            found = lo + best
            heard_ns = _local_time(times, found, device_rate)
            entry.update(ring_frame=ring, device_frame=device, target_frame=target, found_frame=found,
                         match_error=errs[best], bar_time_ns=host_ns, onset_error_ms=(heard_ns - host_ns) / 1e6,
                         generation_seconds=take.generation_seconds[i])
        segments.append(entry)
    silent_after_stop = None
    if flushes:
        resumed = next((s["device_frame"] for s in segments if s.get("device_frame", 0) > flushes[0]), len(played))
        silent_after_stop = bool(np.all(played[flushes[0]:resumed] == 0.0))
    return {"segments": segments, "warnings": warnings, "underruns": take.underruns, "flush_frames": flushes,
            "silent_after_stop": silent_after_stop, "stopped_after_announced": seen.get("stopped"),
            "stop_at_ns": seen.get("stop_at_ns"),
            "change_after": change_after, "seen_after_announced": seen.get("announced"),
            "seen_at_ns": seen.get("at_ns"),
            "first_bpm": first_bpm, "second_bpm": second_bpm, "sample_rate": rate, "device_rate": device_rate,
            "filter_ns_per_frame": slope, "filter_residual_ms": residual / 1e6,
            "device_ns_per_frame_near_filter": _ns_per_frame(times, _f0, device_rate),
            "device_ns_per_frame_whole_take": _ns_per_frame(times, None, device_rate)}


def _ns_per_frame(times: np.ndarray, centre: float | None, rate: int) -> float:
    """The device clock as its callbacks ran it (ns per frame): over the second either side of frame
    ``centre`` (the middle of the filter's last window), or over the whole take. The JACK dummy driver
    sleeps between periods, so on a busy machine its clock runs slow by a fraction of a percent: the
    filter is judged against this, not against the nominal rate."""
    return _callback_line(times, centre, rate)[0]


def _glide_per_bar(log: list[tuple[int, float]], bar_frames: int) -> list[float]:
    """The mean distance of the conditioning the decoder got from the new prompt's, bar by bar of the glide
    (1: the old prompt's, 0: the new one's), from the jam's own log of what it set."""
    if not log:
        return []
    first = log[0][0]
    bars: dict[int, list[float]] = {}
    for frame, distance in log:
        bars.setdefault((frame - first) // bar_frames, []).append(distance)
    return [round(sum(v) / len(v), 3) for _, v in sorted(bars.items())]


def _local_time(times: np.ndarray, frame: int, rate: int) -> float:
    """When device frame ``frame`` was heard: a line fitted to the callbacks within a second either side of it
    (after the fact, from both sides: an estimate the online filter, which sees only the past, did not have)."""
    return _callback_line(times, frame, rate)[1]


def _callback_line(times: np.ndarray, centre: float | None, rate: int) -> tuple[float, float]:
    """(ns per frame, host ns at ``centre``): a line fitted after the fact to the callbacks' (device frame,
    host ns) within a second either side of frame ``centre``, or to all of them (then at frame 0)."""
    near = times if centre is None else times[np.abs(times[:, 0] - centre) <= rate]
    frames = near[:, 0].astype(np.float64) - (centre or 0.0)
    hosts = near[:, 1].astype(np.float64)
    slope, intercept = np.polyfit(frames, hosts - hosts.mean(), 1)
    return float(slope), float(intercept + hosts.mean())


def follow(report: dict[str, Any]) -> tuple[int | None, int | None]:
    """Segments made after the bridge saw the new tempo until one is made at it (1: the very next one), and
    bar lines after that moment until one starts a segment at the new tempo (1: the first bar line)."""
    seen, at_ns = report["seen_after_announced"], report["seen_at_ns"]
    second = [s for s in report["segments"] if s["bpm"] == report["second_bpm"]]
    if not second or seen is None:
        return None, None
    made = second[0]["index"] - seen + 1
    after = [s for s in report["segments"] if s.get("bar_time_ns", 0) > at_ns]
    heard = next((i + 1 for i, s in enumerate(after) if s["bpm"] == report["second_bpm"]), None)
    return made, heard


def table(report: dict[str, Any]) -> str:
    segs = [s for s in report["segments"] if "onset_error_ms" in s]
    errors = [abs(s["onset_error_ms"]) for s in segs]
    made, heard = follow(report)
    return "\n".join([
        "| measure | value | goal |", "|---|---|---|",
        f"| bar-onset error, median over {len(errors)} bars | {statistics.median(errors):.3f} ms | <= 1 ms |",
        f"| bar-onset error, worst | {max(errors):.3f} ms | <= 3 ms |",
        f"| tempo change: segments made after it until one at the new tempo | {made} | 1 |",
        f"| tempo change: bar lines after it until the new tempo is heard | {heard} | 1 |",
        f"| host-time filter: callback jitter it removes (RMS) | {report['filter_residual_ms']:.3f} ms | |",
        f"| device clock from the filter | {1e9 / report['filter_ns_per_frame']:.2f} Hz | "
        f"{1e9 / report['device_ns_per_frame_near_filter']:.2f} Hz (its callbacks, same window) |",
        f"| device clock over the whole take (its callbacks) | "
        f"{1e9 / report['device_ns_per_frame_whole_take']:.2f} Hz | {report['device_rate']} nominal |",
        f"| glide over {report['glide_bars']} bars: distance from the new prompt's conditioning, per bar | "
        f"{', '.join(f'{d:.2f}' for d in report['glide_per_bar'])} | decreasing |",
        f"| underruns | {report['underruns']} | 0 |",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=16)
    parser.add_argument("--change-after", type=int, default=8)
    parser.add_argument("--period", type=int, default=256, help="JACK dummy period (frames)")
    parser.add_argument("--stop-after", type=int, default=0, help="stop the set (Link start/stop) after this many "
                        "segments and start it again 1.5 s later (0: never)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="keep the files here")
    args = parser.parse_args()
    if shutil.which("jackd") is None:
        sys.stderr.write("jam_sync needs jackd (jackd2)\n")
        return 2
    out = args.keep or Path(tempfile.mkdtemp(prefix="mgb-sync-"))
    report = scenario(args.bars, args.change_after, 97.0, 110.0, args.period, out, stop_after=args.stop_after)
    print(json.dumps(report) if args.json else table(report))
    if args.keep is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
