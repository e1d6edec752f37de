"""Milliseconds per decoder step of the engine's fast decoder in each precision (no sampling, no codec).

    python benchmarks/step_times.py --model small-arch-random --precisions fp32,bf16,int8,int8-torch,int4

Each precision loads its own copy of the model, runs a guidance batch (2 rows) over ``--warmup``
positions, then times ``--steps`` more, one position at a time as in generation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bridge.engine import Engine
from bridge.engine.decoding import Sampling
from bridge.engine.fast_decoder import FastDecoder
from bridge.engine.models import load_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small-arch-random")
    parser.add_argument("--precisions", default="fp32,bf16,int8,int8-torch,int4")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, float] = {}
    for precision in args.precisions.split(","):
        # "int8-torch": the int8 weights on torch's kernel and Python layers instead of the native ones
        weights = precision.removesuffix("-torch")
        engine = Engine(load_model(args.model, precision=weights))
        fast = engine.loop.fast
        if fast is None:
            raise SystemExit(f"{args.model} in {precision} has no fast decoder to time")
        if precision.endswith("-torch"):
            fast = FastDecoder(engine.model.decoder, weights, native_kernels=False)
        cond = engine.condition("lofi keys", 1, Sampling(), None)
        state = fast.start(2, args.warmup + args.steps, cond.encoder_hidden_states, cond.encoder_attention_mask)
        tokens = torch.zeros((2, fast.num_codebooks, 1), dtype=torch.long)
        with torch.inference_mode():
            for _ in range(args.warmup):
                fast.forward(state, tokens)
            started = time.perf_counter()
            for _ in range(args.steps):
                fast.forward(state, tokens)
        results[precision] = (time.perf_counter() - started) * 1000 / args.steps
        print(f"{precision:5} {results[precision]:6.1f} ms per step ({torch.get_num_threads()} threads)", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"model": args.model, "ms_per_step": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
