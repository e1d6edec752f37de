"""What the running machine's CPU can do, read from its features (never timed), and the choices that
follow from them: the same machine always gets the same choice, so a seed gives the same audio in
every process, busy or idle.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no ``/proc/cpuinfo``)."""
    try:
        with cpuinfo.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _this_machine_flags() -> frozenset[str]:
    # a fact of the hardware, read once per process; the same on every read
    return cpu_flags()


def has_amx(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU has AMX for bf16 (Intel Sapphire Rapids and later)."""
    flags = _this_machine_flags() if flags is None else flags
    return "amx_bf16" in flags and "amx_tile" in flags


def sdpa_dtype(device_type: str, cache_dtype: torch.dtype, flags: frozenset[str] | None = None) -> torch.dtype:
    """The dtype torch's ``scaled_dot_product_attention`` runs in for a KV cache kept in ``cache_dtype``.

    The rule: off the CPU, and for an fp32 cache, the cache's own dtype; on a CPU with a bf16 or fp16
    cache, bf16 where the CPU has AMX (its bf16 attention kernels run there), else fp32 (bf16
    attention without AMX was measured several times slower: 1.19 against 0.115 ms a layer for one
    query over 500 positions on a Zen 4 EPYC). Earlier versions timed both once per process, which
    let a busy moment change the attention's precision and so the audio of a seed.
    """
    if device_type != "cpu" or cache_dtype == torch.float32:
        return cache_dtype
    if cache_dtype == torch.bfloat16 and has_amx(flags):
        return torch.bfloat16
    return torch.float32


def attention_fact(device_type: str, cache_dtype: torch.dtype, flags: frozenset[str] | None = None) -> str:
    """The attention precision and why, for the sidecar and ``info`` (e.g. ``"fp32 (no AMX)"``)."""
    chosen = sdpa_dtype(device_type, cache_dtype, flags)
    name = str(chosen).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32").replace(
        "float16", "fp16")
    if device_type != "cpu" or cache_dtype == torch.float32:
        return f"{name} (the cache's dtype)"
    return f"{name} ({'AMX' if has_amx(flags) else 'no AMX'})"
