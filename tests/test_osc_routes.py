"""The routes, called directly: no sockets, a recording context."""

from __future__ import annotations

import pytest
from conftest import stand_in_app

from bridge.app.jobs import JobKind
from bridge.config import Config
from bridge.errors import BadArgs, NotFound
from bridge.frontends.osc.routes import ADDRESS_OF, ID, NUMBER, PORT, TEXT, Context, RouteTable, arg, routes


class Peers:
    def __init__(self) -> None:
        self.ports: list[int] = []

    def register(self, port: int) -> None:
        self.ports.append(port)

    def unregister(self, port: int) -> None:
        self.ports.remove(port)


class Caller:
    """call(address, *args) -> the replies the route sent, as (address, [args]); with the app's jobs and the peers."""

    def __init__(self, app) -> None:
        self.app, self.jobs, self.peers = app, app.jobs, Peers()
        self.sent: list[tuple[str, list]] = []

    def __call__(self, address, *args):
        self.sent.clear()
        ctx = Context(address=address, app=self.app, routes=routes,
                      reply=lambda a, v: self.sent.append((a, list(v))), peers=self.peers)
        route = routes.get(address)
        assert route is not None, address
        route.call(ctx, list(args))
        return list(self.sent)


@pytest.fixture
def call(fake_bridge):
    """A :class:`Caller` over a stand-in app."""
    caller = Caller(stand_in_app(Config(queue_size=4, output_dir=fake_bridge.output_dir), fake_bridge))
    yield caller
    caller.jobs.close(5)


def test_ping_and_notify(call):
    assert call("/musicgen/ping")[0][0] == "/musicgen/pong"
    assert call("/musicgen/notify", 9100) == [("/musicgen/notify", [9100])]
    assert call.peers.ports == [9100]
    assert call("/musicgen/unnotify", "9100") == [("/musicgen/unnotify", [9100])]
    assert call.peers.ports == []


@pytest.mark.parametrize("port", [0, 70000, 1.5, "x"])
def test_notify_refuses_bad_ports(call, port):
    with pytest.raises(BadArgs, match="port"):
        call("/musicgen/notify", port)


def test_generate_submits_a_validated_job(call):
    call("/musicgen/generate", "j1", "keys", "2.5", "seed", 4, "temperature", 0.9)
    job = call.jobs.find("j1")
    assert job is not None and job.kind is JobKind.GENERATE and ADDRESS_OF[job.kind] == "/musicgen/generate"
    assert job.request.seconds == 2.5 and job.request.seed == 4 and job.request.temperature == 0.9


def test_too_many_arguments_for_a_route_without_options(call):
    with pytest.raises(BadArgs, match="too many"):
        call("/musicgen/ping", "extra")


def test_melody_checks_the_clip_exists(call, tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        call("/musicgen/melody", "m", str(tmp_path / "nope.wav"), "strings", 4.0)
    with pytest.raises(BadArgs, match="empty"):
        call("/musicgen/melody", "m", "", "strings", 4.0)


def test_job_of_an_unknown_id(call):
    with pytest.raises(NotFound):
        call("/musicgen/job", "never")


def test_api_help_for_an_unknown_address_suggests_one(call):
    with pytest.raises(NotFound, match="did you mean '/musicgen/status'"):
        call("/musicgen/api/help", "/musicgen/statu")


def test_the_declaration_must_match_the_handler():
    table = RouteTable()
    with pytest.raises(TypeError, match="declaration says"):
        @table.add("/musicgen/x", job_id=ID)
        def x(ctx, *, other):
            """Doc."""

    with pytest.raises(TypeError, match="docstring"):
        @table.add("/musicgen/y")
        def y(ctx):
            pass

    @table.add("/musicgen/z", port=PORT)
    def z(ctx, *, port):
        """Z."""

    with pytest.raises(ValueError, match="twice"):
        table.add("/musicgen/z", port=PORT)(z)


def test_usage_is_built_from_the_declaration():
    table = RouteTable()

    @table.add("/musicgen/w", options="typed", job_id=ID, level=arg("<level>", NUMBER), name=TEXT)
    def w(ctx, *, job_id, level, name, options):
        """W does things.

        Replies: `/musicgen/w <id>`
        """

    route = table.get("/musicgen/w")
    assert route is not None
    assert route.arguments == "<id> <level> <text> [key value ...]"
    assert route.meaning == "W does things." and route.replies == "`/musicgen/w <id>`"


def test_every_route_has_a_meaning_and_replies():
    for route in routes:
        assert route.meaning and route.replies, route.address  # the docstring is the spec
