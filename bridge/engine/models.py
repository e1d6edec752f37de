"""Building and loading MusicGen models: Hugging Face ids, local folders and built-in random ones.

Kept apart from behaviour (the engine): this file only answers "give me the model called X on
device D", and says clearly why it cannot.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bridge.engine.codec_pieces import MPS_CONV_OUTPUT_LIMIT, limit_convs
from bridge.errors import ModelError

log = logging.getLogger(__name__)

BUILTIN_TINY = ("tiny-random", "tiny-random-melody", "tiny-random-stereo")
BUILTIN_ARCH = ("small-arch-random", "medium-arch-random", "large-arch-random")

# Decoder sizes of the released checkpoints (hidden, layers, heads), from transformers' conversion script.
_ARCH_SIZES = {"small": (1024, 24, 16), "medium": (1536, 48, 24), "large": (2048, 48, 32)}


class ByteTokenizer:
    """A text tokenizer that needs no download: UTF-8 bytes shifted past the special ids.

    Used by the built-in random models only; real checkpoints bring their own T5 tokenizer.
    """

    pad_id = 0
    eos_id = 1
    offset = 3
    vocab_size = 256 + offset
    max_tokens: int | None = 256  # 255 bytes and the end token: what the call keeps

    def count(self, text: str) -> int:
        """Tokens ``text`` takes before any cut (its bytes and the end token)."""
        return len(text.encode("utf-8")) + 1

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [[b + self.offset for b in text.encode("utf-8")[:255]] + [self.eos_id] for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask


class HFTokenizer:
    """Wraps the checkpoint's own tokenizer to the same call shape as ByteTokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        limit = getattr(tokenizer, "model_max_length", None)
        # tokenizers without a limit report a huge sentinel (int(1e30)): no limit then
        self.max_tokens: int | None = int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else None

    def count(self, text: str) -> int:
        """Tokens ``text`` takes before any cut (special tokens included)."""
        return len(self._tokenizer(text, truncation=False)["input_ids"])

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self._tokenizer(list(texts), padding=True, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]


