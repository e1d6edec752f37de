"""The job queue: one worker, bounded queue, cancel, exactly one done or fail per job."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import soundfile as sf

from bridge.app.jobs import JobEvents, JobQueue
from bridge.errors import BadArgs, Busy, NotFound
from bridge.options import Request


class Recorder:
    """A JobListener that keeps every event, in order, and can wait for a job's end."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self._cv = threading.Condition()

    def _add(self, *event) -> None:
        with self._cv:
            self.events.append(event)
            self._cv.notify_all()

    def queued(self, job, position):
        self._add("queued", job.id, position)

    def progress(self, job, fraction):
        self._add("progress", job.id, fraction, time.monotonic())

    def chunk(self, job, chunk):
        self._add("chunk", job.id, chunk.index)

    def warning(self, job, message):
        self._add("warning", job.id, message)

    def done(self, job, result):
        self._add("done", job.id, result)

    def fail(self, job, error):
        self._add("fail", job.id, error)

    def ends(self, job_id):
        return [e for e in self.events if e[0] in ("done", "fail") and e[1] == job_id]

    def wait_end(self, job_id, timeout=30.0):
        with self._cv:
            if not self._cv.wait_for(lambda: self.ends(job_id), timeout):
                raise AssertionError(f"job {job_id} did not end; events: {self.events}")
            return self.ends(job_id)[0]


def text(seconds=0.5, **options) -> Request:
    return Request(mode="text", prompt="lofi keys", seconds=seconds).with_options(options).validate()


@pytest.fixture
def recorder():
    return Recorder()


@pytest.fixture
def make_queue(fake_bridge, recorder):
    queues = []

    def make(maxsize=16, bridge=None, listener=None, **kwargs):
        events = JobEvents()
        events.subscribe("test", listener or recorder, unclaimed=True)  # these jobs name no front end
        q = JobQueue(bridge or fake_bridge, maxsize, events, **kwargs)
        queues.append(q)
        return q

    yield make
    fake_bridge.gate.set()
    for q in queues:
        q.close(timeout=5)


def test_a_job_is_queued_runs_and_is_done_once_with_a_real_file(make_queue, recorder):
    q = make_queue()
    job = q.submit(text(0.5), "j1")
    end = recorder.wait_end("j1")
    assert recorder.events[0] == ("queued", "j1", 0)
    assert end[0] == "done"
    path = end[2].paths[0]
    assert sf.info(str(path)).frames == 4000  # 0.5 s at the fake's 8 kHz
    assert job.state == "done" and q.find("j1") is job
    q.wait_idle(30)
    assert len(recorder.ends("j1")) == 1


def test_empty_id_gets_a_unique_one(make_queue, recorder):
    q = make_queue()
    a = q.submit(text(), "")
    b = q.submit(text(), "")
    assert a.id != b.id and a.id.startswith("job-") and b.id.startswith("job-")
    assert recorder.wait_end(a.id)[0] == "done" and recorder.wait_end(b.id)[0] == "done"


def test_progress_is_throttled_to_about_ten_a_second(fake_bridge, make_queue, recorder):
    fake_bridge.steps, fake_bridge.step_seconds = 100, 0.005  # 200 progress calls a second for 0.5 s
    q = make_queue()
    q.submit(text(), "slow")
    recorder.wait_end("slow")
    stamps = [e[3] for e in recorder.events if e[0] == "progress"]
    # throttled: the gap between two reports is never under the interval (a slow machine only widens it),
    # and 100 calls become a handful (at least 0.5 s of steps, so 3 or more)
    assert 3 <= len(stamps) < fake_bridge.steps // 4
    assert all(b - a >= 0.099 for a, b in itertools.pairwise(stamps))


def test_positions_count_the_jobs_ahead(fake_bridge, make_queue, recorder):
    fake_bridge.gate.clear()
    q = make_queue()
    q.submit(text(), "a")
    assert fake_bridge.started.get(timeout=30) == "a"
    q.submit(text(), "b")
    q.submit(text(), "c")
    assert [e for e in recorder.events if e[0] == "queued"] == [("queued", "a", 0), ("queued", "b", 1),
                                                                ("queued", "c", 2)]
    fake_bridge.gate.set()
    for job_id in "abc":
        assert recorder.wait_end(job_id)[0] == "done"


def test_queue_full_is_busy_at_submit(fake_bridge, make_queue, recorder):
    fake_bridge.gate.clear()
    q = make_queue(maxsize=2)
    q.submit(text(), "running")
    fake_bridge.started.get(timeout=30)
    q.submit(text(), "w1")
    q.submit(text(), "w2")
    with pytest.raises(Busy, match="queue is full"):
        q.submit(text(), "w3")
    assert q.snapshot()[0] == 2 and q.snapshot()[1].id == "running"
    assert not recorder.ends("w3")


