"""The one-shot CLI as a user runs it: a real process, paths on stdout, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from bridge import tempo


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "bridge.cli", *args], check=False, capture_output=True, text=True,
                          timeout=240, cwd=cwd)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-out")


def test_generate_prints_paths_and_shows_progress(out_dir):
    proc = _cli("generate", "dusty lofi keys", "--bpm", "92", "--bars", "2", "--model", "tiny-random",
                "--seed", "3", "--variations", "2", "--output-dir", str(out_dir))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        assert sf.info(line).frames == tempo.bars_to_samples(2, 92.0, 32000)
    assert "100.0%" in proc.stderr  # the progress bar went to stderr


def test_continue_and_include_prompt(out_dir, make_clip):
    clip = make_clip(seconds=2.0, rate=48000, channels=1)
    proc = _cli("continue", str(clip), "keep the groove", "--seconds", "1.5", "--include-prompt",
                "--model", "tiny-random", "--output-dir", str(out_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip().splitlines()[-1]
    data, rate = sf.read(path, always_2d=True)
    assert rate == 48000 and data.shape == (2 * 48000 + 72000, 1)
    assert proc.stderr == ""


@pytest.mark.parametrize(("args", "code", "words"), [
    (["generate", "x", "--seconds", "-3"], 2, "bad_args"),
    (["generate", "x", "--seconds", "100000"], 2, "out of range"),
    (["generate", "x", "--bogus", "1"], 2, "unrecognized arguments"),
    (["generate", "x", "--bpm", "120"], 2, "both bpm and bars"),
    (["continue", "/no/such/clip.wav", "--seconds", "2"], 3, "does not exist"),
    (["generate", "x", "--seconds", "1", "--model", "tiny-randomm"], 6, "built-in"),
    (["generate", "x", "--seconds", "1", "--model", "/no/such/folder"], 6, "tiny-random"),
])
def test_bad_input_is_one_line_and_non_zero(args, code, words, out_dir):
    proc = _cli(*args, "--output-dir", str(out_dir))
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("musicgen-bridge")]
    assert len(errors) == 1 and words in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupt_clip_is_bad_audio(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    proc = _cli("continue", str(bad), "--seconds", "1", "--model", "tiny-random", "--quiet",
                "--output-dir", str(tmp_path))
    assert proc.returncode == 4 and proc.stderr.startswith("musicgen-bridge: bad_audio:")


def test_melody_cli(tmp_path):
    clip = tmp_path / "melody.wav"
    t = np.arange(32000) / 32000
    sf.write(clip, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 32000)
    proc = _cli("melody", str(clip), "strings", "--seconds", "1", "--model", "tiny-random-melody", "--quiet",
                "--output-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert sf.info(proc.stdout.strip()).frames == 32000
