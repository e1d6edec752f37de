"""Native CPU kernels, built on first use with the machine's C++ compiler.

``int8_linear.cpp`` registers these ops (see that file for how they work):

- ``torch.ops.musicgen_bridge.int8_linear``: the int8 weight-only linear layer of the fast decoder,
  with an optional fused GELU and residual add;
- ``torch.ops.musicgen_bridge.attention``: a few queries over the KV cache (bf16 or fp32), read once
  at the memory's speed, fp32 sums (torch's bf16 attention is ~10x slower on CPUs without AMX);
- ``torch.ops.musicgen_bridge.dequantize_int8``: the packed int8 weights back in bf16 in one pass, for
  a prompt's GEMM;
- ``torch.ops.musicgen_bridge.decoder_layers``: all decoder layers for one position, built on the
  two above, so a decoding step is one call instead of ~30 Python calls per layer;
- ``torch.ops.musicgen_bridge.isa``: which build is loaded (``"AVX-512 VNNI"`` or ``"AVX2"``).

The library is built for the best instruction set the CPU has: AVX-512 with VNNI, else AVX2 with FMA
(most x86 CPUs since 2013). ``MUSICGEN_BRIDGE_KERNELS`` chooses: ``auto`` (default), ``avx512``,
``avx2`` or ``off``. Without a compiler, on other CPUs (ARM) or when off, :func:`load_int8_kernel`
says why and the decoder uses torch's ``_weight_int8pack_mm`` and its Python layers instead (same
weights; measured numbers in the README).

The library is compiled once per source, torch version and compiler into
``$XDG_CACHE_HOME/musicgen-bridge/kernels`` (``~/.cache/...``; ``MUSICGEN_BRIDGE_KERNEL_DIR``
overrides it), written under a temporary name and renamed, so processes starting together never load
a half-written file. Loading registers the ops for the whole process (torch's op registry).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("int8_linear.cpp")
# per instruction set, best first: /proc/cpuinfo's names for what it needs, and the compiler's flags
ISAS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "avx512": (("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "fma"),
               ("-DMGB_ISA_AVX512", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni", "-mfma")),
    "avx2": (("avx2", "fma"), ("-DMGB_ISA_AVX2", "-mavx2", "-mfma")),
}
OFF_VALUES = ("0", "off", "no", "false")
BLOCK_ROWS = 4  # output channels interleaved per block: int8_linear.cpp's kBlockRows
BLOCK_COLS = 64  # input channels per chunk: kBlockCols
MAX_IN_FEATURES = 8192  # kMaxInFeatures
MAX_ROWS = 16


@dataclass(frozen=True)
class KernelStatus:
    """Whether the native int8 kernel can be used in this process, and if not, why."""

    available: bool
    reason: str  # one line for logs and ``info()``: what was loaded, or why not
    library: Path | None = None


def int8_kernel_loaded() -> bool:
    """Whether ``torch.ops.musicgen_bridge.int8_linear`` is registered in this process."""
    return hasattr(torch.ops.musicgen_bridge, "int8_linear")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux names them; empty where that file is missing."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def kernel_dir() -> Path:
    """Where built kernels are kept."""
    override = os.environ.get("MUSICGEN_BRIDGE_KERNEL_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "musicgen-bridge" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX", ""), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def _torch_paths() -> tuple[list[str], str]:
    root = Path(torch.__file__).parent
    return [str(root / "include"), str(root / "include" / "torch" / "csrc" / "api" / "include")], str(root / "lib")


def pick_isa(flags: set[str], wanted: str = "auto") -> str | None:
    """The instruction set to build for: ``wanted`` if the CPU has it, the best it has for ``auto``."""
    names = list(ISAS) if wanted in ("", "auto") else [wanted]
    for name in names:
        if name in ISAS and all(flag in flags for flag in ISAS[name][0]):
            return name
    return None


def compile_command(compiler: str, output: Path, isa: str = "avx512") -> list[str]:
    """The command that builds the kernel library for one instruction set."""
    includes, libdir = _torch_paths()
    abi = int(bool(torch._C._GLIBCXX_USE_CXX11_ABI))
    return [
        compiler, "-O3", "-std=c++20", "-shared", "-fPIC", "-fopenmp", "-w", *ISAS[isa][1],
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *[f"-I{path}" for path in includes],
        str(SOURCE), "-o", str(output),
        f"-L{libdir}", f"-Wl,-rpath,{libdir}", "-lc10", "-ltorch_cpu", "-ltorch",
    ]


def _library_name(compiler: str, isa: str) -> str:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(compile_command(compiler, Path("out.so"), isa)).encode())
    digest.update(torch.__version__.encode())
    digest.update(platform.machine().encode())
    return f"int8_linear-{isa}-{digest.hexdigest()[:16]}.so"


def build_int8_kernel(directory: Path | None = None, isa: str = "avx512") -> Path:
    """Compile the kernel for ``isa`` (if this source, torch and compiler have no library yet); return its path.

    Raises ``RuntimeError`` with the compiler's own message when it cannot be built.
    """
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    directory = directory or kernel_dir()
    library = directory / _library_name(compiler, isa)
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=directory)
    os.close(handle)
    try:
        print(f"musicgen-bridge: compiling the int8 kernel ({isa}) once into {directory} ...", file=sys.stderr,
              flush=True)
        began = time.monotonic()
        result = subprocess.run(compile_command(compiler, Path(partial), isa), capture_output=True, text=True,
                                timeout=600, check=False)
        if result.returncode != 0:
            message = (result.stderr or result.stdout).strip().splitlines()
            raise RuntimeError(f"{compiler} failed: {' / '.join(message[-3:]) or 'no message'}")
        os.replace(partial, library)
        print(f"musicgen-bridge: compiled the int8 kernel in {time.monotonic() - began:.0f} s (once: later runs "
              "load it)", file=sys.stderr, flush=True)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return library


def _loaded_status(library: Path | None = None) -> KernelStatus:
    return KernelStatus(True, f"native int8 kernel ({torch.ops.musicgen_bridge.isa()})", library)


def load_int8_kernel(directory: Path | None = None) -> KernelStatus:
    """Build (once) and load the native int8 kernel where this machine can run it."""
    if int8_kernel_loaded():
        return _loaded_status()
    setting = os.environ.get("MUSICGEN_BRIDGE_KERNELS", "").strip().lower()
    if setting in OFF_VALUES:
        return KernelStatus(False, "native kernels off by MUSICGEN_BRIDGE_KERNELS")
    if setting not in ("", "auto", *ISAS):
        return KernelStatus(False, f"MUSICGEN_BRIDGE_KERNELS={setting!r} is not one of auto, {', '.join(ISAS)}, off")
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return KernelStatus(False, f"no native int8 kernel for {sys.platform}/{platform.machine()}")
    isa = pick_isa(cpu_flags(), setting)
    if isa is None:
        wanted = ", ".join(ISAS) if setting in ("", "auto") else setting
        return KernelStatus(False, f"this CPU has none of the instruction sets the kernel is built for ({wanted})")
    try:
        library = build_int8_kernel(directory, isa)
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
        return KernelStatus(False, f"the native kernel did not build: {exc}")
    if not int8_kernel_loaded():
        return KernelStatus(False, f"{library} loaded but registered no int8_linear")
    return _loaded_status(library)


def fits_int8_kernel(out_features: int, in_features: int) -> bool:
    """Whether a weight of this shape can be packed for the native kernel."""
    return out_features % BLOCK_ROWS == 0 and in_features % BLOCK_COLS == 0 and in_features <= MAX_IN_FEATURES


def pack_int8_weight(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) int8 to the kernel's layout: blocks of 4 output channels x 64 input channels, interleaved."""
    n, k = weight.shape
    blocks = weight.reshape(n // BLOCK_ROWS, BLOCK_ROWS, k // BLOCK_COLS, BLOCK_COLS)
    return blocks.permute(0, 2, 1, 3).contiguous().reshape(n, k)


def unpack_int8_weight(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_int8_weight`."""
    n, k = packed.shape
    blocks = packed.reshape(n // BLOCK_ROWS, k // BLOCK_COLS, BLOCK_ROWS, BLOCK_COLS)
    return blocks.permute(0, 2, 1, 3).contiguous().reshape(n, k)