def test_an_id_still_active_is_refused(fake_bridge, make_queue):
    fake_bridge.gate.clear()
    q = make_queue()
    q.submit(text(), "same")
    with pytest.raises(BadArgs, match="already queued or running"):
        q.submit(text(), "same")
    with pytest.raises(BadArgs, match="every job"):
        q.submit(text(), "*")


def test_cancel_a_queued_job_takes_it_out_without_running_it(fake_bridge, make_queue, recorder):
    fake_bridge.gate.clear()
    q = make_queue()
    q.submit(text(), "first")
    fake_bridge.started.get(timeout=30)
    q.submit(text(), "second")
    assert [j.id for j in q.cancel("second")] == ["second"]
    end = recorder.wait_end("second", timeout=30)
    assert not recorder.ends("first")  # at once, not after the running job (held at its gate until now)
    assert end[0] == "fail" and end[2].code == "cancelled" and "before it started" in end[2].message
    fake_bridge.gate.set()
    assert recorder.wait_end("first")[0] == "done"
    q.wait_idle(30)
    assert "second" not in fake_bridge.finished_steps
    assert q.find("second").state == "cancelled"


def test_cancel_a_running_job_stops_it_at_the_next_step(fake_bridge, make_queue, recorder):
    fake_bridge.steps = 1000  # seconds of steps if nobody stops it

    class CancelAtStepFive(Recorder):
        def progress(self, job, fraction):
            super().progress(job, fraction)
            if round(fraction * fake_bridge.steps) == 5:
                q.cancel("long")  # from the worker's own progress call, so the step it comes after is known

    recorder = CancelAtStepFive()
    q = make_queue(listener=recorder, progress_interval=0.0)
    q.submit(text(), "long")
    end = recorder.wait_end("long", timeout=30)
    assert end[0] == "fail" and end[2].code == "cancelled" and "by a client" in end[2].message
    assert fake_bridge.finished_steps["long"] == 5  # not one step more
    assert len(recorder.ends("long")) == 1


def test_cancel_all_reports_every_job_once(fake_bridge, make_queue, recorder):
    fake_bridge.gate.clear()
    q = make_queue()
    for job_id in ("r", "q1", "q2"):
        q.submit(text(), job_id)
    fake_bridge.started.get(timeout=30)
    assert sorted(j.id for j in q.cancel("*")) == ["q1", "q2", "r"]
    for job_id in ("r", "q1", "q2"):
        assert recorder.wait_end(job_id)[2].code == "cancelled"
    assert q.wait_idle(30)
    assert q.cancel("*") == []  # nothing left: not an error


def test_cancel_an_unknown_id_is_not_found(make_queue):
    q = make_queue()
    with pytest.raises(NotFound, match="nope"):
        q.cancel("nope")


@pytest.mark.parametrize(("prompt", "code"), [("raise model_error", "model_error"), ("raise bug", "internal")])
def test_errors_in_run_end_the_job_with_their_code_and_the_worker_goes_on(make_queue, recorder, prompt, code):
    q = make_queue()
    q.submit(Request(prompt=prompt, seconds=1.0), "bad")
    end = recorder.wait_end("bad")
    assert end[0] == "fail" and end[2].code == code
    q.submit(text(), "next")
    assert recorder.wait_end("next")[0] == "done"


def test_a_broken_listener_does_not_stop_the_worker(fake_bridge, make_queue, recorder):
    class Broken(Recorder):
        def progress(self, job, fraction):
            raise OSError("socket gone")

    broken = Broken()
    q = make_queue(listener=broken)
    q.submit(text(), "a")
    q.submit(text(), "b")
    assert broken.wait_end("a")[0] == "done" and broken.wait_end("b")[0] == "done"


def test_close_cancels_running_and_queued_reports_each_and_joins(fake_bridge, make_queue, recorder):
    fake_bridge.gate.clear()
    q = make_queue()
    for job_id in ("r", "w"):
        q.submit(text(), job_id)
    fake_bridge.started.get(timeout=30)
    q.close(timeout=5)
    assert recorder.ends("r")[0][2].code == "cancelled" and "shutting down" in recorder.ends("r")[0][2].message
    assert recorder.ends("w")[0][2].code == "cancelled"
    assert q._thread is not None and not q._thread.is_alive()
    with pytest.raises(Busy, match="shutting down"):
        q.submit(text(), "late")


def test_stream_chunks_reach_the_listener(make_queue, recorder):
    q = make_queue()
    q.submit(text(stream=True), "s")
    recorder.wait_end("s")
    kinds = [e[0] for e in recorder.events if e[1] == "s"]
    assert kinds.index("chunk") < kinds.index("done")


def test_the_journal_remembers_recent_jobs(make_queue, recorder):
    q = make_queue(journal_size=2)
    for job_id in ("a", "b", "c"):
        q.submit(text(), job_id)
        recorder.wait_end(job_id)
    assert [j.id for j in q.recent()] == ["b", "c"]
    assert q.find("a") is None and q.find("c").state == "done"
