"""The same seed gives the same audio in every process: the attention precision follows the machine's
features (a rule, never a race), whatever else loads the CPU, and the sidecar says which it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bridge.engine import machine

# One generation on tiny-random with bf16 weights (a bf16 cache: the path where the attention dtype is
# a choice), its audio's hash and the attention fact printed as one JSON line.
_GENERATE = """
import hashlib, json
import torch
from bridge.engine import Engine, GenerationSpec
from bridge.engine.decoding import Sampling
from bridge.engine.models import load_model
engine = Engine(load_model("tiny-random", device="cpu", precision="bf16"))
codes = engine.generate_codes(GenerationSpec(prompt="dusty keys", frames=60, seed=1234,
                                             sampling=Sampling(guidance=3.0, top_k=50)))
audio = engine.decode(codes)
print(json.dumps({"sha256": hashlib.sha256(audio.tobytes()).hexdigest(), "samples": int(audio.shape[-1]),
                  "engine": engine.loop.fast.facts()}))
"""


def _generate_in_a_process() -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", _GENERATE], capture_output=True, text=True, env=env, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_processes_one_under_a_cpu_burning_load_give_the_same_audio_for_a_seed():
    quiet = _generate_in_a_process()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        busy = _generate_in_a_process()
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()
    assert quiet["samples"] == busy["samples"] == 60 * 640
    assert quiet["sha256"] == busy["sha256"]
    assert quiet["engine"] == busy["engine"]
    assert quiet["engine"]["attention"] == machine.attention_fact("cpu", torch.bfloat16)


def _cpuinfo(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
                    f"flags\t\t: {flags}\n", encoding="utf-8")
    return path


def test_cpu_flags_are_read_from_cpuinfo_and_missing_cpuinfo_gives_none(tmp_path):
    flags = machine.cpu_flags(_cpuinfo(tmp_path, "fpu avx512f amx_bf16 amx_tile"))
    assert {"avx512f", "amx_bf16", "amx_tile"} <= flags
    assert machine.cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize(("flags", "device", "cache", "expected"), [
    ("avx512f avx512_bf16 amx_bf16 amx_tile", "cpu", torch.bfloat16, torch.bfloat16),
    ("avx512f avx512_bf16 avx512_vnni", "cpu", torch.bfloat16, torch.float32),  # Zen 4: no AMX
    ("avx2", "cpu", torch.bfloat16, torch.float32),
    ("amx_bf16 amx_tile", "cpu", torch.float16, torch.float32),  # AMX-FP16 is not asked for
    ("amx_bf16 amx_tile", "cpu", torch.float32, torch.float32),
    ("", "cuda", torch.float16, torch.float16),
    ("", "mps", torch.float16, torch.float16),
])
def test_the_attention_dtype_follows_the_machine_features(tmp_path, flags, device, cache, expected):
    features = machine.cpu_flags(_cpuinfo(tmp_path, flags)) if flags else frozenset()
    assert machine.sdpa_dtype(device, cache, features) == expected
    # asked again (busy or idle), the same answer
    assert machine.sdpa_dtype(device, cache, features) == expected


def test_the_attention_fact_names_the_dtype_and_the_reason():
    amx = frozenset({"amx_bf16", "amx_tile"})
    assert machine.attention_fact("cpu", torch.bfloat16, amx) == "bf16 (AMX)"
    assert machine.attention_fact("cpu", torch.bfloat16, frozenset()) == "fp32 (no AMX)"
    assert machine.attention_fact("cuda", torch.float16, frozenset()) == "fp16 (the cache's dtype)"


def test_the_sidecar_records_the_engine_facts(tiny_bridge):
    request = tiny_bridge.make_request("text", "lofi", 1.0, None, {"seed": 3})
    result = tiny_bridge.run("t1", request, lambda _f: None, lambda: False)
    sidecar = json.loads(result.sidecars[0].read_text())
    assert sidecar["engine"] == tiny_bridge.engine.loop.fast.facts()
    assert sidecar["engine"]["weights"] == "fp32"
    assert sidecar["engine"]["attention"] == "fp32 (the cache's dtype)"
