"""Job events per front end (issue 20): a second front end beside the OSC server hears only its jobs.

The tiny front end (``tests/tiny_frontend.py``) is one module; wiring it is ``TinyFrontEnd(app)``
beside ``OscServer(app, config)`` on the same app, with the OSC server on a real UDP socket. Each
hears its own jobs' events, the OSC server also those no front end claims (MIDI's), and after a
restart the journal gives each restored job back to the front end that submitted it, records
written before front ends had names included (they are the OSC server's).
"""

from __future__ import annotations

import json

import pytest
from conftest import OscClient, stand_in_app
from tiny_frontend import NAME, TinyFrontEnd

from bridge.app.job_events import OSC, JobEvents
from bridge.app.jobs import Job, JobKind, NullListener
from bridge.app.journal import Journal
from bridge.config import Config
from bridge.errors import Internal
from bridge.frontends.midi import MIDI
from bridge.frontends.osc.server import OscServer
from bridge.options import Request


def request(prompt: str = "lofi keys", **options) -> Request:
    return Request(mode="text", prompt=prompt, seconds=0.5).with_options(options).validate()


@pytest.fixture
def both(fake_bridge, tmp_path):
    """``both(journal=None) -> (app, server, client, tiny)``: an OSC server and the tiny front end on one app."""
    made, journals = [], []

    def make(journal=None, recovery=None):
        client = OscClient()
        config = Config(model="fake-model", port=0, reply_port=client.port, output_dir=tmp_path / "out")
        app = stand_in_app(config, fake_bridge, journal=journal)
        app.recovery = recovery
        server = OscServer(app, config)
        tiny = TinyFrontEnd(app)  # the whole wiring of a new front end
        made.append((server, client))
        journals.extend([journal] if journal is not None else [])
        server.bind()
        client.server_port = server.port
        app.restore()  # once every front end has subscribed
        server.start()
        return app, server, client, tiny

    yield make
    fake_bridge.gate.set()
    for server, client in made:
        server.stop(timeout=5)
        client.close()
    for journal in journals:
        journal.close()


def mentions(messages, job_id: str) -> list:
    return [m for m in messages if job_id in [str(a) for a in m.args]]


def test_each_front_end_hears_its_own_jobs_and_only_those(both):
    app, _server, client, tiny = both()
    tiny.submit("alice", request(stream=True), "tiny-1")
    assert tiny.wait_end("tiny-1")[0] == "done"
    events = tiny.events_of("tiny-1")
    assert events[0] == "queued" and "progress" in events and events.index("chunk") < events.index("done")
    assert events[-1] == "done" and events.count("done") == 1
    assert {origin for _e, job_id, origin, _d in tiny.heard if job_id == "tiny-1"} == {"alice"}
    tiny.submit("bob", request("raise model_error"), "tiny-2")
    event, _job_id, _origin, code = tiny.wait_end("tiny-2")
    assert (event, code) == ("fail", "model_error")

    client.send("/musicgen/generate", "osc-1", "keys", 0.5)  # the worker runs it after both tiny jobs ended
    assert client.expect_end("osc-1", timeout=30).address == "/musicgen/done"
    heard = client.drain(0.0)
    assert mentions(heard, "osc-1") and mentions(heard, "osc-1")[0].address == "/musicgen/queued"
    assert not mentions(heard, "tiny-1") and not mentions(heard, "tiny-2")  # none at the OSC reply port

    tiny.submit("alice", request(), "tiny-3")  # run after osc-1's events were all published
    tiny.wait_end("tiny-3")
    assert tiny.job_ids() == {"tiny-1", "tiny-2", "tiny-3"}  # nothing of osc-1
    assert app.jobs.find("osc-1").frontend == OSC and app.jobs.find("tiny-3").frontend == NAME


def test_jobs_no_front_end_claims_go_to_the_osc_peers_not_to_the_tiny_front_end(both):
    app, _server, client, tiny = both()
    app.jobs.submit(request(), "midi-1", JobKind.PRESET, frontend=MIDI)  # MIDI subscribes to nothing
    queued = client.expect("/musicgen/queued", lambda m: m.args[0] == "midi-1")
    assert list(queued.args) == ["midi-1", 0]
    assert client.expect_end("midi-1", timeout=30).address == "/musicgen/done"
    tiny.submit("alice", request(), "tiny-after")
    tiny.wait_end("tiny-after")
    assert tiny.job_ids() == {"tiny-after"}


def test_a_closed_subscription_hears_nothing_more(both):
    app, _server, _client, tiny = both()
    tiny.close()
    job = tiny.submit("alice", request(), "unheard")
    assert app.jobs.wait(job, timeout=30) and job.state == "done"
    assert tiny.heard == []


