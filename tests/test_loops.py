"""Loops and fills on tiny-random: exact lengths, the wrap and the seams, the bridge's score, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from bridge import tempo
from bridge.app.loops import mend_seams
from bridge.engine.decoding import ReferenceStepper, Sampling, guided_logits
from bridge.engine.loops import circular_decode, head_frames, head_needed, sample_bridges
from bridge.errors import BadArgs, BadAudio


def _run(bridge, mode, prompt, seconds=None, clip=None, after=None, **options):
    request = bridge.make_request(mode, prompt, seconds, str(clip) if clip else None, options,
                                  clip_after=str(after) if after else None)
    seen: list[float] = []
    result = bridge.run("t1", request, seen.append, lambda: False)
    return result, seen


def _jumps(x):
    return np.abs(np.diff(x, axis=-1)).max(axis=0)


@pytest.mark.parametrize(("bpm", "bars", "rate"), [(90.0, 1, None), (128.0, 2, 48000)])
def test_a_loop_is_exactly_its_bars_and_the_sidecar_names_the_winner(tiny_bridge, bpm, bars, rate):
    options = {"bpm": bpm, "bars": bars, "seed": 4, "candidates": 3} | ({"sample_rate": rate} if rate else {})
    result, progress = _run(tiny_bridge, "loop", "lofi", **options)
    data, got_rate = sf.read(result.paths[0], always_2d=True)
    want_rate = rate or 32000
    assert got_rate == want_rate and data.shape[0] == tempo.bars_to_samples(bars, bpm, want_rate)
    record = json.loads(result.sidecars[0].read_text())
    loop = record["loop"]
    assert len(loop["candidates"]) == 3 and loop["winner"] == int(np.argmax(loop["candidates"]))
    assert loop["head_tokens"] > 0 and record["mode"] == "loop" and record["options"]["candidates"] == 3
    assert progress[-1] == 1.0 and progress == sorted(progress)


def test_the_loops_wrap_is_no_bigger_a_step_than_its_inside(tiny_bridge):
    result, _ = _run(tiny_bridge, "loop", "lofi", bpm=97.0, bars=1, seed=2)
    data, _ = sf.read(result.paths[0], always_2d=True)
    x = data.T
    inside = _jumps(x)
    wrap = float(np.abs(x[:, 0] - x[:, -1]).max())
    assert wrap <= np.percentile(inside, 99)


def test_circular_decode_makes_the_wrap_the_codecs_own_next_sample(tiny_engine):
    codes = torch.randint(0, 2048, (1, 4, 60))
    loop = circular_decode(tiny_engine, codes)
    hop = tiny_engine.hop
    assert loop.shape == (1, 60 * hop)
    context = 50
    decoded = tiny_engine.decode(torch.cat([codes[:, :, -context:], codes, codes[:, :, :context]], dim=-1))[0]
    after_end = decoded[:, (context + 60) * hop]
    np.testing.assert_allclose(loop[:, 0], after_end, atol=1e-6)  # the wrap: end -> the codec's next sample
    np.testing.assert_allclose(loop[:, -1], decoded[:, (context + 60) * hop - 1], atol=1e-6)
    middle = slice(hop * 5, hop * 55)
    np.testing.assert_allclose(loop[:, middle], decoded[:, context * hop :][:, middle], atol=1e-6)


def _delayed(codes, delays, pad):
    """The delay pattern of ``codes`` (1, K, T): position p of codebook k holds frame p - 1 - delay_k."""
    k_books, frames = codes.shape[1], codes.shape[2]
    seq = torch.full((1, k_books, frames + max(delays) + 1), pad, dtype=torch.long)
    for k, d in enumerate(delays):
        seq[0, k, 1 + d : 1 + d + frames] = codes[0, k]
    return seq


@torch.inference_mode()
def test_the_bridge_score_is_the_teacher_forced_likelihood_of_what_follows(tiny_engine):
    eng = tiny_engine
    sampling = Sampling(guidance=3.0)
    context = torch.randint(0, 2048, (1, 4, 12))
    head = torch.randint(0, 2048, (1, 4, head_needed(eng)))
    generator = torch.Generator().manual_seed(1)
    choice = sample_bridges(eng, "lofi", "drums", sampling, generator, context, 6, head, 3)
    assert choice.bridges.shape == (3, 4, 6) and len(choice.scores) == 3
    assert choice.winner == int(np.argmax(choice.scores))
    scored = head_frames(eng)
    assert choice.head_tokens == scored * 4
    loop = eng.loop
    delays = loop.delays
    cond = eng.condition("lofi", 1, sampling, None, "drums")
    for i in range(3):
        codes = torch.cat([context, choice.bridges[i : i + 1], head], dim=-1)
        seq = _delayed(codes, delays, loop.pad)
        step = ReferenceStepper(eng.model.decoder, cond, loop.num_codebooks)  # transformers' own decoder
        start = 12 + 6
        total, count = 0.0, 0
        first = start + 1
        logits = step(seq[:, :, :first].repeat(2, 1, 1))
        for pos in range(first, start + scored + max(delays) + 1):
            if pos > first:
                logits = step(seq[:, :, pos - 1 : pos].repeat(2, 1, 1))
            logp = torch.log_softmax(guided_logits(logits, 1, 3.0), dim=-1)[0]
            for k, d in enumerate(delays):
                frame = pos - 1 - d
                if start <= frame < start + scored:
                    total += float(logp[k, seq[0, k, pos]])
                    count += 1
        assert count == choice.head_tokens
        assert abs(total / count - choice.scores[i]) < 1e-3


def test_mend_seams_steps_from_each_clip_as_the_codec_steps():
    rng = np.random.default_rng(0)
    wave = np.cumsum(rng.standard_normal((2, 3000)), axis=-1).astype(np.float32) * 0.01
    before = rng.standard_normal((2, 500)).astype(np.float32)
    after = rng.standard_normal((2, 500)).astype(np.float32)
    seam, samples = 1000, 1200
    fill = mend_seams(wave, seam, samples, before, after, 64)
    assert fill.shape == (2, samples)
    # first seam: from before's last sample, the codec's own step at that place
    np.testing.assert_allclose(fill[:, 0] - before[:, -1], wave[:, seam] - wave[:, seam - 1], atol=1e-5)
    # second seam: into after's first sample, the codec's own step at that place
    end = seam + samples
    np.testing.assert_allclose(after[:, 0] - fill[:, -1], wave[:, end] - wave[:, end - 1], atol=1e-5)
    np.testing.assert_array_equal(fill[:, 64:-64], wave[:, seam + 64 : end - 64])  # the middle untouched


@pytest.mark.parametrize(("rate2", "channels2"), [(44100, 2), (48000, 1)])
def test_a_fill_is_exactly_its_length_at_the_first_clips_rate_and_keeps_the_clips(tiny_bridge, make_clip, rate2,
                                                                                    channels2):
    before = make_clip(seconds=2.0, rate=44100, channels=2, name="before.wav")
    after = make_clip(seconds=1.5, rate=rate2, channels=channels2, name="after.wav")
    alone, _ = _run(tiny_bridge, "infill", "lofi", 0.75, clip=before, after=after, seed=3, candidates=2)
    data, rate = sf.read(alone.paths[0], always_2d=True)
    assert rate == 44100 and data.shape == (round(0.75 * 44100), 2)
    record = json.loads(alone.sidecars[0].read_text())["infill"]
    assert len(record["candidates"]) == 2 and record["winner"] == int(np.argmax(record["candidates"]))
    converted = (rate2, channels2) != (44100, 2)
    assert ("converted_to" in record["after"]) == converted and "converted_to" not in record["before"]
    whole, _ = _run(tiny_bridge, "infill", "lofi", 0.75, clip=before, after=after, seed=3, candidates=2,
                    include_prompt=1)
    joined, _ = sf.read(whole.paths[0], always_2d=True, dtype="float32")
    first, _ = sf.read(before, always_2d=True, dtype="float32")
    second, _ = sf.read(after, always_2d=True, dtype="float32")
    fill_end = first.shape[0] + data.shape[0]
    np.testing.assert_array_equal(joined[: first.shape[0]], first)  # the user's audio, bit for bit
    np.testing.assert_allclose(joined[first.shape[0] : fill_end], data, atol=1e-4)
    if not converted:
        np.testing.assert_array_equal(joined[fill_end:], second)
    else:
        assert joined.shape[0] == fill_end + round(1.5 * 44100)
    inside = _jumps(joined[: first.shape[0]].T)
    for seam in (first.shape[0], fill_end):
        step = float(np.abs(joined[seam] - joined[seam - 1]).max())
        assert step <= np.percentile(inside, 99.9)


@pytest.mark.parametrize(("mode", "seconds", "options", "words"), [
    ("infill", 0.01, {}, "shorter than one codec frame"),
    ("infill", 40.0, {}, "does not fit the model's window"),
    ("infill", 1.0, {"normalize": "peak"}, "normalize off"),
    ("loop", None, {"bpm": 120.0, "bars": 0}, "bars 0 is out of range"),
    ("loop", 0.5, {}, "too short"),
    ("loop", 4.0, {"candidates": 9}, "candidates must be from 1 to 8"),
    ("loop", 4.0, {"candidates": 0}, "candidates must be from 1 to 8"),
    ("loop", 4.0, {"variations": 2}, "use candidates instead of variations"),
    ("loop", 4.0, {"stream": 1}, "use stream 0"),
    ("loop", 4.0, {"negative": "drums", "guidance": 1.0}, "turns it off"),
])
def test_bad_loops_and_fills_are_refused_before_the_model_runs(tiny_bridge, make_clip, mode, seconds, options,
                                                              words):
    clips = {}
    if mode == "infill":
        clips = {"clip": str(make_clip(name="a.wav")), "clip_after": str(make_clip(name="b.wav"))}
    with pytest.raises(BadArgs, match=words):
        tiny_bridge.make_request(mode, "lofi", seconds, clips.get("clip"), options, clip_after=clips.get("clip_after"))


def test_a_fill_needs_two_audio_clips(tiny_bridge, make_clip, tmp_path):
    good = make_clip(name="a.wav")
    with pytest.raises(BadArgs, match="needs two clips"):
        tiny_bridge.make_request("infill", "lofi", 1.0, str(good), {})
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    with pytest.raises(BadAudio, match="not readable audio"):  # refused by its header, before queueing
        tiny_bridge.make_request("infill", "lofi", 1.0, str(good), {}, clip_after=str(text))
    short = make_clip(seconds=0.2, name="short.wav")
    request = tiny_bridge.make_request("infill", "lofi", 1.0, str(good), {}, clip_after=str(short))
    with pytest.raises(BadAudio, match="a fill needs at least"):
        tiny_bridge.run("short", request, lambda f: None, lambda: False)


def test_a_preset_of_mode_loop_makes_a_loop(tiny_engine, tmp_path):
    from bridge.app.bridge import Bridge
    from bridge.app.presets import PresetLibrary
    from bridge.config import Config

    (tmp_path / "bank.yaml").write_text("bank: b\ndefaults: {bpm: 120}\npresets:\n"
                                        "  ring: {prompt: pads, mode: loop, bars: 1, negative: drums, candidates: 2}\n")
    bridge = Bridge(tiny_engine, Config(model="tiny-random", output_dir=tmp_path / "out"),
                    presets=PresetLibrary.load(tmp_path))
    request = bridge.preset_request("b", "ring", {"seed": 1})
    assert (request.mode, request.negative, request.candidates) == ("loop", "drums", 2)
    result = bridge.run("p", request, lambda f: None, lambda: False)
    assert sf.info(str(result.paths[0])).frames == tempo.bars_to_samples(1, 120.0, 32000)
    assert json.loads(result.sidecars[0].read_text())["loop"]["winner"] in (0, 1)
