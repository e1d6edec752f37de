"""The decoder step captured in CUDA graphs, and the guards around every step on a GPU.

- One graph per shape (rows, cache capacity rounded up to :data:`CAPACITY_BUCKET` positions, text
  length rounded up to :data:`TEXT_BUCKET` tokens), kept for the process: later generations and jam
  prompt changes copy their tokens, position and text keys/values into the graph's static buffers
  instead of capturing again (a capture costs 0.1-0.4 s of first audio). Padding is masked out.
- Captured under the decoder's own device and on a side stream of it (``cuda:1`` included).
- A capture the driver or build refuses turns graphs off for the process: warned once, eager after.
  An out-of-memory or a CUDA error (a device assert) is no capture problem: it becomes ``model_error``.
- :class:`LogitGuard`: a NaN or infinite logit never reaches the sampler (on CUDA its device assert
  would break the context for every later job): the job ends with ``model_error``, the next one is fine.

The CUDA calls go through :class:`CudaBackend`, so tests run all of this on the CPU with a stand-in.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from bridge.errors import ModelError

# bridge.engine.fast_decoder's FastDecoder and DecoderState: that module imports this one, not the reverse
FastDecoder = Any
DecoderState = Any

log = logging.getLogger(__name__)

CAPACITY_BUCKET = 256  # cache positions: a graph serves every length up to its bucket
TEXT_BUCKET = 32  # text tokens
MAX_GRAPHS = 2  # per decoder: each holds its own cache (about 0.3 GB for musicgen-small's 30 s window)
NAN_CHECK_EVERY = 16  # steps between host checks of the deferred guard (a check waits for the GPU)

OOM_ADVICE = ("the GPU ran out of memory: ask for a shorter piece or fewer variations, close other GPU programs, "
              "or start the bridge with a smaller model")


class CudaBackend:
    """The CUDA calls a graph needs; a test replaces them to run on the CPU."""

    def available(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def device(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.device(device)

    def stream(self, device: torch.device) -> Any:
        return torch.cuda.Stream(device=device)

    def current_stream(self, device: torch.device) -> Any:
        return torch.cuda.current_stream(device)

    def use_stream(self, stream: Any) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(stream)

    def capture(self, stream: Any, run: Callable[[], torch.Tensor]) -> tuple[Any, torch.Tensor]:
        """Capture ``run`` on ``stream``: (graph, its output tensor)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = run()
        return graph, out


