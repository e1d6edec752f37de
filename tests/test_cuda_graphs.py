"""CUDA graphs and the GPU guards, with the device simulated on the CPU: a backend whose "graph" replays
the captured step for real (reading the static buffers at replay time, as a CUDA graph does), a
capture that raises, an out-of-memory, a NaN in the logits, a non-zero device index."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest
import torch

from bridge.engine import Engine, GenerationSpec, decoding
from bridge.engine import cuda_graphs as cg
from bridge.engine.decoding import Sampling
from bridge.errors import ModelError


class _Stream:
    def __init__(self, device: torch.device) -> None:
        self.device = device

    def wait_stream(self, other: Any) -> None:
        del other


class _Graph:
    def __init__(self, run: Any, out: torch.Tensor) -> None:
        self.run, self.out, self.replays = run, out, 0

    def replay(self) -> None:
        self.replays += 1
        self.out.copy_(self.run())


class FakeBackend(cg.CudaBackend):
    """CUDA's calls on the CPU; notes the device each was made for."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.devices: list[torch.device] = []
        self.captures = 0
        self.graphs: list[_Graph] = []

    def available(self, device: torch.device) -> bool:
        return True

    def device(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        self.devices.append(device)
        return contextlib.nullcontext()

    def stream(self, device: torch.device) -> Any:
        self.devices.append(device)
        return _Stream(device)

    def current_stream(self, device: torch.device) -> Any:
        self.devices.append(device)
        return _Stream(device)

    def use_stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def capture(self, stream: Any, run: Any) -> tuple[Any, torch.Tensor]:
        self.captures += 1
        if self.fail is not None:
            raise self.fail
        out = run()
        graph = _Graph(run, out)
        self.graphs.append(graph)
        return graph, out


@pytest.fixture
def engine(tiny_loaded) -> Engine:
    return Engine(tiny_loaded)  # its own decoder: the tests give it their backend


def _graphed(engine: Engine, backend: FakeBackend) -> FakeBackend:
    fast = engine.loop.fast
    assert fast is not None
    fast.graphs = cg.GraphCache(fast, backend)
    return backend


GREEDY = Sampling(greedy=True, guidance=3.0)


def _codes(engine: Engine, prompt: str = "lofi", frames: int = 40, seed: int = 5,
           sampling: Sampling = GREEDY) -> torch.Tensor:
    return engine.generate_codes(GenerationSpec(prompt=prompt, frames=frames, seed=seed, sampling=sampling))


def test_graph_and_eager_paths_give_the_same_tokens_and_one_graph_serves_later_generations(engine, tiny_loaded):
    eager = [_codes(Engine(tiny_loaded), p, f) for p, f in (("lofi", 40), ("dub techno", 37), ("lofi", 40))]
    backend = _graphed(engine, FakeBackend())
    graphed = [_codes(engine, p, f) for p, f in (("lofi", 40), ("dub techno", 37), ("lofi", 40))]
    for a, b in zip(eager, graphed, strict=True):
        assert torch.equal(a, b)
    # three generations, two lengths and two texts in one bucket: captured once, replayed every step after
    assert backend.captures == 1
    assert backend.graphs[0].replays >= 3 * 30
    assert engine.loop.fast.facts()["step"] == "cuda graph"


def test_a_prompt_change_re_points_the_graph_instead_of_capturing_again(engine, tiny_loaded):
    def run(target: Engine) -> torch.Tensor:
        first = target.condition("lofi", 1, GREEDY, None)
        second = target.condition("a much longer prompt: dub techno", 1, GREEDY, None)
        stream = target.loop.stream(first, 1, 60, guided=True)
        stream.advance(20, GREEDY, None)
        stream.set_conditioning(second)
        stream.advance(60, GREEDY, None)
        return stream.codes

    expected = run(Engine(tiny_loaded))
    backend = _graphed(engine, FakeBackend())
    assert torch.equal(run(engine), expected)
    assert backend.captures == 1


def test_a_text_longer_than_the_graphs_buffers_goes_on_eagerly_on_the_same_cache(engine, tiny_loaded):
    def run(target: Engine) -> torch.Tensor:
        stream = target.loop.stream(target.condition("lofi", 1, GREEDY, None), 1, 50, guided=True)
        stream.advance(20, GREEDY, None)
        stream.set_conditioning(target.condition("x" * (cg.TEXT_BUCKET + 9), 1, GREEDY, None))
        stream.advance(50, GREEDY, None)
        return stream.codes

    expected = run(Engine(tiny_loaded))
    _graphed(engine, FakeBackend())
    assert torch.equal(run(engine), expected)


def test_a_refused_capture_turns_graphs_off_for_the_process_with_one_warning(engine, tiny_loaded, caplog):
    backend = _graphed(engine, FakeBackend(fail=RuntimeError("operation not permitted when stream is capturing")))
    with caplog.at_level(logging.WARNING, logger="bridge.engine.cuda_graphs"):
        codes = [_codes(engine), _codes(engine, "dub", 30)]
    assert backend.captures == 1  # never tried again
    assert [r.getMessage() for r in caplog.records if "CUDA graphs off" in r.getMessage()] == [
        "CUDA graphs off for this process, decoding without them: capture failed: operation not permitted when "
        "stream is capturing"]
    fresh = Engine(tiny_loaded)
    assert torch.equal(codes[0], _codes(fresh)) and torch.equal(codes[1], _codes(fresh, "dub", 30))
    assert engine.loop.fast.facts()["step"].startswith("eager (capture failed: operation not permitted")


def test_out_of_memory_during_capture_is_a_model_error_not_a_fallback(engine):
    backend = _graphed(engine, FakeBackend(fail=torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate")))
    with pytest.raises(ModelError, match="ran out of memory: ask for a shorter piece") as caught:
        _codes(engine)
    assert caught.value.code == "model_error"
    assert engine.loop.fast.graphs.enabled and backend.captures == 1  # not mistaken for a refused capture


def test_a_cuda_error_during_capture_is_a_model_error_that_says_restart(engine):
    _graphed(engine, FakeBackend(fail=RuntimeError("CUDA error: device-side assert triggered")))
    with pytest.raises(ModelError, match="restart the bridge"):
        _codes(engine)


def test_out_of_memory_in_an_eager_step_is_a_model_error(engine, monkeypatch):
    fast = engine.loop.fast

    def no_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(fast, "forward", no_memory)
    with pytest.raises(ModelError, match="ran out of memory"):
        _codes(engine)


def test_a_nan_in_the_logits_stops_that_job_with_model_error_and_the_next_job_is_healthy(engine, tiny_loaded,
                                                                                          monkeypatch):
    fast = engine.loop.fast
    real_forward = fast.forward
    calls = {"n": 0}
    seen_by_sampler: list[bool] = []

    def poisoned(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1
        logits = real_forward(*args, **kwargs)
        if calls["n"] == 6:
            logits[0, 1, 7] = float("nan")
        return logits

    real_pick = decoding.pick_tokens

    def watching_pick(logits: torch.Tensor, *args: Any) -> torch.Tensor:
        seen_by_sampler.append(bool(torch.isfinite(logits).all()))
        return real_pick(logits, *args)

    monkeypatch.setattr(decoding, "pick_tokens", watching_pick)
    monkeypatch.setattr(fast, "forward", poisoned)
    with pytest.raises(ModelError, match="NaN or infinite scores") as caught:
        _codes(engine, sampling=Sampling(guidance=3.0, top_k=50))
    assert caught.value.code == "model_error"
    assert seen_by_sampler == [True] * 5  # the sixth step's logits never reached the sampler
    monkeypatch.setattr(fast, "forward", real_forward)
    after = _codes(engine, sampling=Sampling(guidance=3.0, top_k=50))
    assert torch.equal(after, _codes(Engine(tiny_loaded), sampling=Sampling(guidance=3.0, top_k=50)))


def test_the_deferred_guard_hands_the_sampler_finite_numbers_and_stops_the_job_at_its_next_check():
    guard = cg.LogitGuard(deferred=True)
    good = torch.zeros(2, 4, 8)
    bad = good.clone()
    bad[1, 2, 3] = float("nan")
    bad[0, 0, 0] = float("inf")
    assert torch.equal(guard(good), good)
    cleaned = guard(bad)
    assert bool(torch.isfinite(cleaned).all()) and cleaned[1, 2, 3] == 0 and cleaned[0, 0, 0] == 0
    with pytest.raises(ModelError, match="NaN or infinite"):
        for _ in range(cg.NAN_CHECK_EVERY):
            guard(good)
    fresh = cg.LogitGuard(deferred=True)
    fresh(bad)
    with pytest.raises(ModelError):
        fresh.check()  # the end of a call's steps


def test_the_capture_runs_under_the_decoders_device_and_a_stream_made_on_it(engine):
    backend = _graphed(engine, FakeBackend())
    _codes(engine, frames=10)
    assert backend.devices and set(backend.devices) == {engine.loop.fast.device}


def test_the_cuda_backend_passes_a_non_zero_device_index_to_every_cuda_call(monkeypatch):
    seen: list[tuple[str, Any]] = []

    class Recorder(contextlib.nullcontext):  # type: ignore[type-arg]
        pass

    def fake_device(d):
        seen.append(("device", d))
        return Recorder()

    def fake_stream(device=None):
        seen.append(("stream", device))
        return _Stream(device)

    def fake_current_stream(d=None):
        seen.append(("current", d))
        return _Stream(d)

    def fake_graph(g, stream=None):
        seen.append(("graph", stream.device))
        return contextlib.nullcontext()

    class Graph:
        pass

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    monkeypatch.setattr(torch.cuda, "Stream", fake_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", fake_current_stream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    second = torch.device("cuda", 1)
    backend = cg.CudaBackend()
    with backend.device(second):
        side = backend.stream(second)
        backend.current_stream(second)
        graph, out = backend.capture(side, lambda: torch.ones(2))
    assert seen == [("device", second), ("stream", second), ("current", second), ("graph", second)]
    assert isinstance(graph, Graph) and torch.equal(out, torch.ones(2))
    assert backend.available(second) and not backend.available(torch.device("cpu"))


def test_device_failures_are_told_apart_from_a_refused_capture():
    assert cg.is_device_failure(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert cg.is_device_failure(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert not cg.is_device_failure(RuntimeError("operation not permitted when stream is capturing"))


def test_a_melody_prefix_model_keeps_its_prefix_eager_and_graphs_the_steps(melody_engine):
    fast = melody_engine.loop.fast
    saved = fast.graphs
    eager = melody_engine.generate_codes(GenerationSpec(prompt="lofi", frames=20, seed=1, sampling=GREEDY))
    try:
        fast.graphs = cg.GraphCache(fast, FakeBackend())
        graphed = melody_engine.generate_codes(GenerationSpec(prompt="lofi", frames=20, seed=1, sampling=GREEDY))
    finally:
        fast.graphs = saved
    assert torch.equal(eager, graphed)

