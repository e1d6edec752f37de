"""What the commands tell a new user is true for their case (issue 18's second list).

Real processes for the CLI, real UDP for the daemon's replies, tiny-random.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from bridge.frontends.client import UNREACHABLE_EXIT


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], check=False, capture_output=True, text=True,
                          timeout=240, env=None if env is None else os.environ | env)


def test_a_bad_clip_is_bad_audio_before_an_uncached_model_would_load(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    proc = _cli("continue", str(bad), "--seconds", "1", "--model", "facebook/musicgen-small",
                "--output-dir", str(tmp_path / "out"), env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("musicgen-bridge: bad_audio:")  # not model_error: nothing was loaded
    assert "loading" not in proc.stderr


def test_melody_on_a_model_without_melody_tells_a_one_shot_command_what_to_run(tmp_path, make_clip):
    clip = make_clip(seconds=1.0, rate=32000, channels=1)
    proc = _cli("melody", str(clip), "strings", "--seconds", "1", "--model", "tiny-random", "--quiet",
                "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert "run the command again with --model facebook/musicgen-melody" in error
    assert "restart" not in error


def test_an_output_folder_on_proc_is_named_for_what_it_is(tmp_path):
    proc = _cli("generate", "x", "--seconds", "1", "--model", "tiny-random", "--output-dir", "/proc")
    assert proc.returncode == 9, proc.stderr
    assert "/proc is on a filesystem that holds no files" in proc.stderr
    assert "does not exist" not in proc.stderr


def test_send_wait_to_no_bridge_says_so_without_waiting_for_the_timeout():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))  # bound but never read: nobody answers
        proc = _cli("send", "/musicgen/generate", "", "keys", "4", "--port", str(sink.getsockname()[1]), "--wait")
    assert proc.returncode == UNREACHABLE_EXIT == 69
    assert "no answer from a bridge" in proc.stderr and "within 3 s" in proc.stderr
    assert "is it running" in proc.stderr


_SUMMARY = re.compile(r"seed (\d+): (\d+) segment\(s\), ([\d.]+) s of audio generated in ([\d.]+) s .*: "
                      r"([\d.]+) / ([\d.]+) = ([\d.]+)x real time")


def _jam(tmp_path, name, *extra):
    record = tmp_path / f"{name}.wav"
    proc = _cli("jam", "lofi", "--model", "tiny-random", "--no-play", "--record", str(record), "--for", "2",
                "--bpm", "120", "--bars", "1", "--output-dir", str(tmp_path / name), *extra)
    assert proc.returncode == 0, proc.stderr
    return proc, record


def test_jam_no_play_record_writes_the_take_and_its_summary_adds_up(tmp_path):
    proc, record = _jam(tmp_path, "first")
    take_path = proc.stdout.strip().splitlines()[-1]
    take, rate = sf.read(take_path, always_2d=True)
    recorded, record_rate = sf.read(record, always_2d=True)
    assert record_rate == rate and np.array_equal(recorded, take)  # nothing played: the record is the take
    assert f"recorded: {record}" in proc.stderr
    [summary] = [line for line in proc.stderr.splitlines() if "real time" in line]
    match = _SUMMARY.search(summary)
    assert match, summary
    seed, segments, audio_s, gen_s, a, g, factor = match.groups()
    assert (a, g) == (audio_s, gen_s) and int(segments) == 1  # 1 bar at 120 bpm is 2 s
    assert float(audio_s) == pytest.approx(take.shape[0] / rate, abs=0.005)
    ratio = float(a) / float(g)
    assert float(factor) == pytest.approx(ratio, rel=0.006 / float(g) + 0.006 / float(a), abs=0.006)
    # the seed it printed is the one it used: asked again, it gives the same take
    again, _ = _jam(tmp_path, "again", "--seed", seed)
    assert np.array_equal(sf.read(again.stdout.strip().splitlines()[-1], always_2d=True)[0], take)


def test_jam_record_into_a_missing_folder_is_refused_before_loading(tmp_path):
    proc = _cli("jam", "lofi", "--model", "tiny-random", "--no-play", "--record", str(tmp_path / "no" / "r.wav"),
                "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "loading" not in proc.stderr


def test_jam_start_without_a_device_suggests_play_0(osc_server, tiny_bridge, no_jack):
    _server, client = osc_server(bridge=tiny_bridge)
    client.send("/musicgen/jam/start", "j1", "lofi", "bpm", 120.0, "bars", 1)
    fail = client.expect("/musicgen/fail", lambda m: m.args[1] == "j1", timeout=60)
    assert fail.args[2] == "no_audio_device" and "play 0" in fail.args[3]
    assert "writes files" not in fail.args[3]
    client.send("/musicgen/ping")
    client.expect("/musicgen/pong", timeout=10)


def test_play_looks_for_a_device_before_reading_the_file(osc_server, tmp_path):
    """The file's samples are damaged (NaN): reading it would say bad_audio; the device is checked first."""
    path = tmp_path / "damaged.wav"
    sf.write(path, np.full((32000, 1), np.nan, np.float32), 32000, subtype="FLOAT")
    server, client = osc_server()
    server.app.output._list_outputs = list  # no audio output on this machine
    client.send("/musicgen/play", str(path))
    fail = client.expect("/musicgen/fail", lambda m: m.args[0] == "/musicgen/play", timeout=10)
    assert fail.args[2] == "no_audio_device"


def test_serve_takes_an_audio_device_and_a_job_memory_limit():
    from bridge.frontends.cli import build_parser
    from bridge.frontends.osc.serve import config_from_args

    args = build_parser().parse_args(["serve", "--audio-device", "USB", "--max-job-memory", "2048"])
    config = config_from_args(args)
    assert (config.audio_device, config.max_job_memory) == ("USB", 2048)
