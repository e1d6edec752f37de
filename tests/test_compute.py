"""Beside a DAW: the thread count, the compute thread's priority and passive waiting (bridge/compute.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import stand_in_app

from bridge import compute
from bridge.app.jobs import JobQueue
from bridge.app.results import JobResult
from bridge.config import Config, load_config
from bridge.errors import BadArgs
from bridge.options import Request

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def _sysfs(tmp_path: Path, topology: list[tuple[int, int]]) -> Path:
    """A fake /sys/devices/system/cpu: (package, core) of each logical CPU."""
    for cpu, (package, core) in enumerate(topology):
        folder = tmp_path / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        (folder / "physical_package_id").write_text(f"{package}\n", encoding="ascii")
        (folder / "core_id").write_text(f"{core}\n", encoding="ascii")
    return tmp_path


def test_physical_cores_count_hyperthreads_once(tmp_path):
    sysfs = _sysfs(tmp_path, [(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 0)])
    assert compute.physical_cores(sysfs, allowed={0, 1, 2, 3, 4, 5}) == 3
    assert compute.physical_cores(sysfs, allowed={0, 2}) == 1  # affinity: two siblings of one core


def test_physical_cores_fall_back_to_the_logical_count_without_a_topology(tmp_path):
    assert compute.physical_cores(tmp_path, allowed={0, 1, 2, 3}) == 4


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_the_default_leaves_one_core_for_the_daw(cores, threads):
    assert compute.default_threads(cores) == threads
    assert compute.plan_compute(cores=cores) == compute.ComputePlan(threads=threads, priority="low")


def test_threads_and_priority_override_the_default_and_bad_values_say_what_to_do():
    assert compute.plan_compute(3, "normal", cores=2) == compute.ComputePlan(3, "normal")
    with pytest.raises(BadArgs, match="threads must be 1 or more"):
        compute.plan_compute(0)
    with pytest.raises(BadArgs, match=r"use low .* or normal"):
        compute.plan_compute(None, "realtime")


def test_the_config_file_and_environment_set_threads_and_priority(tmp_path):
    file = tmp_path / "bridge.yaml"
    file.write_text("threads: 3\npriority: normal\n", encoding="utf-8")
    config = load_config(file, environ={})
    assert (config.threads, config.priority) == (3, "normal")
    config = load_config(None, environ={"MUSICGEN_BRIDGE_THREADS": "2"}, overrides={"threads": 1})
    assert config.threads == 1 and config.priority == "low"


def test_passive_waiting_is_asked_for_unless_the_user_chose_a_policy():
    env: dict[str, str] = {"KMP_BLOCKTIME": "200"}
    assert compute.prepare_environment(env) == ["OMP_WAIT_POLICY"]
    assert env == {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "200"}
    assert compute.prepare_environment(env) == []


def test_the_cli_asks_for_passive_waiting_before_torch_is_imported():
    # a fresh interpreter: --help imports the CLI (not torch); the environment it leaves is printed
    code = ("import os, sys\nfrom bridge.frontends.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in compute.PASSIVE_WAIT}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    assert done.stdout.split()[-2:] == ["PASSIVE", "False"]


def test_normal_priority_leaves_the_thread_alone():
    assert compute.yield_this_thread(compute.ComputePlan(1, "normal")) == "normal priority (asked for)"


def test_an_unknown_platform_says_it_cannot_lower_the_priority():
    assert "no way to lower it" in compute.yield_this_thread(compute.ComputePlan(1), platform="plan9")


_OMP_INHERITS = """
import json, os, threading, torch
torch.set_num_threads(2)
from bridge.compute import ComputePlan, yield_this_thread
before = set(os.listdir("/proc/self/task"))
seen = {}
def work():
    seen["said"] = yield_this_thread(ComputePlan(2, PRIORITY))
    seen["worker"] = threading.get_native_id()
    a = torch.randn(384, 384)
    for _ in range(4):
        a = (a @ a).tanh()
    seen["nice"] = {t: os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir("/proc/self/task")}
    seen["policy"] = {t: os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}
