"""The fast decoder step: MusicGen's decoder run with plain tensor ops, a preallocated KV cache and
weights stored for the machine's fast kernels (bf16 through oneDNN, int8 or int4 weight-only).

Same maths as transformers' ``MusicgenDecoder`` (sum of codebook embeddings, sinusoidal positions,
pre-norm layers with self-attention, cross-attention on the text and a GELU MLP, one head per
codebook), minus its per-step costs: no mask building, no ``DynamicCache`` growing by ``torch.cat``
(which copies the whole cache every step), the text's cross-attention keys and values projected once
per window, and the residual stream kept in fp32 whatever the weights are stored in.

``TokenLoop`` (``bridge/engine/decoding.py``) owns the delay pattern and sampling; this file only turns the
tokens of one step into the logits of the next. Precisions (``weights``):

- ``fp32``: the checkpoint's own tensors, unchanged: greedy tokens equal ``generate``'s.
- ``bf16``: weights rounded to bfloat16, matmuls in bf16 with fp32 accumulation, KV cache in bf16.
- ``int8``: the transformer's linear layers as int8 with one scale per output channel, embeddings and
  the codebook heads in bf16. On x86 CPUs with AVX-512 VNNI or AVX2 the native kernel
  (``bridge/engine/kernels``) multiplies them with the activations quantized per row to 15 bits (finer than
  bf16), and one native call runs all layers of a step; elsewhere torch's weight-only kernel does,
  with bf16 activations.
- ``int4``: 4-bit groups of 32 input channels, torch's kernel: audibly lossy (a sketch mode), and
  faster than ``int8`` only where the native kernel is not available.
- ``fp16``: half weights and cache (the GPU default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from bridge.engine import kernels
from bridge.engine.cuda_graphs import GraphCache
from bridge.engine.machine import attention_fact, sdpa_dtype

WEIGHT_FORMATS = ("fp32", "fp16", "bf16", "int8", "int4")
INT4_GROUP = 32  # input channels sharing one 4-bit scale and zero

SelfAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(layer index, q, k, v), each (rows, T, D): keep k and v in that layer's cache, return the attention (rows, T, D)."""
TextAttention = Callable[[int, torch.Tensor], torch.Tensor]
"""(layer index, q) with q (rows, T, D): the attention on that layer's text keys and values, (rows, T, D)."""


def _has_mkldnn_linear() -> bool:
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


