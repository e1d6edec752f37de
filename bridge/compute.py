"""How the bridge's compute shares the machine with a DAW: how many threads, at what priority, waiting how.

A DAW's audio thread must finish each block (5.33 ms at 256 frames, 48 kHz) before its deadline; the
bridge's token loop streams int8 weights through every core it is given. Measured on a 2-core AMD
EPYC (``bench --beside-daw``, README "Beside a DAW"): at two threads and normal priority a DAW
stand-in missed 13% of its deadlines, and the bridge itself ran slower under that contention than on
one thread. So by default the bridge:

- computes on the physical cores minus one (at least one): a core stays free for the DAW;
- lowers the priority of the thread that computes (:func:`yield_this_thread`): Linux ``SCHED_IDLE``
  for the worker thread, inherited by the OpenMP threads torch starts from it (any other thread that
  wakes takes its CPU at once, even from another session's group, where ``nice`` would not count);
  macOS utility QoS for the worker (threads it creates inherit it); Windows below-normal for the
  worker thread only (torch's OpenMP threads start at normal priority there, so the free core is
  what protects the DAW); the processes the daemon starts keep normal priority (:class:`Launcher`);
- lets idle OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
  ``KMP_BLOCKTIME=0``): this has to be in the environment before torch is imported
  (:func:`prepare_environment`, called first thing by the CLI).

``--threads N`` (or ``threads:`` in the config file) overrides the count; ``--priority nice`` uses
nice 10 on Linux instead, ``--priority normal`` keeps the thread at normal priority.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOWER_NICE = 10  # Linux: the worker's nice value; the DAW (0, or real-time) always runs first
PRIORITIES = ("low", "nice", "normal")
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


@dataclass(frozen=True)
class ComputePlan:
    """The threads and priority the bridge computes with."""

    threads: int
    priority: str = "low"

    def describe(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}, {self.priority} priority"


def physical_cores(sysfs: Path = Path("/sys/devices/system/cpu"), allowed: set[int] | None = None) -> int:
    """Physical cores this process may run on (hyper-threads counted once); the logical count where the
    topology cannot be read (macOS, Windows)."""
    if allowed is None:
        allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    cores: set[tuple[str, str]] = set()
    for cpu in sorted(allowed):
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            package = (topology / "physical_package_id").read_text(encoding="ascii").strip()
            core = (topology / "core_id").read_text(encoding="ascii").strip()
        except OSError:
            return max(1, len(allowed))
        cores.add((package, core))
    if cores:
        return len(cores)
    return max(1, len(allowed) or os.cpu_count() or 1)


def default_threads(cores: int | None = None) -> int:
    """Physical cores minus one, at least one: one core stays free for the DAW."""
    return max(1, (physical_cores() if cores is None else cores) - 1)


def plan_compute(threads: int | None = None, priority: str = "low", cores: int | None = None) -> ComputePlan:
    """The plan from the user's settings (``None``: the default count)."""
    from bridge.errors import BadArgs  # noqa: PLC0415

    if threads is not None and threads < 1:
        raise BadArgs(f"threads must be 1 or more, got {threads}: leave it out for the default (cores minus one)")
    if priority not in PRIORITIES:
        raise BadArgs(f"unknown priority {priority!r}: use low (the default: only CPU time the DAW does not want), "
                      "nice (Linux: nice 10) or normal")
    return ComputePlan(threads=default_threads(cores) if threads is None else threads, priority=priority)


def prepare_environment(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Ask OpenMP for passive waiting unless the user chose otherwise; returns the names it set. Only
    takes effect if torch has not been imported yet."""
    env = os.environ if environ is None else environ
    changed = [name for name in PASSIVE_WAIT if name not in env]
    for name in changed:
        env[name] = PASSIVE_WAIT[name]
    return changed


def apply_threads(plan: ComputePlan) -> None:
    """Set torch's intra-op thread count (inter-op too while torch still allows it)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(plan.threads)
    try:
        torch.set_num_interop_threads(min(plan.threads, torch.get_num_interop_threads()))
    except RuntimeError:
        pass  # already started: it only runs torch's own async work, which the bridge does not use


def yield_this_thread(plan: ComputePlan, platform: str = sys.platform) -> str:
    """Lower the calling thread's priority as the plan says; returns what was done, in words. Idempotent
    and never raises: a system that refuses leaves the thread as it was (and says so)."""
    if plan.priority == "normal":
        return "normal priority (asked for)"
    try:
        if platform.startswith("linux"):
            return _idle_this_thread() if plan.priority == "low" else _nice_this_thread()
        if platform == "darwin":
            return _qos()
        if platform == "win32":
            return _below_normal()
    except (OSError, AttributeError) as exc:
        log.warning("could not lower the compute thread's priority: %s", exc)
        return f"normal priority (lowering it failed: {exc})"
    return f"normal priority (no way to lower it on {platform})"


def _nice_this_thread() -> str:
    tid = threading.get_native_id()
    current = os.getpriority(os.PRIO_PROCESS, tid)
    if current < LOWER_NICE:
        os.setpriority(os.PRIO_PROCESS, tid, LOWER_NICE)
    return f"nice {max(current, LOWER_NICE)} (Linux, this thread and the threads it starts)"


def _idle_this_thread() -> str:
    # SCHED_IDLE: any other thread that wakes takes the CPU at once (across session groups too)
    os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    return "SCHED_IDLE (Linux, this thread and the threads it starts)"


def _qos() -> str:
    import ctypes  # noqa: PLC0415

    # utility, not background: background keeps a thread on the efficiency cores, too slow to wait for
    qos_class_utility = 0x11
    libc: Any = ctypes.CDLL("/usr/lib/libSystem.B.dylib")
    if libc.pthread_set_qos_class_self_np(qos_class_utility, 0) != 0:
        raise OSError("pthread_set_qos_class_self_np refused")
    return "utility QoS (macOS, this thread and the threads it starts)"


def _below_normal() -> str:
    import ctypes  # noqa: PLC0415

    thread_priority_below_normal = -1
    kernel32: Any = ctypes.windll.kernel32  # type: ignore[attr-defined]
    if not kernel32.SetThreadPriority(kernel32.GetCurrentThread(), thread_priority_below_normal):
        raise OSError("SetThreadPriority refused")
    return "below-normal priority (Windows, this thread only)"


class Launcher:
    """Starts child processes from a thread that keeps the priority the daemon started with.

    A thread's priority is inherited by the processes it starts, and a lowered thread cannot raise
    it again; the jam's playback child, started by the (lowered) worker, must keep normal priority:
    it is the bridge's own audio deadline. Make the launcher before the worker lowers itself.
    """

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Sequence[str], dict[str, Any], list[Any], threading.Event]] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="musicgen-launcher", daemon=True)
        self._thread.start()

    def popen(self, command: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen(command, **kwargs)``, run on the launcher's thread."""
        answer: list[Any] = []
        done = threading.Event()
        self._requests.put((command, kwargs, answer, done))
        done.wait()
        if isinstance(answer[0], BaseException):
            raise answer[0]
        return answer[0]  # type: ignore[no-any-return]

    def _serve(self) -> None:
        while True:
            command, kwargs, answer, done = self._requests.get()
            try:
                answer.append(subprocess.Popen(command, **kwargs))
            except (OSError, ValueError) as exc:
                answer.append(exc)
            done.set()


def thread_nice(tid: int) -> int:
    """A thread's nice value (Linux; for tests and the bench)."""
    return os.getpriority(os.PRIO_PROCESS, tid)
