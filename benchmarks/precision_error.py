"""What each precision of the fast decoder changes in the distribution the tokens are drawn from.

Feeds the same tokens, one position at a time as in generation, through the decoder in fp32 and in
each other precision, applies guidance 3 and top-k 250 as the engine does, and compares with fp32:
relative logits error, total-variation distance of the sampling distributions (the share of
probability that moves), KL divergence, and how often the most likely token is the same.

    python benchmarks/precision_error.py --model small-arch-random --positions 200
    python benchmarks/precision_error.py --model facebook/musicgen-small   # real weights, if cached

Random weights (the built-in *-arch-random models) have no outliers and near-flat distributions,
so numbers on a real checkpoint are the ones to trust.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from bridge.engine import Engine
from bridge.engine.decoding import Sampling
from bridge.engine.fast_decoder import FastDecoder
from bridge.engine.models import load_model


def guided_logits(engine: Engine, fast: FastDecoder, tokens: torch.Tensor, prompt: str) -> torch.Tensor:
    cond = engine.condition(prompt, 1, Sampling(), None)
    positions = tokens.shape[-1]
    extra = 0 if cond.prefix is None else cond.prefix.shape[1]
    state = fast.start(2, positions + extra, cond.encoder_hidden_states, cond.encoder_attention_mask)
    out = []
    with torch.inference_mode():
        for pos in range(positions):
            step = tokens[:, :, pos : pos + 1].repeat(2, 1, 1)
            logits = fast.forward(state, step, prefix=cond.prefix if pos == 0 else None)
            out.append(logits[1] + (logits[0] - logits[1]) * 3.0)
    return torch.stack(out)  # (positions, K, V)


def top_k_probs(logits: torch.Tensor, k: int = 250) -> torch.Tensor:
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf")).softmax(dim=-1)


def compare(want: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    p, q = top_k_probs(want), top_k_probs(got)
    tv = 0.5 * (p - q).abs().sum(-1)
    logp, logq = want.log_softmax(-1), got.log_softmax(-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    return {
        "relative_logits_error": float((got - want).norm() / want.norm()),
        "max_abs_logit_error": float((got - want).abs().max()),
        "top_k_total_variation_mean": float(tv.mean()),
        "top_k_total_variation_p99": float(tv.flatten().quantile(0.99)),
        "kl_mean": float(kl.mean()),
        "top1_agreement": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-arch-random")
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--precisions", default="bf16,int8,int8-torch,int4,fp16",
                        help="comma-separated; int8-torch is int8 on torch's kernel instead of the native one")
    parser.add_argument("--prompt", default="lo-fi hip hop with dusty keys and warm bass")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    loaded = load_model(args.model, precision="fp32")
    engine = Engine(loaded)
    gen = torch.Generator().manual_seed(0)
    vocab = int(loaded.model.decoder.config.vocab_size)
    tokens = torch.randint(0, vocab, (1, loaded.num_codebooks, args.positions), generator=gen)
    tokens[:, :, 0] = loaded.pad_token_id
    reference = guided_logits(engine, FastDecoder(loaded.model.decoder, "fp32"), tokens, args.prompt)
    results = {}
    for name in args.precisions.split(","):
        # "int8-torch": int8 weights on torch's kernel (bf16 activations) instead of the native one
        weights, native = name.removesuffix("-torch"), not name.endswith("-torch")
        fast = FastDecoder(loaded.model.decoder, weights, native_kernels=native)
        started = time.perf_counter()
        got = guided_logits(engine, fast, tokens, args.prompt)
        results[name] = {**compare(reference, got), "kernel": fast.describe(), "seconds": time.perf_counter() - started}
        print(name, json.dumps(results[name]), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"model": args.model, "positions": args.positions, "results": results}, out, indent=2)


if __name__ == "__main__":
    main()
