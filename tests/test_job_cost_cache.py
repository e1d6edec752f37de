"""The decoder's key/value cache is part of a job's cost: counted as the engine allocates it, refused when over.

On the CPU it is often the largest stage (musicgen-large, float32: about 1.1 GB a sequence for a 30 s
window, two sequences a variation with guidance), so a job of eight variations was accepted and then
killed for memory. The cost is checked against what the engine really allocates (tiny-random, a real
generation), and the refusal against the real architecture's sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.app import planning
from bridge.app.budget import Limits, check_cost, decode_frames, job_cost
from bridge.app.requests import build_request
from bridge.engine import Engine
from bridge.engine.engine import decoder_cache_bytes
from bridge.engine.fast_decoder import DecoderState
from bridge.errors import BadArgs

GB = 1024**3


def _allocated(state: DecoderState) -> int:
    tensors = [*state.keys, *state.values, *(t for pair in state.cross for t in pair)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _watch_states(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes of every decoder state the engine starts (its caches, filled as the tokens are made)."""
    fast = engine.loop.fast
    assert fast is not None
    seen: list[int] = []
    real_start = fast.start

    def start(*args: Any, **kwargs: Any) -> DecoderState:
        state = real_start(*args, **kwargs)
        seen.append(_allocated(state))
        return state

    monkeypatch.setattr(fast, "start", start)
    return seen


def _cost_of(bridge: Any, mode: str, prompt: str, seconds: float, options: dict[str, Any], clip: Any = None):
    request = bridge.make_request(mode, prompt, seconds, clip, options)
    plan = planning.plan(request, None, bridge.engine)
    return request, job_cost(request, plan, None, bridge.engine,
                             bridge.engine.text_tokens(plan.text, request.negative))


@pytest.mark.parametrize("options", [{"variations": 3}, {"variations": 2, "negative": "drums and a long tail"},
                                     {"variations": 1, "guidance": 1.0}])
def test_the_token_stage_is_the_cache_the_engine_allocates(tiny_bridge, monkeypatch, options):
    seen = _watch_states(tiny_bridge.engine, monkeypatch)
    request, cost = _cost_of(tiny_bridge, "text", "warm pads", 1.0, options)
    tiny_bridge.run("cache", request, lambda _p: None, lambda: False)
    assert len(seen) == 1 and cost.stages["tokens"] == seen[0]
    after = cost.stages["decode"] + cost.stages["kept"] + cost.stages["post-process"]
    assert cost.peak_bytes == max(cost.stages["tokens"], after) and cost.device_bytes == 0  # one after the other


def test_a_melody_models_cache_counts_its_chroma_and_text_prefix(melody_engine, tmp_path, monkeypatch, make_clip):
    from bridge.app.bridge import Bridge
    from bridge.config import Config

    bridge = Bridge(melody_engine, Config(model="tiny-random-melody", output_dir=tmp_path / "out"))
    seen = _watch_states(melody_engine, monkeypatch)
    clip = make_clip(seconds=1.0, rate=32000, channels=1, name="tune.wav")
    request, cost = _cost_of(bridge, "melody", "a bright tune", 1.0, {"variations": 2}, clip=str(clip))
    bridge.run("melody", request, lambda _p: None, lambda: False)
    assert len(seen) == 1 and cost.stages["tokens"] == seen[0]