def test_the_journal_keeps_each_front_ends_origin_as_its_own_data(both, tmp_path):
    journal = Journal(tmp_path / "state")
    journal.open()
    _app, _server, client, tiny = both(journal)
    tiny.submit("alice", request(), "tiny-j")
    tiny.wait_end("tiny-j")
    client.send("/musicgen/generate", "osc-j", "keys", 0.5)
    client.expect_end("osc-j", timeout=30)
    tiny_entry, osc_entry = journal.find("tiny-j"), journal.find("osc-j")
    assert tiny_entry is not None and osc_entry is not None
    assert tiny_entry.reply == {"frontend": NAME, "data": {"client": "alice"}}
    assert osc_entry.reply == {"frontend": OSC, "data": {"host": "127.0.0.1", "ports": [client.port],
                                                         "transport": "udp"}}


def test_restored_jobs_go_back_to_the_front_end_that_submitted_them_old_records_to_osc(both, fake_bridge, tmp_path):
    other = OscClient()  # a port only the journal names: neither registered nor the reply port
    old_reply = {"host": "127.0.0.1", "ports": [other.port], "transport": "udp"}  # written before front-end names
    journal = Journal(tmp_path / "state")
    journal.open()
    journal.accept("tiny-r", request(), "generate", reply={"frontend": NAME, "data": {"client": "carol"}})
    journal.accept("osc-new", request(), "generate", reply={"frontend": OSC, "data": old_reply})
    journal.accept("osc-old", request(), "generate", reply=old_reply)
    journal.accept("midi-r", request(), "preset", reply={"frontend": MIDI, "data": None})
    journal.close()  # a crash: none of them ended

    again = Journal(tmp_path / "state")
    recovery = again.open()
    assert [e.id for e in recovery.unfinished] == ["tiny-r", "osc-new", "osc-old", "midi-r"]
    try:
        app, _server, client, tiny = both(again, recovery)  # closes the journal after the server
        assert tiny.wait_end("tiny-r")[0] == "done"
        assert {origin for _e, job_id, origin, _d in tiny.heard if job_id == "tiny-r"} == {"carol"}
        for job_id in ("osc-new", "osc-old"):  # OSC's origin lookup found the stored port
            assert other.expect_end(job_id, timeout=30).address == "/musicgen/done"
        assert client.expect_end("midi-r", timeout=30).address == "/musicgen/done"  # unclaimed: every OSC peer
        assert tiny.job_ids() == {"tiny-r"}
        assert [(app.jobs.find(j).frontend, app.jobs.find(j).origin is None)
                for j in ("tiny-r", "osc-old", "midi-r")] == [(NAME, False), (OSC, False), (MIDI, True)]
    finally:
        other.close()


def test_a_damaged_record_still_tells_its_own_front_end_that_it_will_not_run(both, tmp_path):
    other = OscClient()
    journal = Journal(tmp_path / "state")
    journal.open()
    journal.accept("tiny-d", request(), "generate", reply={"frontend": NAME, "data": {"client": "dan"}})
    journal.accept("osc-d", request(), "generate", reply={"frontend": OSC, "data": {
        "host": "127.0.0.1", "ports": [other.port], "transport": "udp"}})
    journal.close()
    records = [json.loads(raw) for raw in journal.path.read_bytes().splitlines()]
    for record in records[1:]:
        record["submitted"] = "noon"  # no longer well formed: the job cannot run, its requester is still known
    journal.path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records))

    again = Journal(tmp_path / "state")
    recovery = again.open()
    assert [e.id for e in recovery.unfinished] == ["tiny-d", "osc-d"]
    try:
        _app, _server, _client, tiny = both(again, recovery)
        event, _job_id, origin, code = tiny.wait_end("tiny-d")
        assert (event, origin, code) == ("fail", "dan", "internal")
        fail = other.expect_end("osc-d", timeout=30)
        assert fail.address == "/musicgen/fail" and fail.args[2] == "internal" and "not run again" in fail.args[3]
        assert tiny.job_ids() == {"tiny-d"}
    finally:
        other.close()


def test_one_subscription_per_front_end_and_a_broken_listener_does_not_silence_the_others():
    class Broken(NullListener):
        def queued(self, job: Job, position: int) -> None:
            raise OSError("socket gone")

    class Keeps(NullListener):
        def __init__(self) -> None:
            self.heard: list[str] = []

        def queued(self, job: Job, position: int) -> None:
            self.heard.append(job.id)

    events = JobEvents()
    events.subscribe("broken", Broken(), unclaimed=True)
    keeps = Keeps()
    events.subscribe("keeps", keeps, unclaimed=True)
    with pytest.raises(Internal, match="subscribed already"):
        events.subscribe("keeps", Keeps())
    events.publish("queued", Job(id="j", request=request()), 0)
    assert keeps.heard == ["j"]
