"""The fast decoder is the same model: equal tokens in fp32, close logits in bf16/int8, the bench runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bridge.engine import Engine, GenerationSpec
from bridge.engine.cuda_graphs import static_step
from bridge.engine.decoding import ReferenceStepper, Sampling, TokenLoop
from bridge.engine.fast_decoder import FastDecoder, PackedLinear
from bridge.engine.models import load_model, pick_dtype, pick_precision
from bridge.errors import ModelError

GREEDY = Sampling(greedy=True, guidance=3.0)


def _teacher_forced_logits(engine: Engine, fast: FastDecoder, positions: int, seed: int = 0) -> torch.Tensor:
    """Guided logits (positions, K, V) for the same random tokens fed one position at a time."""
    loaded = engine.loaded
    cond = engine.condition("dusty lofi keys", 1, Sampling(), None)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, fast.vocab, (1, loaded.num_codebooks, positions), generator=gen)
    tokens[:, :, 0] = loaded.pad_token_id
    state = fast.start(2, positions + (0 if cond.prefix is None else cond.prefix.shape[1]),
                       cond.encoder_hidden_states, cond.encoder_attention_mask)
    out = []
    with torch.inference_mode():
        for pos in range(positions):
            step = tokens[:, :, pos : pos + 1].repeat(2, 1, 1)
            logits = fast.forward(state, step, prefix=cond.prefix if pos == 0 else None)
            out.append(logits[1] + (logits[0] - logits[1]) * 3.0)
    return torch.stack(out)


def _reference_loop(engine: Engine) -> TokenLoop:
    """The engine's token loop without its fast decoder: transformers' decoder module, step by step."""
    loaded = engine.loaded
    return TokenLoop(engine.model.decoder, loaded.num_codebooks, loaded.channels, loaded.pad_token_id)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def test_fast_and_reference_steppers_give_the_same_greedy_tokens(tiny_engine):
    loaded = tiny_engine.loaded
    cond = tiny_engine.condition("warm pads", 2, GREEDY, None)
    ref = _reference_loop(tiny_engine).run(cond, 2, 80, GREEDY, None)
    fast = tiny_engine.loop.run(cond, 2, 80, GREEDY, None)
    assert fast.shape == (2, loaded.num_codebooks, 80)
    assert torch.equal(fast, ref)


def test_fast_and_reference_agree_with_a_prompt_and_sampling(tiny_engine):
    """Prompt codes go through the prefill; with fp32 logits equal to float precision the draws match."""
    loaded = tiny_engine.loaded
    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 2048, (1, loaded.num_codebooks, 30), generator=gen)
    sampling = Sampling(guidance=3.0, top_k=250)
    cond = tiny_engine.condition("keep going", 1, sampling, None)
    ref = _reference_loop(tiny_engine).run(cond, 1, 70, sampling, torch.Generator().manual_seed(9), prompt=prompt)
    fast = tiny_engine.loop.run(cond, 1, 70, sampling, torch.Generator().manual_seed(9), prompt=prompt)
    assert torch.equal(fast[:, :, :30], prompt)
    assert torch.equal(fast, ref)


def test_a_stream_continued_on_a_new_text_matches_transformers(tiny_engine):
    """The jam's conditioning swap: a stream advanced in three calls, the text changed before the second
    and sampling to guidance 1 in the third, gives transformers' tokens (its cross-attention cache
    emptied at the swap) in fp32."""
    sampling = Sampling(guidance=3.0, top_k=50)
    first, second = (tiny_engine.condition(text, 1, sampling, None) for text in ("warm pads", "fast techno"))
    runs = []
    for loop in (_reference_loop(tiny_engine), tiny_engine.loop):
        stream = loop.stream(first, 1, 120, guided=True)
        gen = torch.Generator().manual_seed(2)
        stream.advance(30, sampling, gen)
        stream.set_conditioning(second)
        stream.advance(60, sampling, gen)
        assert stream.advance(90, Sampling(guidance=1.0, top_k=50), gen) == 90
        runs.append(stream.codes[:, :, :90])
    assert torch.equal(runs[0], runs[1])
    unchanged = tiny_engine.loop.stream(first, 1, 120, guided=True)
    unchanged.advance(60, sampling, torch.Generator().manual_seed(2))
    assert torch.equal(unchanged.codes[:, :, :30], runs[1][:, :, :30])  # complete before the swap
    assert not torch.equal(unchanged.codes[:, :, 30:60], runs[1][:, :, 30:60])


@pytest.mark.slow
def test_small_architecture_fp32_greedy_equals_generate():
    """The real musicgen-small shapes (random weights): the engine's tokens are generate's, 30 frames."""
    loaded = load_model("small-arch-random", precision="fp32")
    engine = Engine(loaded)
    assert engine.loop.fast is not None and engine.loop.fast.weights == "fp32"
    ids, mask = loaded.tokenizer(["dusty lofi keys"])
    model = loaded.model
    captured = {}
    original = model.audio_encoder.decode

    def capture(codes, *args, **kw):
        captured["codes"] = codes[0].clone()
        return original(codes[..., :1], *args, **kw)  # the audio is not needed: decode one frame

    model.audio_encoder.decode = capture
    try:
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=False, guidance_scale=3.0,
                           max_new_tokens=30 + loaded.num_codebooks - 1)
    finally:
        model.audio_encoder.decode = original
    ours = engine.generate_codes(GenerationSpec(prompt="dusty lofi keys", frames=30, sampling=GREEDY))
    assert torch.equal(ours, captured["codes"])


@pytest.mark.parametrize(("weights", "limit"), [("bf16", 0.02), ("int8", 0.05)])
def test_reduced_precisions_stay_close_to_fp32(tiny_engine, weights, limit):
    decoder = tiny_engine.model.decoder
    want = _teacher_forced_logits(tiny_engine, FastDecoder(decoder, "fp32"), 40)
    got = _teacher_forced_logits(tiny_engine, FastDecoder(decoder, weights), 40)
    error = _relative_error(got, want)
    assert 0 < error < limit
    agree = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    assert agree > 0.9


def test_melody_prefix_runs_in_int8_close_to_fp32(melody_engine):
    decoder = melody_engine.model.decoder
    want = _teacher_forced_logits(melody_engine, FastDecoder(decoder, "fp32"), 20)
    got = _teacher_forced_logits(melody_engine, FastDecoder(decoder, "int8"), 20)
    assert _relative_error(got, want) < 0.05


def test_static_step_equals_the_dynamic_step(tiny_engine):
    """The static-shape step (the one captured in a CUDA graph on GPUs) computes the same logits."""
    fast = FastDecoder(tiny_engine.model.decoder, "fp32")
    cond = tiny_engine.condition("x", 1, Sampling(), None)
    dynamic = fast.start(2, 12, cond.encoder_hidden_states, cond.encoder_attention_mask)
    static = fast.start(2, 12, cond.encoder_hidden_states, cond.encoder_attention_mask, zero=True)
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        for pos in range(12):
            tokens = torch.randint(0, fast.vocab, (2, fast.num_codebooks, 1), generator=gen)
            a = fast.forward(dynamic, tokens)
            b = static_step(fast, static, tokens[:, :, 0], torch.tensor([pos]))
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_int8_linear_long_inputs_match_short_ones():
    """Long prompts take the dequantizing path; it computes what the few-row kernel computes."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=gen)
    lin = PackedLinear(weight, "int8", torch.device("cpu"))
    x = torch.randn(100, 64, generator=gen).to(torch.bfloat16)
    long = lin(x).float()
    short = torch.cat([lin(x[i : i + 4]).float() for i in range(0, 100, 4)])
    assert _relative_error(long, short) < 0.005  # bf16 outputs: a few units in the last place
    exact = x.float() @ weight.T
    assert _relative_error(long, exact) < 0.02


