"""The facade on tiny-random: exact lengths, continuation, melody, files and sidecars, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from bridge import tempo
from bridge.app.bridge import Bridge
from bridge.config import Config
from bridge.errors import BadArgs, BadAudio, Cancelled, NotFound


def _run(bridge, mode="text", prompt="lofi", seconds=None, clip=None, **options):
    request = bridge.make_request(mode, prompt, seconds, str(clip) if clip else None, options)
    seen: list[float] = []
    result = bridge.run("t1", request, seen.append, lambda: False)
    return result, seen


def test_seconds_exact_to_the_sample(tiny_bridge):
    result, progress = _run(tiny_bridge, seconds=2.5, seed=1)
    data, rate = sf.read(result.paths[0], always_2d=True)
    assert rate == 32000 and data.shape == (80000, 1)
    assert progress[-1] == 1.0 and progress == sorted(progress)


@pytest.mark.parametrize(("bpm", "bars", "rate"), [(92.0, 2, None), (128.0, 4, 48000), (97.3, 1, 44100)])
def test_bars_exact_to_the_sample(tiny_bridge, bpm, bars, rate):
    options = {"bpm": bpm, "bars": bars, "seed": 2} | ({"sample_rate": rate} if rate else {})
    result, _ = _run(tiny_bridge, **options)
    data, got_rate = sf.read(result.paths[0], always_2d=True)
    want_rate = rate or 32000
    assert got_rate == want_rate
    assert data.shape[0] == tempo.bars_to_samples(bars, bpm, want_rate)
    sidecar = json.loads(result.sidecars[0].read_text())
    assert sidecar["text_sent_to_model"].endswith(f"{bpm:g} bpm")
    assert sidecar["samples"] == data.shape[0]


def test_past_the_30_second_window_exact_length(tiny_bridge):
    result, _ = _run(tiny_bridge, prompt="", bpm=120.0, bars=18, seed=4, guidance=1.0)  # 36 s
    info = sf.info(str(result.paths[0]))
    assert info.frames == tempo.bars_to_samples(18, 120.0, 32000) == 36 * 32000


def test_ends_are_faded_and_never_clip(tiny_bridge):
    result, _ = _run(tiny_bridge, seconds=1.0, seed=3, normalize="peak")
    data, _rate = sf.read(result.paths[0], always_2d=True)
    peak = np.abs(data).max()
    assert 0.85 < peak <= 10 ** (-1 / 20) + 1e-6
    assert abs(data[0, 0]) < 1e-3 and abs(data[-1, 0]) < 1e-3


def test_same_seed_same_audio_and_sidecar_recalls_it(tiny_bridge):
    first, _ = _run(tiny_bridge, seconds=1.0, seed=77, temperature=0.9, top_k=50)
    sidecar = json.loads(first.sidecars[0].read_text())
    assert sidecar["seed"] == 77 and sidecar["model"] == "tiny-random" and sidecar["bridge_version"]
    opts = sidecar["options"]
    again, _ = _run(tiny_bridge, seconds=opts["seconds"], seed=sidecar["seed"], temperature=opts["temperature"],
                    top_k=opts["top_k"])
    a, _ = sf.read(first.paths[0])
    b, _ = sf.read(again.paths[0])
    assert first.paths[0] != again.paths[0]  # one unique file per job
    np.testing.assert_array_equal(a, b)
    other, _ = _run(tiny_bridge, seconds=1.0, seed=78)
    assert not np.array_equal(a, sf.read(other.paths[0])[0])


def test_no_seed_picks_one_and_records_it(tiny_bridge):
    result, _ = _run(tiny_bridge, seconds=0.5)
    assert isinstance(json.loads(result.sidecars[0].read_text())["seed"], int)


def test_variations_write_one_file_each(tiny_bridge):
    result, _ = _run(tiny_bridge, seconds=0.5, variations=3, seed=1, name="take")
    assert [p.name for p in result.paths] == ["take-v1.wav", "take-v2.wav", "take-v3.wav"]
    assert all(sf.info(str(p)).frames == 16000 for p in result.paths)


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1)])
def test_continuation_follows_the_clip(tiny_bridge, make_clip, rate, channels):
    clip = make_clip(seconds=3.0, rate=rate, channels=channels)
    result, _ = _run(tiny_bridge, "continue", "more", 2.0, clip=clip, seed=5)
    data, got_rate = sf.read(result.paths[0], always_2d=True)
    assert got_rate == rate  # sits right after the clip on the same grid
    assert data.shape == (2 * rate, channels)
    sidecar = json.loads(result.sidecars[0].read_text())
    assert sidecar["source_clip"]["sample_rate"] == rate
    assert len(sidecar["source_clip"]["sha256"]) == 64


def test_continuation_in_bars_uses_whole_bar_prompt(tiny_bridge, make_clip):
    clip = make_clip(seconds=12.0, rate=44100, channels=2)
    result, _ = _run(tiny_bridge, "continue", "", None, clip=clip, bpm=120.0, bars=2, seed=5)
    sidecar = json.loads(result.sidecars[0].read_text())
    assert sidecar["prompt_frames"] == 400  # 4 bars of 2 s at 50 frames/s: whole bars near 8 s
    assert sf.info(str(result.paths[0])).frames == tempo.bars_to_samples(2, 120.0, 44100)


def test_include_prompt_keeps_the_original_clip(tiny_bridge, make_clip):
    clip = make_clip(seconds=2.0, rate=44100, channels=2)
    original, _ = sf.read(clip, always_2d=True)
    result, _ = _run(tiny_bridge, "continue", "", 1.0, clip=clip, seed=5, include_prompt=1)
    data, _ = sf.read(result.paths[0], always_2d=True)
    assert data.shape == (original.shape[0] + 44100, 2)
    seam_fade = int(0.05 * 44100)
    np.testing.assert_array_equal(data[: original.shape[0] - seam_fade], original[: original.shape[0] - seam_fade])


def test_melody_mode(tmp_path, melody_engine, make_clip):
    bridge = Bridge(melody_engine, Config(model="tiny-random-melody", output_dir=tmp_path / "out"))
    clip = make_clip(seconds=2.0, rate=22050, channels=1)
    result, _ = _run(bridge, "melody", "jazz trio", None, clip=clip, bpm=100.0, bars=1, seed=1)
    assert sf.info(str(result.paths[0])).frames == tempo.bars_to_samples(1, 100.0, 32000)


def test_melody_on_a_text_model_says_what_to_do(tiny_bridge, make_clip):
    with pytest.raises(BadArgs, match="musicgen-melody"):
        tiny_bridge.make_request("melody", "jazz", 2.0, str(make_clip()), {})


def test_stereo_model_writes_stereo(tmp_path, stereo_engine):
    bridge = Bridge(stereo_engine, Config(model="tiny-random-stereo", output_dir=tmp_path / "out"))
    result, _ = _run(bridge, seconds=0.5, seed=1)
    assert sf.info(str(result.paths[0])).channels == 2


def test_flac_output(tiny_bridge):
    result, _ = _run(tiny_bridge, seconds=0.5, seed=1, format="flac", sample_rate=48000)
    info = sf.info(str(result.paths[0]))
    assert result.paths[0].suffix == ".flac" and info.format == "FLAC" and info.frames == 24000


def test_files_are_written_atomically(tiny_bridge):
    result, _ = _run(tiny_bridge, seconds=0.5, seed=1)
    leftovers = [p.name for p in result.paths[0].parent.iterdir() if p.name.startswith(".partial-")]
    assert leftovers == []


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/b", ".hidden", ""])
def test_names_never_leave_the_output_folder(tiny_bridge, name):
    with pytest.raises(BadArgs, match="plain file name"):
        tiny_bridge.make_request("text", "x", 1.0, None, {"name": name})


def test_bad_clips_are_bad_audio(tiny_bridge, tmp_path, make_clip):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.float32), 44100)
    tiny = make_clip(seconds=0.01, rate=44100, channels=1, name="tiny.wav")
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros((601 * 8000, 1), dtype=np.int16), 8000, subtype="PCM_16")
    for path, message in [(corrupt, "not readable audio"), (empty, "empty"), (tiny, "at least"),
                          (long, "over the 600 s limit")]:
        with pytest.raises(BadAudio, match=message):
            _run(tiny_bridge, "continue", "", 1.0, clip=path)
    with pytest.raises(NotFound, match="does not exist"):
        _run(tiny_bridge, "continue", "", 1.0, clip=tmp_path / "missing.wav")


def test_cancel_is_reported_as_cancelled(tiny_bridge):
    request = tiny_bridge.make_request("text", "x", 5.0, None, {})
    calls = {"n": 0}

    def cancelled() -> bool:
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        tiny_bridge.run("c", request, lambda _f: None, cancelled)
    assert list(tiny_bridge.output_dir.glob("*.wav")) == []
