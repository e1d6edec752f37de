"""The job journal (issue 12): records on disk before accept returns, torn and foreign files, compaction, threads."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from bridge.app import journal as journal_module
from bridge.app.journal import FORMAT, VERSION, Journal, request_from_record, request_to_record
from bridge.errors import BadArgs, StorageError
from bridge.options import Request

REPLY = {"host": "127.0.0.1", "port": 9001, "transport": "udp"}
ROOT = Path(__file__).resolve().parent.parent


def lines(path: Path) -> list[dict]:
    return [json.loads(raw) for raw in path.read_bytes().splitlines()]


def request(prompt: str = "dusty keys", **options) -> Request:
    return Request(mode="text", prompt=prompt, seconds=4.0).with_options(options).validate()


def opened(folder: Path, **kwargs) -> tuple[Journal, journal_module.Recovery]:
    journal = Journal(folder, **kwargs)
    return journal, journal.open()


def run_child(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], check=False, env=env,
                          capture_output=True, text=True, timeout=60)


def journal_of_two(folder: Path) -> Path:
    """A closed journal in ``folder`` holding queued jobs a and b; its path."""
    journal, _ = opened(folder)
    journal.accept("a", request(), "/musicgen/generate", REPLY)
    journal.accept("b", request(), "/musicgen/generate", REPLY)
    journal.close()
    return journal.path


def test_round_trip_keeps_order_seed_reply_and_how_jobs_ended(tmp_path):
    journal, recovery = opened(tmp_path / "state")
    assert recovery.unfinished == [] and recovery.ended == []
    a = journal.accept("a", request("one", bpm=92.0, bars=4), "/musicgen/generate", REPLY, submitted=100.0)
    journal.accept("b", request("two", seed=7), "/musicgen/preset", None, submitted=101.0)
    journal.accept("c", request("three"), "/musicgen/generate", REPLY, submitted=102.0)
    journal.accept("d", Request(mode="continue", clip="/clips/x.wav", seconds=2.0), "/musicgen/continue", REPLY)
    journal.start("a")
    journal.end("a", "done", paths=["/out/a.wav"], seconds=8.0)
    journal.start("b")
    journal.end("c", "cancelled", code="cancelled", message="job c was cancelled by a client")
    journal.start("d")
    journal.close()

    again, recovery = opened(tmp_path / "state")
    assert [e.id for e in recovery.unfinished] == ["b", "d"]  # submit order
    b, d = recovery.unfinished
    assert b.state == "running" and d.state == "running"
    assert b.request == request("two", seed=7) and b.kind == "/musicgen/preset" and b.reply is None
    assert d.request is not None and d.request.clip == "/clips/x.wav" and d.resumable
    assert [(e.id, e.state) for e in recovery.ended] == [("a", "done"), ("c", "cancelled")]
    done = recovery.ended[0]
    assert done.paths == ("/out/a.wav",) and done.seconds == 8.0 and done.reply == REPLY
    assert done.request == a.request and done.submitted == 100.0
    assert recovery.ended[1].code == "cancelled" and "by a client" in (recovery.ended[1].message or "")
    found = again.find("a")  # /musicgen/job across a restart
    assert found is not None and found.state == "done" and found.paths == ("/out/a.wav",)
    assert again.find("nope") is None
    again.close()


def test_the_seed_is_picked_at_accept_and_the_rerun_uses_it(tmp_path):
    journal, _ = opened(tmp_path)
    entry = journal.accept("j", request(), "/musicgen/generate", REPLY)
    assert entry.request is not None and entry.request.seed is not None and entry.seed == entry.request.seed
    journal.close()
    record = lines(tmp_path / "journal.jsonl")[1]
    assert record["seed"] == entry.seed and record["request"]["seed"] == entry.seed
    _, recovery = opened(tmp_path)
    assert recovery.unfinished[0].request == entry.request


def test_request_records_are_revalidated():
    original = request("x", bpm=120.0, bars=2, variations=2, format="flac")
    assert request_from_record(json.loads(json.dumps(request_to_record(original)))) == original
    broken = request_to_record(original) | {"temperature": -1}
    with pytest.raises(BadArgs, match="temperature"):
        request_from_record(broken)
    with pytest.raises(BadArgs, match="colour"):
        request_from_record(request_to_record(original) | {"colour": "red"})


def test_a_record_that_no_longer_validates_comes_back_with_its_reason(tmp_path):
    journal, _ = opened(tmp_path)
    journal.accept("j", request(), "/musicgen/generate", REPLY)
    journal.close()
    path = tmp_path / "journal.jsonl"
    records = lines(path)
    records[1]["request"]["top_k"] = -5
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    _, recovery = opened(tmp_path)
    entry = recovery.unfinished[0]
    assert entry.request is None and not entry.resumable and "top_k" in (entry.error or "")
    assert entry.reply == REPLY  # so its requester can still be told


def test_accept_writes_and_fsyncs_the_record_before_it_returns(tmp_path, monkeypatch):
    path = tmp_path / "journal.jsonl"
    events: list[tuple[str, list]] = []
    real_fsync = journal_module._fsync

    def spying_fsync(fd: int) -> None:
        real_fsync(fd)
        ids = [r.get("id") for r in lines(path)[1:]] if path.exists() else []
        events.append(("fsync", ids))

    monkeypatch.setattr(journal_module, "_fsync", spying_fsync)
    journal, _ = opened(tmp_path)
    events.clear()
    journal.accept("j1", request(), "/musicgen/generate", REPLY)
    assert events and events[-1] == ("fsync", ["j1"])  # the last thing accept did: fsync with j1 in the file
    journal.close()


def test_an_accepted_job_survives_the_process_being_killed_right_after_accept(tmp_path):
    child = run_child("""
        import os, signal, sys
        from bridge.app.journal import Journal
        from bridge.options import Request
        journal = Journal(sys.argv[1])
        journal.open()
        journal.accept("killed", Request(prompt="keys", seconds=2.0), "/musicgen/generate",
                       {"host": "127.0.0.1", "port": 9001, "transport": "udp"})
        os.kill(os.getpid(), signal.SIGKILL)
    """, str(tmp_path))
    assert child.returncode == -9, child.stderr
    _, recovery = opened(tmp_path)
    assert [e.id for e in recovery.unfinished] == ["killed"]
    assert recovery.unfinished[0].request == Request(prompt="keys", seconds=2.0, seed=recovery.unfinished[0].seed)


def test_a_torn_last_line_is_dropped_and_the_file_cut_back(tmp_path, caplog):
    path = journal_of_two(tmp_path)
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"type":"accepted","id":"c","kind":"/musicgen/gen')
    with caplog.at_level(logging.WARNING, logger="bridge.app.journal"):
        journal, recovery = opened(tmp_path)
    assert [e.id for e in recovery.unfinished] == ["a", "b"] and recovery.torn_bytes > 0
    assert path.read_bytes() == whole
    assert sum("torn" in r.getMessage() for r in caplog.records) == 1
    journal.accept("c", request(), "/musicgen/generate", REPLY)  # appends after the whole lines
    journal.close()
    assert [r.get("id") for r in lines(path)[1:]] == ["a", "b", "c"]


def test_a_torn_header_starts_a_fresh_journal(tmp_path):
    (tmp_path / "journal.jsonl").write_bytes(b'{"format":"musicgen-bri')
    journal, recovery = opened(tmp_path)
    assert recovery.unfinished == [] and recovery.moved_aside is None
    assert lines(tmp_path / "journal.jsonl") == [{"format": FORMAT, "version": VERSION,
                                                  "created": lines(tmp_path / "journal.jsonl")[0]["created"]}]
    journal.close()


@pytest.mark.parametrize("content", [
    b'{"format": "musicgen-bridge-journal", "version": 0, "created": 1.0}\n{"type": "accepted", "id": "x"}\n',
    b"\x89PNG\r\n\x1a\n\x00\x00garbage",
    b"no newline and not ours at all",
    b'{"some": "other json"}\n',
], ids=["older-version", "binary", "no-newline", "other-json"])
def test_a_foreign_journal_is_refused_in_one_line_moved_aside_and_a_fresh_one_started(tmp_path, caplog, content):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="bridge.app.journal"):
        journal, recovery = opened(tmp_path)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "moved it to" in warnings[0], warnings
    assert recovery.moved_aside is not None and recovery.moved_aside.read_bytes() == content
    assert recovery.moved_aside.name.startswith("journal.jsonl.bad-")
    assert recovery.unfinished == [] and lines(path)[0]["format"] == FORMAT
    journal.accept("new", request(), "/musicgen/generate", REPLY)
    journal.close()
    _, again = opened(tmp_path)
    assert [e.id for e in again.unfinished] == ["new"] and again.moved_aside is None


def test_lines_in_the_middle_that_are_not_records_are_skipped_and_counted_in_one_line(tmp_path, caplog):
    path = journal_of_two(tmp_path)
    header, a, b = path.read_bytes().splitlines(keepends=True)
    bad = [b"not json\n", b'{"type":"accepted","id":"c","kind":"/x","request":{},"submitted":"noon"}\n',
           b'{"type":"ended","id":"a","state":"exploded","at":1.0}\n', b'{"type":"started","id":"zz","at":1}\n',
           b'[1, 2]\n']
    path.write_bytes(header + a + b"".join(bad) + b)
    with caplog.at_level(logging.WARNING, logger="bridge.app.journal"):
        _, recovery = opened(tmp_path)
    assert [e.id for e in recovery.unfinished] == ["a", "b"] and recovery.skipped_lines == len(bad)
    assert [r.getMessage() for r in caplog.records if "not records" in r.getMessage()] == [
        f"the job journal {path} had {len(bad)} lines that are not records: skipped them"]


def test_compaction_keeps_the_unfinished_and_the_last_n_ended(tmp_path):
    journal, _ = opened(tmp_path, keep_ended=3, max_bytes=4000)
    journal.accept("keep-1", request("first"), "/musicgen/generate", REPLY)
    journal.start("keep-1")
    for i in range(40):
        journal.accept(f"e{i}", request(f"piece {i}"), "/musicgen/generate", REPLY)
        journal.end(f"e{i}", "done", paths=[f"/out/{i}.wav"], seconds=1.0)
    journal.accept("keep-2", request("last"), "/musicgen/generate", REPLY)
    path = tmp_path / "journal.jsonl"
    assert path.stat().st_size <= 2 * 4000 + 2000  # it was compacted on the way, more than once
    journal.compact()
    ids = [r.get("id") for r in lines(path)[1:]]
    assert ids == ["e37", "e37", "e38", "e38", "e39", "e39", "keep-1", "keep-1", "keep-2"]
    journal.close()
    _, recovery = opened(tmp_path, keep_ended=3)
    assert [(e.id, e.state) for e in recovery.unfinished] == [("keep-1", "running"), ("keep-2", "queued")]
    assert [e.id for e in recovery.ended] == ["e37", "e38", "e39"]
    assert recovery.ended[-1].paths == ("/out/39.wav",)
    assert not list(tmp_path.glob(".journal.jsonl.compact-*"))


def test_a_crash_mid_compaction_leaves_the_journal_whole_and_its_temporary_is_ignored(tmp_path):
    child = run_child("""
        import os, signal, sys
        from bridge.app import journal as jm
        from bridge.options import Request
        journal = jm.Journal(sys.argv[1], keep_ended=1)
        journal.open()
        for i in range(5):
            journal.accept(f"e{i}", Request(prompt="x", seconds=1.0), "/musicgen/generate", None)
            journal.end(f"e{i}", "failed", code="model_error", message="boom")
        journal.accept("waiting", Request(prompt="y", seconds=1.0), "/musicgen/generate", None)
        def die(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)  # the temporary is written and fsynced, not renamed
        jm._replace = die
        journal.compact()
    """, str(tmp_path))
    assert child.returncode == -9, child.stderr
    leftovers = list(tmp_path.glob(".journal.jsonl.compact-*"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0
    before = (tmp_path / "journal.jsonl").read_bytes()
    journal, recovery = opened(tmp_path, keep_ended=10)
    assert [e.id for e in recovery.unfinished] == ["waiting"]
    assert [e.id for e in recovery.ended] == [f"e{i}" for i in range(5)]  # the old, whole journal was read
    assert (tmp_path / "journal.jsonl").read_bytes() == before
    assert not list(tmp_path.glob(".journal.jsonl.compact-*"))
    journal.close()


def test_a_failed_compaction_keeps_appending_to_the_old_journal(tmp_path, monkeypatch):
    journal, _ = opened(tmp_path, keep_ended=1)
    for i in range(3):
        journal.accept(f"e{i}", request(), "/musicgen/generate", REPLY)
        journal.end(f"e{i}", "done", paths=[], seconds=1.0)

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "_replace", refuse)
    with pytest.raises(StorageError, match="disk is full"):
        journal.compact()
    monkeypatch.undo()
    journal.accept("after", request(), "/musicgen/generate", REPLY)
    journal.close()
    assert not list(tmp_path.glob(".journal.jsonl.compact-*"))
    _, recovery = opened(tmp_path, keep_ended=5)
    assert [e.id for e in recovery.unfinished] == ["after"] and len(recovery.ended) == 3


def test_a_write_that_fails_halfway_leaves_no_partial_line(tmp_path, monkeypatch):
    journal, _ = opened(tmp_path)
    journal.accept("a", request(), "/musicgen/generate", REPLY)
    real_write = journal_module._write_all

    def half_then_full(fd: int, data: bytes) -> None:
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "_write_all", half_then_full)
    with pytest.raises(StorageError, match="disk is full") as caught:
        journal.accept("b", request(), "/musicgen/generate", REPLY)
    assert caught.value.code == "storage" and "--state-dir" in caught.value.message
    monkeypatch.undo()
    assert journal.find("b") is None
    journal.accept("c", request(), "/musicgen/generate", REPLY)
    journal.close()
    assert [r.get("id") for r in lines(tmp_path / "journal.jsonl")[1:]] == ["a", "c"]


def test_ids_are_unique_among_unfinished_jobs_and_reusable_after_they_end(tmp_path):
    journal, _ = opened(tmp_path)
    journal.accept("j", request(), "/musicgen/generate", REPLY)
    with pytest.raises(BadArgs, match="already queued or running"):
        journal.accept("j", request(), "/musicgen/generate", REPLY)
    journal.end("j", "failed", code="model_error", message="boom")
    journal.accept("j", request("again"), "/musicgen/generate", REPLY)
    assert journal.end("unknown", "done") is False and journal.start("unknown") is False
    journal.close()
    _, recovery = opened(tmp_path)
    assert [(e.id, e.request.prompt) for e in recovery.unfinished if e.request] == [("j", "again")]
    assert [(e.id, e.code) for e in recovery.ended] == [("j", "model_error")]


def test_a_second_journal_on_the_same_folder_is_refused(tmp_path):
    journal, _ = opened(tmp_path)
    with pytest.raises(BadArgs, match="another musicgen-bridge uses the job journal"):
        Journal(tmp_path).open()
    journal.close()
    Journal(tmp_path).open()


def test_a_state_folder_that_cannot_be_made_is_a_storage_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(StorageError, match="--state-dir") as caught:
        Journal(tmp_path / "file" / "state").open()
    assert caught.value.code == "storage"


def test_threads_appending_at_once_lose_nothing_and_the_file_stays_whole(tmp_path):
    journal, _ = opened(tmp_path, keep_ended=500, max_bytes=20_000)  # compacts many times meanwhile
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(40):
                journal.accept(f"t{t}-{i}", request(f"thread {t}"), "/musicgen/generate", REPLY)
                journal.accept(f"t{t}-{i}-open", request(f"thread {t}"), "/musicgen/generate", REPLY)
                journal.start(f"t{t}-{i}")
                journal.end(f"t{t}-{i}", "done", paths=[f"/out/{t}-{i}.wav"], seconds=1.0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    journal.close()
    assert all(isinstance(r, dict) for r in lines(tmp_path / "journal.jsonl"))
    _, recovery = opened(tmp_path, keep_ended=500)
    assert sorted(e.id for e in recovery.unfinished) == sorted(f"t{t}-{i}-open" for t in range(6) for i in range(40))
    assert len(recovery.ended) == 240 and recovery.skipped_lines == 0
    for t in range(6):  # each thread's jobs stay in its submit order
        mine = [e.id for e in recovery.unfinished if e.id.startswith(f"t{t}-")]
        assert mine == [f"t{t}-{i}-open" for i in range(40)]