def test_default_precision_per_device():
    assert pick_precision(torch.device("cpu")) == "int8"
    assert pick_precision(torch.device("cuda")) == "fp16"
    assert pick_precision(torch.device("cpu"), "bf16") == "bf16"
    assert pick_dtype(torch.device("cpu"), "int8") == torch.float32  # the modules stay as loaded
    with pytest.raises(ModelError, match="int8 is for the CPU"):
        pick_precision(torch.device("cuda"), "int8")


def test_default_engine_uses_int8_and_generates_valid_codes():
    loaded = load_model("tiny-random")
    assert loaded.precision == "int8"
    engine = Engine(loaded)
    codes = engine.generate_codes(GenerationSpec(prompt="techno", frames=40, seed=3))
    again = engine.generate_codes(GenerationSpec(prompt="techno", frames=40, seed=3))
    assert codes.shape == (1, loaded.num_codebooks, 40)
    assert ((codes >= 0) & (codes < 2048)).all()
    assert torch.equal(codes, again)


def test_decoder_state_refuses_more_positions_than_it_holds(tiny_engine):
    fast = tiny_engine.loop.fast
    assert fast is not None
    state = fast.start(1, 3)
    with torch.inference_mode():
        fast.forward(state, torch.zeros((1, fast.num_codebooks, 3), dtype=torch.long))
        with pytest.raises(ValueError, match="holds 3 positions"):
            fast.forward(state, torch.zeros((1, fast.num_codebooks, 1), dtype=torch.long))