def is_device_failure(exc: BaseException) -> bool:
    """An out-of-memory or a CUDA error (the context may be broken): never a reason to fall back quietly."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    text = str(exc)
    return "out of memory" in text or "CUDA error" in text or "device-side assert" in text


def as_model_error(exc: BaseException) -> ModelError:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc):
        return ModelError(f"{OOM_ADVICE} ({str(exc).splitlines()[0] if str(exc) else 'out of memory'})")
    return ModelError(f"the GPU failed ({str(exc).splitlines()[0]}): restart the bridge; if it happens again, "
                      "use --precision fp32 or --device cpu")


@contextlib.contextmanager
def device_errors() -> Iterator[None]:
    """Out-of-memory and CUDA errors raised inside become ``model_error`` with what to do."""
    try:
        yield
    except RuntimeError as exc:
        if is_device_failure(exc):
            raise as_model_error(exc) from exc
        raise


class LogitGuard:
    """Stops a job whose logits hold NaN or infinity before they reach the sampler.

    On the CPU every step is checked. ``deferred`` (CUDA) keeps the check on the device: bad values
    are replaced by zeros (the sampler draws from finite numbers) and a device flag is read every
    :data:`NAN_CHECK_EVERY` steps and at the end, so the GPU never waits on the host per step.
    """

    def __init__(self, deferred: bool) -> None:
        self.deferred = deferred
        self.flag: torch.Tensor | None = None
        self.steps = 0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        finite = torch.isfinite(logits)
        if not self.deferred:
            if not bool(finite.all()):
                raise self.error()
            return logits
        bad = ~finite.all()
        self.flag = bad if self.flag is None else self.flag | bad
        self.steps += 1
        if self.steps % NAN_CHECK_EVERY == 0:
            self.check()
        return torch.where(finite, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))

    def check(self) -> None:
        """Raise now if any step so far gave a bad logit."""
        if self.flag is not None and bool(self.flag):
            raise self.error()

    @staticmethod
    def error() -> ModelError:
        return ModelError("the model gave NaN or infinite scores, so this job stopped (fp16 overflow or a damaged "
                          "checkpoint): try again with --precision fp32 or bf16; the bridge keeps serving")


@torch.inference_mode()
def static_step(decoder: FastDecoder, state: DecoderState, tokens: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """One position at ``position`` (a 1-element long tensor on the device) with shapes that never
    change: attention reads the whole cache under a mask, writes go through ``index_copy_``. No value
    leaves the device, so the step can be captured in a CUDA graph. ``state`` must be ``zero``-made.
    The layers are :meth:`FastDecoder.run_layers`, given attention over these static buffers.
    """
    hidden = decoder.embed_tokens(tokens[:, :, None]) + decoder.positions.index_select(0, position)
    capacity = state.capacity
    visible = torch.arange(capacity, device=decoder.device) <= position
    mask = torch.zeros(capacity, dtype=decoder.compute_dtype, device=decoder.device)
    mask = mask.masked_fill(~visible, torch.finfo(decoder.compute_dtype).min)[None, None, None, :]

    def attend_self(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        state.keys[index].index_copy_(2, position, decoder.split(k))
        state.values[index].index_copy_(2, position, decoder.split(v))
        return decoder.merge(F.scaled_dot_product_attention(decoder.split(q), state.keys[index], state.values[index],
                                                            attn_mask=mask))

    def attend_text(index: int, q: torch.Tensor) -> torch.Tensor:
        ck, cv = state.cross[index]
        return decoder.merge(F.scaled_dot_product_attention(decoder.split(q), ck, cv, attn_mask=state.cross_mask))

    hidden = decoder.run_layers(hidden, attend_self, attend_text if state.cross else None)
    return decoder.head(hidden)


def _bucket(value: int, size: int) -> int:
    return max(size, -(-value // size) * size)


class GraphedStep:
    """One static decoder state and the step captured over it; see the module's docstring."""

    def __init__(self, cache: GraphCache, rows: int, capacity: int, text: int) -> None:
        decoder, device = cache.decoder, cache.decoder.device
        self.cache = cache
        self.decoder = decoder
        self.text = text
        with cache.backend.device(device):
            self.state: DecoderState = decoder.start(rows, capacity, zero=True)
            self.tokens = torch.zeros((rows, decoder.num_codebooks), dtype=torch.long, device=device)
            self.position = torch.zeros(1, dtype=torch.long, device=device)
            if decoder.has_cross and text:
                shape = (rows, decoder.heads, text, decoder.head_dim)
                self.state.cross = [(torch.zeros(shape, dtype=decoder.compute_dtype, device=device),
                                     torch.zeros(shape, dtype=decoder.compute_dtype, device=device))
                                    for _ in decoder.layers]
                self.state.cross_mask = torch.zeros((rows, 1, 1, text), dtype=decoder.compute_dtype, device=device)
        # the buffers the graph reads: a generation that went eager may point the state elsewhere
        self.static_cross, self.static_mask = list(self.state.cross), self.state.cross_mask
        self.graph: Any = None
        self.logits: torch.Tensor | None = None
        self.captures = 0

    @torch.inference_mode()
    def reset(self, encoder_hidden_states: torch.Tensor | None, encoder_attention_mask: torch.Tensor | None) -> None:
        """Ready for a new generation: an empty cache, the new text."""
        self.state.length = 0
        self.state.cross, self.state.cross_mask = list(self.static_cross), self.static_mask
        for keys, values in zip(self.state.keys, self.state.values, strict=True):
            keys.zero_()
            values.zero_()
        self.set_conditioning(encoder_hidden_states, encoder_attention_mask)

    def fits(self, encoder_hidden_states: torch.Tensor | None) -> bool:
        """Whether this text fits the graph's text buffers."""
        if encoder_hidden_states is None or not self.static_cross:
            return encoder_hidden_states is None or not self.decoder.has_cross
        return int(encoder_hidden_states.shape[1]) <= self.text

    @torch.inference_mode()
    def set_conditioning(self, encoder_hidden_states: torch.Tensor | None,
                         encoder_attention_mask: torch.Tensor | None) -> None:
        """Copy the text's keys, values and mask into the buffers the graph reads (no new capture)."""
        if not self.state.cross or encoder_hidden_states is None:
            return
        cross, mask = self.decoder.project_conditioning(encoder_hidden_states, encoder_attention_mask)
        length = int(cross[0][0].shape[2])
        for (static_k, static_v), (k, v) in zip(self.state.cross, cross, strict=True):
            static_k[:, :, :length].copy_(k)
            static_v[:, :, :length].copy_(v)
            static_k[:, :, length:].zero_()
            static_v[:, :, length:].zero_()
        static_mask = self.state.cross_mask
        if static_mask is None:
            raise RuntimeError("a graphed state without its text mask")
        if mask is None:
            static_mask[..., :length].zero_()
        else:
            static_mask[..., :length].copy_(mask)
        static_mask[..., length:].fill_(torch.finfo(static_mask.dtype).min)  # the padding is never attended

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, position: int) -> torch.Tensor | None:
        """The logits of one position via the graph, or None when graphs are off (run eagerly then)."""
        self.tokens.copy_(tokens, non_blocking=True)
        self.position.fill_(position)
        if self.graph is None:
            if not self.cache.enabled:
                return None
            self._capture()
            if self.graph is None:
                return None
        self.graph.replay()
        return self.logits

    def _capture(self) -> None:
        backend, device = self.cache.backend, self.decoder.device

        def step() -> torch.Tensor:
            return static_step(self.decoder, self.state, self.tokens, self.position)

        try:
            with backend.device(device):
                side = backend.stream(device)
                side.wait_stream(backend.current_stream(device))
                with backend.use_stream(side):
                    for _ in range(2):  # warm-up runs write this same position, which the replay overwrites
                        step()
                backend.current_stream(device).wait_stream(side)
                self.captures += 1
                self.graph, self.logits = backend.capture(side, step)
        except RuntimeError as exc:
            if is_device_failure(exc):
                raise as_model_error(exc) from exc
            self.cache.disable(f"capture failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
            self.graph = None


class GraphCache:
    """The graphs of one decoder, by shape, for the life of the process (see the module's docstring)."""

    def __init__(self, decoder: FastDecoder, backend: CudaBackend | None = None) -> None:
        self.decoder = decoder
        self.backend = backend if backend is not None else CudaBackend()
        self.graphs: dict[tuple[int, int, int], list[GraphedStep]] = {}
        self.leases: dict[int, weakref.ref[Any]] = {}
        self.disabled = ""  # why graphs are off for this process ("" while they are on)

    @property
    def enabled(self) -> bool:
        return not self.disabled and self.backend.available(self.decoder.device)

    def disable(self, reason: str) -> None:
        if not self.disabled:
            log.warning("CUDA graphs off for this process, decoding without them: %s", reason)
        self.disabled = reason
        self.graphs.clear()

    def path(self) -> str:
        """Which step path generations take, for the sidecar."""
        if self.enabled:
            return "cuda graph"
        return f"eager ({self.disabled})" if self.disabled else "eager"

    def lease(self, owner: object, rows: int, capacity: int, encoder_hidden_states: torch.Tensor | None,
              encoder_attention_mask: torch.Tensor | None) -> GraphedStep | None:
        """A graphed step for ``owner``'s generation (kept until ``owner`` is gone), reset to the new text;
        None when graphs are off."""
        if not self.enabled:
            return None
        text = 0
        if self.decoder.has_cross and encoder_hidden_states is not None:
            text = _bucket(int(encoder_hidden_states.shape[1]), TEXT_BUCKET)
        key = (rows, _bucket(capacity, CAPACITY_BUCKET), text)
        shelf = self.graphs.setdefault(key, [])
        free = [g for g in shelf if self._free(g)]
        if free:
            graphed = free[0]
        else:
            if sum(len(s) for s in self.graphs.values()) >= MAX_GRAPHS:
                self._evict()
            graphed = GraphedStep(self, *key)
            shelf.append(graphed)
        self.leases[id(graphed)] = weakref.ref(owner)
        graphed.reset(encoder_hidden_states, encoder_attention_mask)
        return graphed

    def _free(self, graphed: GraphedStep) -> bool:
        ref = self.leases.get(id(graphed))
        return ref is None or ref() is None

    def _evict(self) -> None:
        """Drop one graph no generation holds (the cache's memory goes with it)."""
        for key, shelf in self.graphs.items():
            for graphed in shelf:
                if self._free(graphed):
                    shelf.remove(graphed)
                    self.leases.pop(id(graphed), None)
                    if not shelf:
                        del self.graphs[key]
                    return