@dataclass
class LoadedModel:
    """A MusicGen model ready to run, with what the engine needs to know about it."""

    name: str
    model: Any  # MusicgenForConditionalGeneration or MusicgenMelodyForConditionalGeneration
    tokenizer: ByteTokenizer | HFTokenizer
    device: torch.device
    dtype: torch.dtype
    is_melody: bool
    sample_rate: int
    frame_rate: float
    hop_length: int
    channels: int
    num_codebooks: int
    pad_token_id: int
    max_frames: int  # the decoder's trained window (about 30 s at 50 Hz for real checkpoints)
    #: how the fast decoder stores its weights (bridge/engine/fast_decoder.py): fp32, fp16, bf16, int8 or int4
    precision: str = "fp32"

    @property
    def max_text_tokens(self) -> int | None:
        """The most tokens the text encoder reads of one text (None: no stated limit)."""
        return self.tokenizer.max_tokens


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, else Apple MPS, else CPU; an explicit choice is checked, never silently replaced."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ModelError(f"unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError("device mps was asked for but Apple MPS is not available: use --device cpu or auto")
    return device


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The dtype of the model's modules: fp16 on CUDA and Apple's MPS (bf16 where asked), fp32 on the CPU
    unless asked otherwise. With int8 the modules stay fp32: the int8 weights are the fast decoder's own
    copy. (On MPS fp32 would hold musicgen-large in ~13 GB: a 16 GB Mac would swap.)"""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float32,
             "int4": torch.float32}
    if precision == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision not in table:
        raise ModelError(f"unknown precision {precision!r}: use auto, fp32, fp16, bf16, int8 or int4")
    if precision in ("int8", "int4") and device.type != "cpu":
        raise ModelError(f"precision {precision} is for the CPU, not {device.type}: use fp16 (or auto) on a GPU")
    return table[precision]


def pick_precision(device: torch.device, precision: str = "auto") -> str:
    """How the fast decoder stores weights: int8 on CPU by default (weight-only, one scale per output
    channel; see the README for what each precision trades), fp16 on CUDA and MPS, fp32 elsewhere."""
    pick_dtype(device, precision)  # checks the name and the device
    if precision != "auto":
        return precision
    if device.type in ("cuda", "mps"):
        return "fp16"
    if device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm"):
        return "int8"
    return "fp32"


def _encodec_config(tiny: bool, channels: int = 1) -> Any:
    from transformers import EncodecConfig  # noqa: PLC0415

    if tiny:
        # hop 640 at 32 kHz (50 frames a second), as the real codec, with very few filters.
        return EncodecConfig(
            sampling_rate=32000, audio_channels=1, hidden_size=16, num_filters=4, num_residual_layers=1,
            upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=16, num_lstm_layers=1,
            target_bandwidths=[2.2], use_causal_conv=False, use_conv_shortcut=False, pad_mode="reflect",
            norm_type="weight_norm", chunk_length_s=None, overlap=None, compress=2,
        )
    # facebook/encodec_32khz
    return EncodecConfig(
        sampling_rate=32000, audio_channels=1, hidden_size=128, num_filters=64, num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4], codebook_size=2048, codebook_dim=128, num_lstm_layers=2,
        target_bandwidths=[2.2], use_causal_conv=False, use_conv_shortcut=False, pad_mode="reflect",
        norm_type="weight_norm", chunk_length_s=None, overlap=None, compress=2,
    )


def build_random(name: str, seed: int = 1234) -> tuple[Any, ByteTokenizer | HFTokenizer]:
    """Build a built-in random model (``tiny-random*`` or ``*-arch-random``) with fixed-seed weights."""
    from transformers import (  # noqa: PLC0415
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyForConditionalGeneration,
        T5Config,
    )

    tiny = name.startswith("tiny-random")
    melody = name.endswith("-melody")
    stereo = name.endswith("-stereo")
    channels = 2 if stereo else 1
    codec = _encodec_config(tiny)
    if tiny:
        text = T5Config(vocab_size=ByteTokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, pad_token_id=ByteTokenizer.pad_id,
                        eos_token_id=ByteTokenizer.eos_id)
        hidden, layers, heads, vocab = 32, 2, 2, codec.codebook_size
    else:
        size = name.split("-", maxsplit=1)[0]
        text = T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                        relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1)
        hidden, layers, heads = _ARCH_SIZES[size]
        vocab = codec.codebook_size
    decoder_kwargs: dict[str, Any] = {
        "vocab_size": vocab, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "ffn_dim": hidden * 4, "num_codebooks": 4 * channels, "audio_channels": channels,
        "max_position_embeddings": 2048, "pad_token_id": vocab, "bos_token_id": vocab,
        "decoder_start_token_id": vocab, "tie_word_embeddings": False,
    }
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if melody:
            decoder_cfg: Any = MusicgenMelodyDecoderConfig(**decoder_kwargs)
            config: Any = MusicgenMelodyConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(),
                                          decoder=decoder_cfg.to_dict(), num_chroma=12, chroma_length=235)
            model: Any = MusicgenMelodyForConditionalGeneration(config)
        else:
            decoder_cfg = MusicgenDecoderConfig(**decoder_kwargs)
            config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=codec.to_dict(),
                                    decoder=decoder_cfg.to_dict())
            model = MusicgenForConditionalGeneration(config)
        with torch.no_grad():
            _randomize_codebooks(model)
    finally:
        torch.random.set_rng_state(generator_state)
    gen = model.generation_config
    gen.pad_token_id = vocab
    gen.decoder_start_token_id = vocab
    gen.bos_token_id = vocab
    gen.max_length = 1500
    tokenizer: ByteTokenizer | HFTokenizer
    if tiny:
        tokenizer = ByteTokenizer()
    else:
        # The arch-random models are for timing: the prompt only has to have a realistic length.
        tokenizer = _SizedByteTokenizer(text.vocab_size)
    return model, tokenizer


def _randomize_codebooks(model: Any) -> None:
    """EnCodec's codebooks start as zeros (they are learned by k-means), which would make every code
    decode to the same sound: give the random models random entries so codes are audible."""
    for layer in model.audio_encoder.quantizer.layers:
        embed = layer.codebook.embed
        embed.copy_(torch.randn_like(embed))
        layer.codebook.embed_avg.copy_(embed)


class _SizedByteTokenizer(ByteTokenizer):
    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size


def _is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name))


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a DNS lookup and a TCP connect)."""
    import socket  # noqa: PLC0415

    endpoint = os.environ.get("HF_ENDPOINT", "")
    if endpoint:
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_pretrained(name: str) -> tuple[Any, HFTokenizer]:
    """Load a checkpoint by Hugging Face id or local folder; fail with the ways out."""
    from transformers import AutoConfig, AutoTokenizer  # noqa: PLC0415

    source = os.path.expanduser(name) if _is_local(name) else name
    ways_out = (
        f"cannot load model {name!r}: it is not in the local Hugging Face cache and cannot be downloaded "
        "(offline?). Either pass a local folder with the checkpoint (--model /path/to/musicgen-small), "
        "or use --model tiny-random for a plumbing test (it makes noise, not music)"
    )
    # read at call time (huggingface_hub reads it once at import): lets a daemon started offline fail fast
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline and not _is_local(name) and not _hub_reachable():
        offline = True  # use the cache alone instead of retrying a dead network for half a minute
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{ways_out}. Cause: {str(exc).splitlines()[0]}") from None
    model_type = getattr(config, "model_type", "")
    try:
        if model_type == "musicgen_melody":
            from transformers import MusicgenMelodyForConditionalGeneration  # noqa: PLC0415

            model: Any = MusicgenMelodyForConditionalGeneration.from_pretrained(source, local_files_only=offline)
        elif model_type == "musicgen":
            from transformers import MusicgenForConditionalGeneration  # noqa: PLC0415

            model = MusicgenForConditionalGeneration.from_pretrained(source, local_files_only=offline)
        else:
            raise ModelError(f"{name!r} is a {model_type or 'unknown'} model, not MusicGen: use a facebook/musicgen-* "
                             "checkpoint or a folder holding one")
        tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(source, local_files_only=offline))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{ways_out}. Cause: {str(exc).splitlines()[0]}") from None
    return model, tokenizer


