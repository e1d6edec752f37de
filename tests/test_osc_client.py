"""`musicgen-bridge send`: argument typing, --wait for done or fail, TCP, timeouts."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import soundfile as sf

from bridge import __version__
from bridge.errors import BadArgs
from bridge.frontends.cli import main
from bridge.frontends.client import TIMEOUT_EXIT, parse_arg, send


@pytest.mark.parametrize(("word", "value"), [
    ("3", 3), ("-3", -3), ("2.5", 2.5), ("1e3", 1000.0), (".5", 0.5), ("keys", "keys"), ("", ""),
    ("s:3", "3"), ("i:7", 7), ("f:2", 2.0), ("d:0.25", 0.25), ("h:5000000000", 5000000000), ("s:", ""),
    ("x:1", "x:1"), ("1.2.3", "1.2.3"),
])
def test_arguments_are_typed_like_oscsend(word, value):
    got = parse_arg(word)
    assert got == value and type(got) is type(value)


def test_an_explicit_type_that_does_not_fit_is_bad_args():
    with pytest.raises(BadArgs, match="whole number"):
        parse_arg("i:three")


def test_send_without_wait_just_sends(osc_server):
    server, client = osc_server()
    assert send("/musicgen/ping", [], port=server.port).code == 0
    client.expect("/musicgen/pong")


def test_wait_prints_the_result_paths(osc_server, capsys):
    server, _ = osc_server()
    code = main(["send", "/musicgen/generate", "", "dusty lofi keys", "1", "variations", "2", "--port",
                 str(server.port), "--wait", "--timeout", "10"])
    out = capsys.readouterr()
    assert code == 0, out.err
    paths = out.out.split()
    assert len(paths) == 2 and all(sf.info(p).frames == 8000 for p in paths)
    assert all(Path(p).is_absolute() for p in paths)


def test_wait_shows_the_jobs_warnings(osc_server, capsys):
    server, _ = osc_server()
    code = main(["send", "/musicgen/generate", "w2", "warn me", "1", "--port", str(server.port), "--wait",
                 "--timeout", "10"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "w2: warning: the fake is slower than real time" in out.err
    assert len(out.out.split()) == 1  # stdout stays the result path only


def test_wait_on_a_failure_exits_non_zero_with_the_message(osc_server, capsys):
    server, _ = osc_server()
    code = main(["send", "/musicgen/generate", "m1", "raise model_error", "1", "--port", str(server.port),
                 "--wait", "--quiet", "--timeout", "10"])
    out = capsys.readouterr()
    assert code == 6 and out.out == ""
    assert "model_error: the fake model failed" in out.err


def test_wait_on_bad_args_and_unknown_addresses(osc_server, capsys):
    server, _ = osc_server()
    assert main(["send", "/musicgen/generate", "b1", "keys", "s:four", "--port", str(server.port), "--wait"]) == 2
    assert "wants a number" in capsys.readouterr().err
    assert main(["send", "/musicgen/bogus", "--port", str(server.port), "--wait"]) == 10
    assert "unknown_address" in capsys.readouterr().err


def test_wait_for_a_non_job_prints_the_reply(osc_server, capsys):
    server, _ = osc_server()
    assert main(["send", "/musicgen/ping", "--port", str(server.port), "--wait", "--timeout", "5"]) == 0
    assert capsys.readouterr().out.strip() == f"/musicgen/pong {__version__}"


def test_wait_unregisters_its_port_afterwards(osc_server):
    server, client = osc_server()
    assert send("/musicgen/ping", [], port=server.port, wait=True, timeout=5).code == 0
    client.expect("/musicgen/unnotify")
    assert server.router.targets("127.0.0.1") == [("127.0.0.1", client.port)]


def test_timeout_when_nobody_answers(capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]  # bound but never read: nobody answers
        code = main(["send", "/musicgen/ping", "--port", str(dead_port), "--wait", "--timeout", "0.3"])
    assert code == TIMEOUT_EXIT
    assert "timeout" in capsys.readouterr().err


def test_tcp_wait(osc_server):
    server, _ = osc_server()
    outcome = send("/musicgen/generate", ["", "keys", 0.5], port=server.port, wait=True, timeout=10, tcp=True)
    assert outcome.code == 0 and sf.info(outcome.lines[0]).frames == 4000


def test_token_is_sent_with_every_message(osc_server, monkeypatch, capsys):
    server, _ = osc_server(token="tok")
    # without the token even the registration of the reply port is refused: the client can only time out
    assert main(["send", "/musicgen/ping", "--port", str(server.port), "--wait", "--timeout", "0.5"]) == TIMEOUT_EXIT
    assert "--token" in capsys.readouterr().err
    assert server.stats.unauthorized == 1
    monkeypatch.setenv("MUSICGEN_BRIDGE_TOKEN", "tok")
    assert main(["send", "/musicgen/generate", "", "keys", "0.5", "--port", str(server.port), "--wait"]) == 0
    assert capsys.readouterr().out.strip().endswith(".wav")


def test_cancel_with_wait_reports_the_cancelled_job(osc_server, fake_bridge, capsys):
    server, client = osc_server()
    fake_bridge.gate.clear()
    client.send("/musicgen/generate", "victim", "keys", 0.5)
    client.expect("/musicgen/queued")
    assert main(["send", "/musicgen/cancel", "victim", "--port", str(server.port), "--wait", "--timeout", "5"]) == 0
    assert "victim cancelled" in capsys.readouterr().out
