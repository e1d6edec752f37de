"""The engine on tiny-random: the token loop against transformers' generate, windows past 30 s, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.errors import Cancelled

GREEDY = Sampling(greedy=True, guidance=3.0)


def _hf_codes(loaded, frames, **kwargs):
    """transformers' generate, returning codes (B, K, frames) through a decode-free path."""
    model = loaded.model
    k = loaded.num_codebooks // loaded.channels
    captured = {}
    original = model.audio_encoder.decode

    def capture(codes, *args, **kw):
        captured["codes"] = codes[0].clone()
        return original(codes, *args, **kw)

    model.audio_encoder.decode = capture
    try:
        model.generate(do_sample=False, guidance_scale=3.0, max_new_tokens=frames + k - 1, **kwargs)
    finally:
        model.audio_encoder.decode = original
    return captured["codes"]


def test_greedy_tokens_equal_transformers_generate(tiny_engine):
    loaded = tiny_engine.loaded
    ids, mask = loaded.tokenizer(["dusty lofi keys"])
    expected = _hf_codes(loaded, 60, input_ids=ids, attention_mask=mask)
    ours = tiny_engine.generate_codes(GenerationSpec(prompt="dusty lofi keys", frames=60, sampling=GREEDY))
    assert torch.equal(ours, expected)


def test_greedy_continuation_equals_transformers_generate(tiny_engine):
    loaded = tiny_engine.loaded
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal((1, 40 * loaded.hop_length))).astype(np.float32)
    ids, mask = loaded.tokenizer(["keep going"])
    prompt_codes = tiny_engine.encode_audio(wave)
    assert prompt_codes.shape == (1, loaded.num_codebooks, 40)
    # transformers takes the prompt codes as decoder_input_ids and makes `max_new_tokens` more positions
    expected_all = _hf_codes(loaded, 30 + 1, input_ids=ids, attention_mask=mask,
                             decoder_input_ids=prompt_codes.reshape(loaded.num_codebooks, -1))
    ours = tiny_engine.generate_codes(GenerationSpec(prompt="keep going", frames=40 + 30 + 1, sampling=GREEDY,
                                                     prompt_codes=prompt_codes))
    assert torch.equal(ours[:, :, :40], prompt_codes)
    assert torch.equal(ours, expected_all[:, :, : ours.shape[-1]])


def test_greedy_melody_equals_transformers_generate(melody_engine):
    loaded = melody_engine.loaded
    t = np.arange(3 * loaded.sample_rate) / loaded.sample_rate
    wave = (0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32)
    chroma = melody_engine.melody_chroma(wave, 50)
    ids, mask = loaded.tokenizer(["jazz"])
    expected = _hf_codes(loaded, 50, input_ids=ids, attention_mask=mask, input_features=chroma)
    ours = melody_engine.generate_codes(GenerationSpec(prompt="jazz", frames=50, sampling=GREEDY, chroma=chroma))
    assert torch.equal(ours, expected)
    assert chroma[0, :, 9].float().mean() > 0.5  # a 440 Hz tone is an A: chroma bin 9 (C=0)


def test_same_seed_same_codes_other_seed_other_codes(tiny_engine):
    spec = GenerationSpec(prompt="techno", frames=40, seed=11)
    a = tiny_engine.generate_codes(spec)
    b = tiny_engine.generate_codes(spec)
    c = tiny_engine.generate_codes(GenerationSpec(prompt="techno", frames=40, seed=12))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_variations_are_one_batch_and_differ(tiny_engine):
    codes = tiny_engine.generate_codes(GenerationSpec(prompt="ambient", frames=30, variations=3, seed=5))
    assert codes.shape == (3, tiny_engine.loaded.num_codebooks, 30)
    assert not torch.equal(codes[0], codes[1])


def test_windows_slide_with_kept_context(tiny_loaded):
    engine = Engine(tiny_loaded, window_frames=50, extend_stride_seconds=0.6)  # stride 30 frames, context 20
    assert engine.windows(120, 0) == [(0, 50), (30, 80), (60, 110), (90, 120)]
    spec = GenerationSpec(prompt="long", frames=120, seed=3)
    long_codes = engine.generate_codes(spec)
    assert long_codes.shape[-1] == 120
    assert (long_codes < tiny_loaded.pad_token_id).all()  # every frame generated, no pad left
    # the first window is exactly what a single-window run draws with the same seed
    first = engine.generate_codes(GenerationSpec(prompt="long", frames=50, seed=3))
    assert torch.equal(long_codes[:, :, :50], first)


def test_windowing_past_30_seconds_with_the_real_window(tiny_engine):
    assert tiny_engine.window_frames == 1500  # 30 s at 50 Hz
    frames = 1750  # 35 s
    progress: list[float] = []
    codes = tiny_engine.generate_codes(GenerationSpec(prompt="", frames=frames, seed=1,
                                                      sampling=Sampling(guidance=1.0)),
                                       progress=progress.append)
    assert codes.shape[-1] == frames
    assert (codes < tiny_engine.loaded.pad_token_id).all()
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    audio = tiny_engine.decode(codes)
    assert audio.shape == (1, 1, frames * tiny_engine.hop)


def test_cancel_stops_between_steps(tiny_engine):
    steps = {"n": 0}

    def cancelled() -> bool:
        steps["n"] += 1
        return steps["n"] > 5

    with pytest.raises(Cancelled):
        tiny_engine.generate_codes(GenerationSpec(prompt="x", frames=200), is_cancelled=cancelled)
    assert steps["n"] == 6


def test_stereo_model_decodes_two_channels(stereo_engine):
    codes = stereo_engine.generate_codes(GenerationSpec(prompt="wide pads", frames=20, seed=2))
    assert codes.shape == (1, 8, 20)
    audio = stereo_engine.decode(codes)
    assert audio.shape == (1, 2, 20 * stereo_engine.hop)
    assert not np.allclose(audio[0, 0], audio[0, 1])