class PackedLinear:
    """``y = x @ W.T`` with ``W`` stored as asked; input and output in the compute dtype, except the
    native int8 kernel's (``kind == "int8-native"``), which takes fp32 or bf16 and gives fp32."""

    def __init__(self, weight: torch.Tensor, weights: str, device: torch.device, native: bool = False) -> None:
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self.kind = "dense"
        self.scales = torch.empty(0)
        w = weight.detach()
        if weights == "int4":
            self._pack_int4(w.float())
        elif weights == "int8":
            w32 = w.float()
            scales = w32.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            quantized = torch.round(w32 / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
            if native and kernels.fits_int8_kernel(self.out_features, self.in_features):
                # the native kernel (bridge/engine/kernels): its interleaved layout, fp32 scales, fp32 out
                self.weight = kernels.pack_int8_weight(quantized)
                self.scales = scales.contiguous()
                self.kind = "int8-native"
            else:
                self.weight = quantized
                self.scales = scales.to(torch.bfloat16)
                self.kind = "int8"
        elif weights == "bf16" and device.type == "cpu" and _has_mkldnn_linear():
            # oneDNN's blocked layout: its bf16 kernels (AMX where the CPU has it) read it ~1.4x faster
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w.to(torch.bfloat16).contiguous())
            self.kind = "mkldnn"
        else:
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[weights]
            self.weight = w if w.dtype == dtype else w.to(dtype)

    def _pack_int4(self, w: torch.Tensor) -> None:
        """Asymmetric 4-bit groups of INT4_GROUP input channels, torch's CPU int4 layout."""
        n, k = w.shape
        groups = w.reshape(n, k // INT4_GROUP, INT4_GROUP)
        low, high = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
        scale = ((high - low) / 15.0).clamp(min=1e-12)
        q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
        # torch dequantizes (q - 8) * scale + zero
        zero = low + 8 * scale
        self.scales = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous().to(
            torch.bfloat16)
        self.weight = torch._convert_weight_to_int4pack_for_cpu(q, 8)
        self.kind = "int4"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "dense":
            return F.linear(x, self.weight)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if self.kind == "int8-native":
            if flat.shape[0] <= kernels.MAX_ROWS:
                out = torch.ops.musicgen_bridge.int8_linear(flat, self.weight, self.scales)
            else:
                # a prompt's many rows: a GEMM in bf16 (AMX where the CPU has it; elsewhere still the
                # fastest GEMM measured, ~2x fp32 on a Zen 4 EPYC), on weights dequantized in one pass
                weight = torch.ops.musicgen_bridge.dequantize_int8(self.weight, self.scales)
                out = F.linear(flat.to(torch.bfloat16), weight).float()
        elif self.kind == "mkldnn":
            out = torch.ops.mkldnn._linear_pointwise(flat, self.weight, None, "none", [], "")
        elif self.kind == "int4":
            out = torch._weight_int4pack_mm_for_cpu(flat, self.weight, INT4_GROUP, self.scales)
        elif flat.shape[0] <= 64:
            out = torch._weight_int8pack_mm(flat.to(self.scales.dtype), self.weight, self.scales)
        else:
            # long prompts: the weight-only kernel is made for a few rows; dequantize once instead
            out = F.linear(flat, self.weight.to(flat.dtype) * self.scales[:, None].to(flat.dtype))
        return out.reshape(*lead, self.out_features)

    def fused(self, x: torch.Tensor, residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
        """``residual + act(x @ W.T)``, ``act`` the exact GELU or nothing: fp32 with a residual (the
        residual stream), else the layer's own output dtype. The native int8 kernel does both while its
        outputs are in cache; other kinds run them as separate ops."""
        if self.kind == "int8-native" and x.numel() <= kernels.MAX_ROWS * self.in_features:
            if residual is not None and not residual.is_contiguous():
                residual = residual.contiguous()
            return torch.ops.musicgen_bridge.int8_linear(x, self.weight, self.scales, int(gelu), residual)
        out = self(x)
        if gelu:
            out = F.gelu(out)
        return out if residual is None else residual + out.float()

    def nbytes(self) -> int:
        bits = {"mkldnn": 16, "int4": 4}.get(self.kind, self.weight.element_size() * 8)
        size = self.out_features * self.in_features * bits // 8
        return size + self.scales.numel() * self.scales.element_size()


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x.to(dtype)`` without the call where it would do nothing (it costs microseconds per step)."""
    return x if x.dtype == dtype else x.to(dtype)


def _is_exact_gelu(activation: Any) -> bool:
    """``F.gelu`` itself, or transformers' ``GELUActivation`` wrapping it (not the tanh or python forms)."""
    return activation is F.gelu or getattr(activation, "act", None) is F.gelu


@dataclass
class _Norm:
    weight: torch.Tensor
    bias: torch.Tensor
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # torch.layer_norm itself: F.layer_norm's Python wrapper costs more than the op at one position
        return torch.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


def _norm(module: Any) -> _Norm:
    return _Norm(module.weight.detach().float(), module.bias.detach().float(), float(module.eps))


@dataclass
class _Layer:
    norm_self: _Norm
    qkv: list[PackedLinear]  # [q, k, v] in fp32 (as the checkpoint), [qkv] fused otherwise
    out_self: PackedLinear
    norm_cross: _Norm | None
    q_cross: PackedLinear | None
    out_cross: PackedLinear | None
    k_cross: torch.Tensor | None  # the text projections, kept as stored: used once per window
    v_cross: torch.Tensor | None
    norm_mlp: _Norm
    fc1: PackedLinear
    fc2: PackedLinear
    activation: Callable[[torch.Tensor], torch.Tensor]
    exact_gelu: bool  # the activation is transformers' "gelu" (erf form): fc1 may apply it itself


class DecoderState:
    """One generation's cache: self-attention keys/values for every position, the text's keys/values."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 cross: list[tuple[torch.Tensor, torch.Tensor]], cross_mask: torch.Tensor | None) -> None:
        self.keys = keys
        self.values = values
        self.cross = cross
        self.cross_mask = cross_mask
        self.length = 0  # positions filled
        # every layer's tensors in the order torch.ops.musicgen_bridge.decoder_layers takes them
        self.native_params: list[torch.Tensor] | None = None

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0


class FastDecoder:
    """MusicGen's decoder (``MusicgenForCausalLM`` or the melody variant) prepared for fast steps.

    Build it once per loaded model; :meth:`start` makes the state for one window and :meth:`forward`
    runs tokens through it. Holds no per-generation state itself.
    """

    def __init__(self, causal_lm: Any, weights: str = "fp32", native_kernels: bool = True) -> None:
        if weights not in WEIGHT_FORMATS:
            raise ValueError(f"unknown weight format {weights!r}: use one of {', '.join(WEIGHT_FORMATS)}")
        decoder = causal_lm.model.decoder
        cfg = causal_lm.config
        self.device = next(causal_lm.parameters()).device
        if weights in ("int8", "int4") and self.device.type != "cpu":
            raise ValueError(f"{weights} weights are for the CPU: use fp16 on a GPU")
        self.weights = weights
        self.compute_dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(weights, torch.bfloat16)
        self.kernel = kernels.KernelStatus(False, "no native kernel for these weights")
        if weights == "int8":
            self.kernel = kernels.load_int8_kernel() if native_kernels else kernels.KernelStatus(
                False, "native kernels not asked for")
        native = self.kernel.available
        # what the linear layers take: the native int8 kernel reads the fp32 residual stream directly
        self.linear_dtype = torch.float32 if native else self.compute_dtype
        self.num_codebooks = int(cfg.num_codebooks)
        self.hidden = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.head_dim = self.hidden // self.heads
        self.vocab = int(cfg.vocab_size)
        fuse = weights != "fp32"  # fp32 keeps the checkpoint's own tensors: same results as transformers
        with torch.no_grad():
            self.embeddings = torch.stack([e.weight.detach().float() for e in decoder.embed_tokens])  # (K, V+1, D)
            self.positions = decoder.embed_positions.weights.detach().float()
            self.layers = [self._layer(layer, weights, fuse, native) for layer in decoder.layers]
            self.final_norm = _norm(decoder.layer_norm)
            heads = torch.cat([h.weight.detach() for h in causal_lm.lm_heads])  # (K*V, D)
            self.lm_heads = PackedLinear(heads, "bf16" if weights in ("int8", "int4") else weights, self.device)
        self.has_cross = self.layers[0].q_cross is not None
        # the native attention over the cache (few queries); prompts of many positions keep torch's SDPA
        self.native_attention = native and self.head_dim % 16 == 0 and self.head_dim <= 256
        self.native_step = self.native_attention and self._whole_layers_native()
        self.norm_eps = self.layers[0].norm_self.eps
        self.graphs = GraphCache(self)  # CUDA graphs of the single-position step, one per shape

    def _layer(self, layer: Any, weights: str, fuse: bool, native: bool) -> _Layer:
        def linear(weight: torch.Tensor) -> PackedLinear:
            return PackedLinear(weight, weights, self.device, native)

        attn = layer.self_attn
        if fuse:
            qkv = [linear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))]
        else:
            qkv = [linear(p.weight) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
        cross = getattr(layer, "encoder_attn", None)
        return _Layer(
            norm_self=_norm(layer.self_attn_layer_norm),
            qkv=qkv,
            out_self=linear(attn.out_proj.weight),
            norm_cross=None if cross is None else _norm(layer.encoder_attn_layer_norm),
            q_cross=None if cross is None else linear(cross.q_proj.weight),
            out_cross=None if cross is None else linear(cross.out_proj.weight),
            k_cross=None if cross is None else cross.k_proj.weight.detach(),
            v_cross=None if cross is None else cross.v_proj.weight.detach(),
            norm_mlp=_norm(layer.final_layer_norm),
            fc1=linear(layer.fc1.weight),
            fc2=linear(layer.fc2.weight),
            activation=layer.activation_fn,
            exact_gelu=_is_exact_gelu(layer.activation_fn),
        )

    def describe(self) -> str:
        """What does the matrix work, in a few words (``info()``, the serve banner, ``bench``)."""
        if self.weights != "int8":
            return f"torch ({self.weights})"
        if not self.kernel.available:
            return f"torch's int8 kernel ({self.kernel.reason})"
        linears = [lin for layer in self.layers
                   for lin in (*layer.qkv, layer.out_self, layer.q_cross, layer.out_cross, layer.fc1, layer.fc2)
                   if lin is not None]
        native = sum(lin.kind == "int8-native" for lin in linears)
        if native < len(linears):
            return f"{self.kernel.reason} for {native} of {len(linears)} linear layers (other shapes: torch's)"
        return self.kernel.reason

    def facts(self) -> dict[str, str]:
        """What decides this decoder's numbers, for the sidecar: weights, matrix kernel, attention dtype."""
        return {"weights": self.weights, "kernel": self.describe(),
                "attention": attention_fact(self.device.type, self.compute_dtype), "step": self.graphs.path()}

    def nbytes(self) -> int:
        """Bytes of weights this decoder reads (besides the checkpoint's own modules)."""
        total = self.embeddings.numel() * 4 + self.lm_heads.nbytes()
        for layer in self.layers:
            for lin in (*layer.qkv, layer.out_self, layer.q_cross, layer.out_cross, layer.fc1, layer.fc2):
                if lin is not None:
                    total += lin.nbytes()
        return total

    # -- one generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, rows: int, capacity: int, encoder_hidden_states: torch.Tensor | None = None,
              encoder_attention_mask: torch.Tensor | None = None, zero: bool = False) -> DecoderState:
        """A fresh state for ``rows`` sequences of up to ``capacity`` positions.

        The text's keys and values are projected here, once. ``zero`` fills the cache (only the
        static-shape step reads positions it has not written).
        """
        alloc = torch.zeros if zero else torch.empty
        shape = (rows, self.heads, capacity, self.head_dim)
        keys = [alloc(shape, dtype=self.compute_dtype, device=self.device) for _ in self.layers]
        values = [alloc(shape, dtype=self.compute_dtype, device=self.device) for _ in self.layers]
        state = DecoderState(keys, values, [], None)
        self.set_conditioning(state, encoder_hidden_states, encoder_attention_mask)
        return state

    @torch.inference_mode()
    def set_conditioning(self, state: DecoderState, encoder_hidden_states: torch.Tensor | None,
                         encoder_attention_mask: torch.Tensor | None = None) -> None:
        """Project the text's keys and values into ``state`` (replacing any there): the positions already
        cached stay, the next ones attend to this text. Rows must match the state's."""
        if self.has_cross and encoder_hidden_states is not None and state.keys:
            if encoder_hidden_states.shape[0] != state.keys[0].shape[0]:
                raise ValueError(f"the text has {encoder_hidden_states.shape[0]} rows, the decoder state "
                                 f"{state.keys[0].shape[0]}")
        state.cross, state.cross_mask = self.project_conditioning(encoder_hidden_states, encoder_attention_mask)
        if self.native_step:
            state.native_params = self._native_params(state)

    @torch.inference_mode()
    def project_conditioning(self, encoder_hidden_states: torch.Tensor | None,
                             encoder_attention_mask: torch.Tensor | None = None
                             ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """Each layer's text keys and values (rows, heads, T, head_dim) and the additive text mask."""
        cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        cross_mask = None
        if self.has_cross and encoder_hidden_states is not None:
            states = encoder_hidden_states.to(self.device)
            for layer in self.layers:
                assert layer.k_cross is not None and layer.v_cross is not None
                k = F.linear(states.to(layer.k_cross.dtype), layer.k_cross)
                v = F.linear(states.to(layer.v_cross.dtype), layer.v_cross)
                cross.append((self.split(k.to(self.compute_dtype)), self.split(v.to(self.compute_dtype))))
            if encoder_attention_mask is not None:
                allowed = encoder_attention_mask.to(self.device).bool()[:, None, None, :]
                # a float mask: a row with no text at all attends uniformly to zero values, giving zero,
                # where a boolean mask would give NaN
                cross_mask = torch.zeros(allowed.shape, dtype=self.compute_dtype, device=self.device)
                cross_mask.masked_fill_(~allowed, torch.finfo(self.compute_dtype).min)
        return cross, cross_mask

    def _whole_layers_native(self) -> bool:
        """Whether every layer can run as one native call per step: every linear on the native int8
        kernel, fused q/k/v, the exact GELU, one layer-norm epsilon."""
        eps = self.layers[0].norm_self.eps
        for layer in self.layers:
            linears = [*layer.qkv, layer.out_self, layer.fc1, layer.fc2]
            norms = [layer.norm_self, layer.norm_mlp]
            if self.has_cross:
                linears += [layer.q_cross, layer.out_cross]  # type: ignore[list-item]
                norms.append(layer.norm_cross)  # type: ignore[arg-type]
            if len(layer.qkv) != 1 or not layer.exact_gelu or any(n.eps != eps for n in norms):
                return False
            if any(lin is None or lin.kind != "int8-native" for lin in linears):
                return False
        return True

    def _native_params(self, state: DecoderState) -> list[torch.Tensor]:
        none = torch.empty(0)
        params: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            cross = bool(state.cross) and layer.q_cross is not None
            q_cross, out_cross, norm_cross = layer.q_cross, layer.out_cross, layer.norm_cross
            params += [layer.norm_self.weight, layer.norm_self.bias, layer.qkv[0].weight, layer.qkv[0].scales,
                       layer.out_self.weight, layer.out_self.scales]
            if cross and q_cross is not None and out_cross is not None and norm_cross is not None:
                params += [norm_cross.weight, norm_cross.bias, q_cross.weight, q_cross.scales,
                           out_cross.weight, out_cross.scales, *state.cross[i]]
            else:
                params += [none] * 8
            params += [layer.norm_mlp.weight, layer.norm_mlp.bias, layer.fc1.weight, layer.fc1.scales,
                       layer.fc2.weight, layer.fc2.scales, state.keys[i], state.values[i]]
        return params

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, T, D) -> (rows, heads, T, head_dim)."""
        rows, length = x.shape[0], x.shape[1]
        return x.view(rows, length, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(rows, heads, T, head_dim) -> (rows, T, D): :meth:`split`'s inverse."""
        rows, length = x.shape[0], x.shape[2]
        return x.transpose(1, 2).reshape(rows, length, self.hidden)

    @torch.inference_mode()
    def forward(self, state: DecoderState, tokens: torch.Tensor | None, prefix: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Logits (rows, K, vocab) in fp32 for the last of the given positions; the cache advances.

        ``tokens`` is (rows, K, T); ``prefix`` (rows, P, D) are embeddings placed before them (melody).
        """
        hidden = self._embed(tokens, prefix, state.length)
        start = state.length
        length = hidden.shape[1]
        if start + length > state.capacity:
            raise ValueError(f"decoder state holds {state.capacity} positions, asked for {start + length}")
        # a causal mask only where several new positions follow cached ones (never in the token loop)
        mask = None
        if length > 1 and start > 0:
            mask = torch.ones(length, start + length, dtype=torch.bool, device=self.device).tril(start)
        if state.native_params is not None and length == 1 and hidden.shape[0] <= kernels.MAX_ROWS:
            # one position (every step of the token loop): all layers in one native call
            hidden = torch.ops.musicgen_bridge.decoder_layers(hidden, state.native_params, start, bool(state.cross),
                                                              state.cross_mask, self.heads, self.norm_eps)
        else:
            native = self.native_attention and length <= kernels.MAX_ROWS
            hidden = self.run_layers(hidden, *self._attention(state, start, mask, native))
        state.length = start + length
        return self.head(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The logits (rows, K, vocab) in fp32 of the last position of the residual stream ``hidden``."""
        last = self.final_norm(hidden[:, -1:])
        logits = self.lm_heads(last.to(self.compute_dtype))
        return logits.float().view(-1, self.num_codebooks, self.vocab)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The sum of the codebooks' embeddings: (rows, K, T) tokens -> (rows, T, D) in fp32."""
        embedded = self.embeddings[0][tokens[:, 0]]
        for k in range(1, self.num_codebooks):
            embedded = embedded + self.embeddings[k][tokens[:, k]]
        return embedded

    def _embed(self, tokens: torch.Tensor | None, prefix: torch.Tensor | None, start: int) -> torch.Tensor:
        parts = []
        if prefix is not None:
            parts.append(prefix.to(self.device, torch.float32))
        if tokens is not None:
            parts.append(self.embed_tokens(tokens.to(self.device)))
        hidden = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return hidden + self.positions[start : start + hidden.shape[1]]

    def _attention(self, state: DecoderState, start: int, mask: torch.Tensor | None,
                   native: bool) -> tuple[SelfAttention, TextAttention | None]:
        """:meth:`run_layers`' attention on ``state``: over its cache (the new keys and values written from
        ``start`` on), and on its text's keys and values under the text mask (None where it has no text)."""
        adt = sdpa_dtype(self.device.type, self.compute_dtype)

        def attend_self(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            end = start + q.shape[1]
            keys, values = state.keys[index], state.values[index]
            keys[:, :, start:end] = self.split(k)
            values[:, :, start:end] = self.split(v)
            if native:
                # the native kernel reads the cache as stored (decoder_layers calls the same op)
                return torch.ops.musicgen_bridge.attention(_cast(q, torch.float32), keys, values, end, None, True)
            attn = F.scaled_dot_product_attention(self.split(_cast(q, adt)), _cast(keys[:, :, :end], adt),
                                                  _cast(values[:, :, :end], adt), attn_mask=mask,
                                                  is_causal=q.shape[1] > 1 and start == 0)
            return self.merge(attn)

        def attend_text(index: int, q: torch.Tensor) -> torch.Tensor:
            ck, cv = state.cross[index]
            if native:
                return torch.ops.musicgen_bridge.attention(_cast(q, torch.float32), ck, cv, int(ck.shape[2]),
                                                           state.cross_mask, False)
            text_mask = None if state.cross_mask is None else _cast(state.cross_mask, adt)
            attn = F.scaled_dot_product_attention(self.split(_cast(q, adt)), _cast(ck, adt), _cast(cv, adt),
                                                  attn_mask=text_mask)
            return self.merge(attn)

        return attend_self, (attend_text if state.cross else None)

    def run_layers(self, hidden: torch.Tensor, attend_self: SelfAttention,
                   attend_text: TextAttention | None) -> torch.Tensor:
        """Every decoder layer on the residual stream ``hidden`` (rows, T, D), fp32.

        The one Python form of the layer maths; the native ``decoder_layers`` op computes the same for
        one position. Where keys and values live is the caller's: :meth:`forward`'s growing cache, or
        the static buffers of the step a CUDA graph captures (``bridge.engine.cuda_graphs.static_step``).
        ``attend_text`` is None when there is no text to attend to.
        """
        linear_dtype = self.linear_dtype
        for index, layer in enumerate(self.layers):
            x = _cast(layer.norm_self(hidden), linear_dtype)
            if len(layer.qkv) == 1:
                qkv, width = layer.qkv[0](x), self.hidden
                q, k, v = qkv[..., :width], qkv[..., width : 2 * width], qkv[..., 2 * width :]
            else:
                q, k, v = (proj(x) for proj in layer.qkv)
            hidden = layer.out_self.fused(_cast(attend_self(index, q, k, v), linear_dtype), residual=hidden)
            if attend_text is not None and layer.q_cross is not None and layer.out_cross is not None:
                assert layer.norm_cross is not None
                x = _cast(layer.norm_cross(hidden), linear_dtype)
                hidden = layer.out_cross.fused(_cast(attend_text(index, layer.q_cross(x)), linear_dtype),
                                               residual=hidden)
            x = _cast(layer.norm_mlp(hidden), linear_dtype)
            inner = layer.fc1.fused(x, gelu=True) if layer.exact_gelu else layer.activation(layer.fc1(x))
            hidden = layer.fc2.fused(inner, residual=hidden)
        return hidden