def load_model(name: str, device: str = "auto", precision: str = "auto") -> LoadedModel:
    """The model called ``name`` on the chosen device, in eval mode, ready for the engine."""
    dev = pick_device(device)
    dtype = pick_dtype(dev, precision)
    weights = pick_precision(dev, precision)
    if name in BUILTIN_TINY or name in BUILTIN_ARCH or name == "tiny-random-stereo":
        model, tokenizer = build_random(name)
    elif name.endswith("-arch-random") or name.startswith("tiny-random"):
        known = ", ".join(BUILTIN_TINY + BUILTIN_ARCH)
        raise ModelError(f"unknown built-in model {name!r}: the built-in ones are {known}")
    else:
        model, tokenizer = load_pretrained(name)
    model.eval()
    # The codec stays in fp32: it is cheap and half precision audibly degrades it.
    model.to(dev)
    if dev.type == "mps":  # MPS refuses conv outputs over 65,536 samples: the codec computes in pieces
        changed = limit_convs(model.audio_encoder, MPS_CONV_OUTPUT_LIMIT)
        log.info("codec: %d convolutions compute in pieces of at most %d samples (MPS)", changed,
                 MPS_CONV_OUTPUT_LIMIT)
    if dtype != torch.float32:
        model.text_encoder.to(dtype)
        model.decoder.to(dtype)
        for attr in ("enc_to_dec_proj", "audio_enc_to_dec_proj"):
            if hasattr(model, attr):
                getattr(model, attr).to(dtype)
    codec_cfg = model.config.audio_encoder
    hop = 1
    for ratio in codec_cfg.upsampling_ratios:
        hop *= int(ratio)
    decoder_cfg = model.config.decoder
    is_melody = model.config.model_type == "musicgen_melody"
    pad = int(model.generation_config.pad_token_id if model.generation_config.pad_token_id is not None
              else decoder_cfg.pad_token_id)
    max_frames = 1500
    if is_melody:
        # the conditioning prefix shares the decoder's positions with the audio tokens
        max_frames = min(max_frames, int(decoder_cfg.max_position_embeddings) - 256 - int(model.config.chroma_length))
    log.info("loaded %s on %s (%s, decoder weights %s)", name, dev, dtype, weights)
    return LoadedModel(
        name=name, model=model, tokenizer=tokenizer, device=dev, dtype=dtype, is_melody=is_melody,
        sample_rate=int(codec_cfg.sampling_rate), frame_rate=codec_cfg.sampling_rate / hop, hop_length=hop,
        channels=int(decoder_cfg.audio_channels), num_codebooks=int(decoder_cfg.num_codebooks),
        pad_token_id=pad, max_frames=max_frames, precision=weights,
    )