worker = threading.Thread(target=work)
worker.start(); worker.join()
seen["main"] = [os.getpriority(os.PRIO_PROCESS, threading.get_native_id()), os.sched_getscheduler(0)]
seen["new"] = sorted(set(seen["nice"]) - before)
print(json.dumps(seen))
"""


@linux_only
@pytest.mark.parametrize("priority", ["low", "nice"])
def test_the_lowered_worker_and_the_openmp_threads_it_starts_are_lowered_and_the_main_thread_is_not(priority):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    code = _OMP_INHERITS.replace("PRIORITY", repr(priority))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                          check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["main"] == [0, os.SCHED_OTHER]
    new = seen["new"]
    assert str(seen["worker"]) in new and len(new) >= 2  # the worker and at least one OpenMP thread of its own
    if priority == "low":
        assert seen["said"].startswith("SCHED_IDLE")
        assert all(seen["policy"][tid] == os.SCHED_IDLE for tid in new)
    else:
        assert seen["said"].startswith("nice 10")
        assert all(seen["nice"][tid] == compute.LOWER_NICE for tid in new)


class _Runner:
    """A stand-in for the Bridge that notes the priority of the thread running it."""

    def __init__(self) -> None:
        self.nice: int | None = None
        self.policy: int | None = None
        self.thread = ""

    def run(self, job_id, request, progress, is_cancelled, on_chunk=None, on_warning=None) -> JobResult:
        self.thread = threading.current_thread().name
        if sys.platform.startswith("linux"):
            self.nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            self.policy = os.sched_getscheduler(threading.get_native_id())
        return JobResult(paths=[], seconds=0.0, sample_rate=32000)


@pytest.mark.parametrize(("priority", "expected"), [("low", (0, "SCHED_IDLE")), ("nice", (compute.LOWER_NICE, "SCHED_OTHER")),
                                                    ("normal", (0, "SCHED_OTHER"))])
def test_the_daemon_runs_its_jobs_on_a_worker_at_the_configured_priority(tmp_path, priority, expected):
    runner = _Runner()
    app = stand_in_app(Config(output_dir=tmp_path, priority=priority), runner)
    try:
        job = app.jobs.submit(Request(mode="text", prompt="x", seconds=1.0))
        assert app.jobs.wait(job, timeout=60)
    finally:
        app.close()
    assert runner.thread == "musicgen-worker"
    if sys.platform.startswith("linux"):
        assert (runner.nice, runner.policy) == (expected[0], getattr(os, expected[1]))
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0  # the test's own thread: untouched


def test_the_worker_start_hook_runs_once_on_the_worker_before_the_first_job():
    order: list[str] = []
    runner = _Runner()

    def hook() -> None:
        order.append(f"hook on {threading.current_thread().name}")

    queue = JobQueue(runner, on_worker_start=hook)
    try:
        for _ in range(2):
            job = queue.submit(Request(mode="text", prompt="x", seconds=1.0))
            assert queue.wait(job, timeout=60)
            order.append(f"job {job.state}")
    finally:
        queue.close()
    assert order == ["hook on musicgen-worker", "job done", "job done"]


class _Libc:
    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int]] = []

    def pthread_set_qos_class_self_np(self, qos: int, relative: int) -> int:
        self.calls.append((qos, relative))
        return self.answer


def test_macos_asks_for_the_utility_qos_class_and_says_so_when_refused(monkeypatch):
    import ctypes

    libc = _Libc(0)
    monkeypatch.setattr(ctypes, "CDLL", lambda path: libc)
    assert compute.yield_this_thread(compute.ComputePlan(1), platform="darwin").startswith("utility QoS (macOS")
    assert libc.calls == [(0x11, 0)]  # QOS_CLASS_UTILITY
    refusing = _Libc(1)
    monkeypatch.setattr(ctypes, "CDLL", lambda path: refusing)
    said = compute.yield_this_thread(compute.ComputePlan(1), platform="darwin")
    assert said.startswith("normal priority (lowering it failed: pthread_set_qos_class_self_np refused")


class _Kernel32:
    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.calls: list[tuple[int, int]] = []

    def GetCurrentThread(self) -> int:
        return -2

    def SetThreadPriority(self, thread: int, priority: int) -> int:
        self.calls.append((thread, priority))
        return self.answer


def test_windows_sets_the_worker_thread_below_normal(monkeypatch):
    import ctypes
    from types import SimpleNamespace

    kernel32 = _Kernel32(1)
    monkeypatch.setattr(ctypes, "windll", SimpleNamespace(kernel32=kernel32), raising=False)
    said = compute.yield_this_thread(compute.ComputePlan(1), platform="win32")
    assert said == "below-normal priority (Windows, this thread only)"
    assert kernel32.calls == [(-2, -1)]  # THREAD_PRIORITY_BELOW_NORMAL


@linux_only
def test_low_priority_puts_the_worker_in_sched_idle_and_leaves_the_test_thread_alone():
    seen: dict[str, object] = {}

    def worker() -> None:
        seen["said"] = compute.yield_this_thread(compute.ComputePlan(1, "low"))
        seen["policy"] = os.sched_getscheduler(threading.get_native_id())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"said": "SCHED_IDLE (Linux, this thread and the threads it starts)", "policy": os.SCHED_IDLE}
    assert os.sched_getscheduler(threading.get_native_id()) == os.SCHED_OTHER


_PRINT_PRIORITY = "import os; print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))"


@linux_only
def test_a_child_started_through_the_launcher_keeps_normal_priority_when_the_worker_is_lowered():
    launcher = compute.Launcher()  # made first, on a thread at normal priority, as App.build does
    seen: dict[str, str] = {}

    def worker() -> None:
        compute.yield_this_thread(compute.ComputePlan(1))
        for name, popen in (("launcher", launcher.popen), ("direct", subprocess.Popen)):
            child = popen([sys.executable, "-c", _PRINT_PRIORITY], stdout=subprocess.PIPE, text=True)
            seen[name] = child.communicate(timeout=60)[0].strip()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"launcher": f"0 {os.SCHED_OTHER}", "direct": f"0 {os.SCHED_IDLE}"}


def test_the_launcher_hands_back_the_error_of_a_child_that_cannot_start(tmp_path):
    with pytest.raises(OSError):
        compute.Launcher().popen([str(tmp_path / "no-such-program")])