def test_loop_without_fast_decoder_uses_the_reference(tiny_engine):
    loop = _reference_loop(tiny_engine)
    assert isinstance(loop.stepper(tiny_engine.condition("x", 2, GREEDY, None), 2, 8), ReferenceStepper)
    cond = tiny_engine.condition("x", 1, GREEDY, None)
    assert torch.equal(loop.run(cond, 1, 20, GREEDY, None), tiny_engine.loop.run(cond, 1, 20, GREEDY, None))


def test_bench_command_writes_json_and_a_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bridge.cli", "bench", "--model", "tiny-random", "--seconds", "0.6",
                           "--runs", "2", "--threads", "1", "--json", str(out)],
                          check=False, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert data["speedup"] > 0
    assert data["frames"] == 30
    for name in ("baseline", "bridge"):
        part = data[name]
        assert part["steps"] == 30 + 3  # frames plus the delay pattern's tail
        assert len(part["seconds_each"]) == 2
        assert part["ms_per_step_early"] > 0 and part["realtime_factor"] > 0
        assert part["peak_memory_mb"] > 0
    assert data["bridge"]["precision"] == "int8" and data["baseline"]["precision"] == "fp32"
    assert data["bridge"]["time_to_first_audio"] <= data["bridge"]["seconds"]
    assert "speedup" in proc.stdout and "ms per step, early" in proc.stdout
    jam = data["jam"]  # 3 one-bar segments at 120 bpm, each continuing the last
    assert jam["segment_seconds"] == [2.0, 2.0, 2.0]
    assert len(jam["generation_over_length"]) == 3 and jam["generation_over_length_max"] > 0
    assert 0 < jam["time_to_first_segment"] <= sum(jam["generation_seconds"])
    assert "jam: 3 segments of 2.00 s" in proc.stdout
    # the jam's cost against plain generation's, per second of audio, and its growth, from the same numbers
    per_second = data["bridge"]["seconds"] / data["audio_seconds"]
    assert jam["over_bridge"] == pytest.approx(jam["generation_over_length_median"] / per_second)
    ratios = jam["generation_over_length"]
    assert jam["edge_segments"] == 1 and jam["late_over_early"] == pytest.approx(ratios[-1] / ratios[0])
    assert jam["reprompts"] == 0 and jam["frames"] == 3 * 100 + 4 and jam["positions_run"] == jam["frames"] + 3
    assert "jam segments (s): " in proc.stdout and "late / early step" in proc.stdout


def test_bench_rejects_bad_arguments():
    for bad in (["--seconds", "0"], ["--jam-segments", "-1"], ["--jam-bars", "0"]):
        proc = subprocess.run([sys.executable, "-m", "bridge.cli", "bench", *bad], check=False,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, bad
        assert "bad_args" in proc.stderr
