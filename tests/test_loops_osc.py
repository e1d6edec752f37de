"""Loops and fills over real UDP sockets and from the CLI, on tiny-random."""

from __future__ import annotations

import json
import subprocess
import sys

import soundfile as sf

from bridge.tempo import bars_to_samples


def test_loop_over_udp_is_exact_and_its_sidecar_names_the_winner(osc_server, tiny_bridge):
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/loop", "lp", "warm pads", 0, "bpm", 100.0, "bars", 1, "candidates", 2, "negative",
                "drums", "seed", 5)
    assert client.expect("/musicgen/queued").args == ("lp", 0)
    done = client.expect("/musicgen/done", timeout=120)
    assert done.args[:2] == ("/musicgen/loop", "lp")
    assert sf.info(done.args[2]).frames == bars_to_samples(1, 100.0, 32000)
    sidecar = json.loads(open(done.args[2] + ".json").read())
    assert sidecar["options"]["negative"] == "drums" and len(sidecar["loop"]["candidates"]) == 2


def test_infill_over_udp_and_its_bad_input_answers_on_the_same_channel(osc_server, tiny_bridge, make_clip):
    _server, client = osc_server(bridge=tiny_bridge)
    before = make_clip(seconds=2.0, rate=48000, channels=1, name="before.wav")
    after = make_clip(seconds=2.0, rate=48000, channels=1, name="after.wav")
    client.send("/musicgen/infill", "gap", str(before), str(after), "fill", 0.5, "seed", 2)
    done = client.expect("/musicgen/done", timeout=120)
    assert done.args[:2] == ("/musicgen/infill", "gap")
    info = sf.info(done.args[2])
    assert (info.samplerate, info.channels, info.frames) == (48000, 1, 24000)
    client.send("/musicgen/infill", "tiny", str(before), str(after), "fill", 0.005)
    fail = client.expect("/musicgen/fail")
    assert fail.args[:3] == ("/musicgen/infill", "tiny", "bad_args") and "one codec frame" in fail.args[3]
    client.send("/musicgen/loop", "many", "pads", 4.0, "candidates", 20)
    fail = client.expect("/musicgen/fail")
    assert fail.args[:3] == ("/musicgen/loop", "many", "bad_args") and "candidates must be" in fail.args[3]
    client.send("/musicgen/ping")
    client.expect("/musicgen/pong")  # still serving


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], check=False, capture_output=True, text=True,
                          timeout=240)


def test_cli_loop_and_infill(tmp_path, make_clip):
    out = str(tmp_path / "out")
    proc = _cli("loop", "dusty keys", "--bpm", "120", "--bars", "1", "--candidates", "2", "--negative", "drums",
                "--model", "tiny-random", "--seed", "1", "--output-dir", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    assert sf.info(path).frames == bars_to_samples(1, 120.0, 32000)
    before = make_clip(seconds=2.0, rate=44100, channels=2, name="a.wav")
    after = make_clip(seconds=2.0, rate=44100, channels=2, name="b.wav")
    proc = _cli("infill", str(before), str(after), "--bpm", "120", "--bars", "1", "--model", "tiny-random",
                "--output-dir", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    info = sf.info(proc.stdout.strip().splitlines()[-1])
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, bars_to_samples(1, 120.0, 44100))
    proc = _cli("loop", "x", "--bpm", "120", "--bars", "0", "--model", "tiny-random", "--output-dir", out)
    assert proc.returncode == 2 and "bars 0 is out of range" in proc.stderr