def _watch_decodes(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames of every code sequence the engine's codec decodes."""
    seen: list[int] = []
    real_decode = engine.decode

    def decode(codes: Any) -> Any:
        seen.append(int(codes.shape[-1]))
        return real_decode(codes)

    monkeypatch.setattr(engine, "decode", decode)
    return seen


def test_a_loops_bridges_are_counted_in_one_batch_beside_their_context_and_its_decode_with_the_wrap(
        tiny_bridge, monkeypatch):
    seen = _watch_states(tiny_bridge.engine, monkeypatch)
    decoded = _watch_decodes(tiny_bridge.engine, monkeypatch)
    request, cost = _cost_of(tiny_bridge, "loop", "warm pads", 2.0, {"candidates": 6})
    tiny_bridge.run("loop", request, lambda _p: None, lambda: False)
    body, bridges, shared = seen  # the body; the candidates' bridges and, beside them, their context read once
    assert bridges > body
    assert bridges + shared <= cost.stages["tokens"] <= 1.5 * (bridges + shared)  # a bound, and not a loose one
    # the codec decodes the loop with a second of its end before it and of its start after it: counted
    eng, plan = tiny_bridge.engine, planning.plan(request, None, tiny_bridge.engine)
    [frames] = decoded
    estimate = decode_frames(request, plan, eng)
    assert frames > plan.frames and frames <= estimate <= frames + 1  # the plan's frames are rounded up
    assert cost.stages["decode"] == estimate * eng.hop * (eng.codec_bytes_per_sample() + 2 * 4 * eng.channels)


def test_a_fills_cache_is_bounded_by_the_window_and_its_decode_counts_the_clips_around_it(tiny_bridge,
                                                                                         monkeypatch, make_clip):
    seen = _watch_states(tiny_bridge.engine, monkeypatch)
    decoded = _watch_decodes(tiny_bridge.engine, monkeypatch)
    before = make_clip(seconds=2.0, rate=32000, channels=1, name="before.wav")
    after = make_clip(seconds=2.0, rate=32000, channels=1, name="after.wav")
    request = tiny_bridge.make_request("infill", "a fill", 1.0, str(before), {"candidates": 3},
                                       clip_after=str(after))
    plan = planning.plan(request, None, tiny_bridge.engine)
    cost = job_cost(request, plan, None, tiny_bridge.engine, tiny_bridge.engine.text_tokens(plan.text))
    tiny_bridge.run("fill", request, lambda _p: None, lambda: False)
    assert seen and sum(seen) <= cost.stages["tokens"]
    assert cost.stages["tokens"] == tiny_bridge.engine.cache_bytes(8, tiny_bridge.engine.window_frames, 7)
    # the codec decodes the fill with the first clip's last second before it and the second's head after it
    [frames] = decoded
    assert plan.frames < frames <= decode_frames(request, plan, tiny_bridge.engine) <= frames + 8


@dataclass
class LargeOnCpu:
    """musicgen-large's facts (48 layers, 2048 wide; bridge/engine/models.py _ARCH_SIZES) in float32."""

    on_host: bool = True
    sample_rate: int = 32000
    hop: int = 640
    frame_rate: float = 50.0
    window_frames: int = 1500
    channels: int = 1
    asked: list[tuple[int, int, int]] = field(default_factory=list)

    @property
    def works_on_host(self) -> bool:
        return self.on_host

    def frames_for_samples(self, samples: int) -> int:
        return -(-samples // self.hop)

    def codec_bytes_per_sample(self) -> int:
        return 1664  # the 32 kHz EnCodec's, as Engine.codec_bytes_per_sample measures it

    def cache_bytes(self, rows: int, frames: int, text_tokens: int) -> int:
        self.asked.append((rows, frames, text_tokens))
        return decoder_cache_bytes(48, 2048, 4, rows, min(frames, self.window_frames) + 4 + text_tokens)


def _request(variations: int, seconds: float = 30.0) -> Any:
    return build_request("text", "warm pads", {"variations": variations}, seconds=seconds)


def test_eight_variations_of_a_large_model_on_the_cpu_are_refused_for_their_cache_and_one_fits():
    facts = LargeOnCpu()
    request = _request(8)
    cost = job_cost(request, planning.plan(request, None, facts), None, facts, 12)
    assert facts.asked == [(16, 1501, 12)]  # eight variations and their guidance rows; the engine caps it at a window
    assert 17 * GB < cost.stages["tokens"] < 18 * GB
    assert max(cost.stages, key=lambda k: cost.stages[k]) == "tokens"
    with pytest.raises(BadArgs) as refused:
        check_cost(cost, Limits(max_bytes=12 * GB))
    message = str(refused.value)
    assert f"tokens: {cost.stages['tokens'] / GB:.1f} GB" in message and "limit of 12.0 GB a job" in message
    assert "fewer variations" in message and "smaller model" in message and "sample_rate" not in message
    one = _request(1)
    check_cost(job_cost(one, planning.plan(one, None, facts), None, facts, 12), Limits(max_bytes=12 * GB))


def test_on_a_gpu_the_cache_is_checked_against_the_gpus_free_memory_not_the_machines():
    facts = LargeOnCpu(on_host=False)
    request = _request(8)
    cost = job_cost(request, planning.plan(request, None, facts), None, facts, 12)
    assert "tokens" not in cost.stages and 17 * GB < cost.device_bytes < 18 * GB
    check_cost(cost, Limits(max_bytes=12 * GB))  # the machine's memory holds the rest
    with pytest.raises(BadArgs, match=r"17\.8 GB of GPU memory at its peak .* over the 16\.0 GB the GPU had free"):
        check_cost(cost, Limits(max_bytes=12 * GB, max_device_bytes=16 * GB))
    check_cost(cost, Limits(max_bytes=12 * GB, max_device_bytes=24 * GB))


def test_the_cache_is_one_window_at_most_however_long_the_job():
    facts = LargeOnCpu()
    short, long = _request(1), _request(1, seconds=300.0)
    assert (job_cost(long, planning.plan(long, None, facts), None, facts, 12).stages["tokens"]
            == job_cost(short, planning.plan(short, None, facts), None, facts, 12).stages["tokens"])


def test_a_cpu_engine_has_no_gpu_limit(tiny_engine):
    assert tiny_engine.free_device_memory() is None and tiny_engine.works_on_host
    assert tiny_engine.text_tokens("", "  ") == 1 and tiny_engine.text_tokens("ab", "abcd") == 5


def test_the_codecs_work_is_counted_and_on_a_gpu_it_is_the_gpus():
    """The codec decodes one variation at a time, its layers' activations far larger than the audio."""
    request = _request(2, seconds=300.0)
    host, gpu = LargeOnCpu(), LargeOnCpu(on_host=False)
    on_host = job_cost(request, planning.plan(request, None, host), None, host, 12)
    samples = planning.plan(request, None, host).frames * 640
    assert on_host.stages["decode"] == samples * 1664 + 2 * samples * 8  # the codec at work, the audio it gives
    assert on_host.peak_bytes == max(on_host.stages["tokens"], on_host.stages["decode"] + on_host.stages["kept"]
                                     + on_host.stages["post-process"])
    on_gpu = job_cost(request, planning.plan(request, None, gpu), None, gpu, 12)
    assert on_gpu.stages["decode"] == 2 * samples * 8 and on_gpu.device_bytes == samples * 1664


def test_the_codecs_bytes_a_sample_are_measured_on_the_codec(tiny_engine):
    # tiny-random's EnCodec (4 filters): its largest layer holds 12 floats a sample; doubled, plus 32
    assert tiny_engine.codec_bytes_per_sample() == 4 * (2 * 12 + 32)
