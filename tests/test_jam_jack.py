"""The jam through a real audio device (JACK's dummy backend): gapless, in time, recorded exactly."""

from __future__ import annotations

import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly


def test_cli_jam_plays_gaplessly_through_jack(jack_server, tmp_path):
    record = tmp_path / "played.wav"
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "jam", "lofi", "--model", "tiny-random", "--bpm", "120", "--bars", "1",
         "--for", "6", "--record", str(record), "--output-dir", str(tmp_path / "out"), "--seed", "3"],
        capture_output=True, text=True, timeout=240, env=jack_server.env, check=False)
    assert proc.returncode == 0, proc.stderr + "\njackd:\n" + jack_server.output()
    assert "underruns: 0" in proc.stderr
    # two bars of run-ahead, so the third is generated while the first plays; a machine slower than
    # real time (a loaded CI box) pre-rolls more, and says so
    preroll = re.search(r"playback began with ([0-9.]+) s queued", proc.stderr)
    assert preroll is not None, proc.stderr
    began = float(preroll.group(1))
    assert began == 4.0 or (began > 4.0 and "pre-rolling" in proc.stderr), proc.stderr
    paths = proc.stdout.strip().splitlines()
    take, rate = sf.read(paths[-1], always_2d=True)
    assert rate == 32000 and take.shape[0] == 3 * 64000  # three whole bars at 120 bpm
    played, device_rate = sf.read(record, always_2d=True)
    assert device_rate == jack_server.sample_rate
    ratio = Fraction(device_rate, rate)
    expected = resample_poly(take[:, 0], ratio.numerator, ratio.denominator)
    # what reached the device is the take, sample for sample: no gap, no click at the bar handover
    assert played.shape[0] == expected.shape[0]
    assert float(np.abs(played[:, 0] - expected).max()) < 1e-3
    assert np.allclose(played[:, 0], played[:, 1])  # mono copied to both sides


def test_jam_without_a_device_says_so(no_jack, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "jam", "lofi", "--model", "tiny-random", "--for", "2",
         "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 8
    assert proc.stderr.strip().splitlines()[-1].startswith("musicgen-bridge: no_audio_device:")
