"""A job that takes the daemon down is not run forever, and a damaged journal's requesters are told.

Issue 18, findings 2 and 8: real daemons (``serve --model tiny-random``) killed with SIGKILL and
started again on the same journal, real UDP.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import OscClient
from test_crash_safety import _ends, daemons  # noqa: F401  (daemons is a fixture)


def _journal_lines(state: Path) -> list[dict]:
    return [json.loads(line) for line in (state / "journal.jsonl").read_text().splitlines()]


def test_a_job_running_at_two_crashes_is_failed_internal_instead_of_run_a_third_time(daemons, tmp_path):  # noqa: F811
    client = OscClient()
    state = tmp_path / "out.state"
    try:
        first = daemons(0, client.port)  # port 0: it picks a free one, and the restarts listen there again
        port = client.server_port = first.port
        client.send("/musicgen/generate", "poison", "keys", 120.0)
        client.send("/musicgen/generate", "behind", "keys", 1.0)
        client.expect("/musicgen/progress", lambda m: m.args[0] == "poison", timeout=120)
        first.kill()  # as the kernel's OOM killer would
        client.drain(0.2)

        second = daemons(port, client.port)  # runs it again: one crash may be anything
        client.expect("/musicgen/progress", lambda m: m.args[0] == "poison", timeout=120)
        second.kill()
        starts = [r for r in _journal_lines(state) if r.get("type") == "started" and r["id"] == "poison"]
        assert [r["attempt"] for r in starts] == [1, 2]
        client.drain(0.2)

        third = daemons(port, client.port)
        ends = _ends(client, {"poison", "behind"}, timeout=120)
        [poison] = ends["poison"]
        assert poison.address == "/musicgen/fail" and poison.args[2] == "internal"
        assert "running each of the last 2 times the bridge stopped" in poison.args[3]
        assert "not run again" in poison.args[3]
        [behind] = ends["behind"]
        assert behind.address == "/musicgen/done"  # the job queued behind it runs
        client.send("/musicgen/ping")
        client.expect("/musicgen/pong", timeout=10)
        starts = [r for r in _journal_lines(state) if r.get("type") == "started" and r["id"] == "poison"]
        assert len(starts) == 2  # it was not started a third time
        assert "poison" in third.output()  # the restore is logged
    finally:
        client.close()


def _accepted(job_id: str, reply_port: int, **changes) -> dict:
    record = {"type": "accepted", "id": job_id, "kind": "generate",
              "request": {"mode": "text", "prompt": "keys", "seconds": 1.0}, "seed": 3,
              "reply": {"host": "127.0.0.1", "ports": [reply_port], "transport": "udp"}, "submitted": 1.0}
    return record | changes


def _write(path: Path, *records: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_damaged_records_whose_requester_can_be_read_are_told_fail_internal(daemons, tmp_path):  # noqa: F811
    client = OscClient()
    other = OscClient()  # a requester whose port only the journal knows
    header = {"format": "musicgen-bridge-journal", "version": 1, "created": 1.0}
    _write(tmp_path / "out.state" / "journal.jsonl", header,
           _accepted("good", other.port),
           _accepted("damaged", other.port, request="not a request", submitted="noon"),
           _accepted("ended-damaged", other.port, request=[]),
           {"type": "ended", "id": "ended-damaged", "state": "done", "at": 2.0, "paths": [], "seconds": 1.0},
           _accepted("invalid", other.port, request={"mode": "text", "prompt": "keys", "seconds": -4.0}))
    try:
        daemon = daemons(0, client.port)
        client.server_port = other.server_port = daemon.port
        ends = {job_id: [other.expect_end(job_id, timeout=120)] for job_id in ("good", "damaged", "invalid")}
        assert ends["good"][0].address == "/musicgen/done"
        for job_id in ("damaged", "invalid"):
            [end] = ends[job_id]
            assert end.address == "/musicgen/fail" and end.args[2] == "internal", (job_id, end)
            assert "send it again" in end.args[3]
        assert "journal was damaged" in ends["damaged"][0].args[3]
        rest = other.drain(1.0)
        assert not [m for m in rest if "ended-damaged" in m.args]  # it had ended: nobody waits for it
        assert not [m for m in rest if m.address in ("/musicgen/done", "/musicgen/fail")]  # one end each
        assert "1 requester(s) of damaged jobs told so" in daemon.output()
        client.send("/musicgen/ping")
        client.expect("/musicgen/pong", timeout=10)
    finally:
        client.close()
        other.close()


def test_a_journal_moved_aside_still_tells_the_requesters_it_names(daemons, tmp_path):  # noqa: F811
    client = OscClient()
    other = OscClient()
    state = tmp_path / "out.state"
    _write(state / "journal.jsonl", {"format": "musicgen-bridge-journal", "version": 99, "created": 1.0},
           _accepted("from-the-future", other.port), _accepted("finished", other.port),
           {"type": "ended", "id": "finished", "state": "failed", "at": 2.0})
    try:
        client.server_port = other.server_port = daemons(0, client.port).port
        end = other.expect_end("from-the-future", timeout=60)
        assert end.address == "/musicgen/fail" and end.args[2] == "internal"
        assert "journal was damaged" in end.args[3] and "version 99" in end.args[3]
        assert not [m for m in other.drain(1.0) if m.address in ("/musicgen/done", "/musicgen/fail")]  # "finished" ended
        assert list(state.glob("journal.jsonl.bad-*"))
        client.send("/musicgen/ping")
        client.expect("/musicgen/pong", timeout=10)
    finally:
        client.close()
        other.close()
