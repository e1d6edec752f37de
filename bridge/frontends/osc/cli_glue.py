"""The ``serve`` and ``send`` commands of ``musicgen-bridge``: their arguments and what they run.

``bridge.cli`` calls :func:`add_parsers`; each command's parser sets ``handler``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.config import PRECISION_HELP
from bridge.errors import BadArgs

DEFAULT_PORT = 9000
DEFAULT_REPLY_PORT = 9001


def add_parsers(sub: Any) -> None:
    """Add ``serve`` and ``send`` to the CLI's subparsers."""
    serve = sub.add_parser("serve", help="keep the model loaded and serve DAW scripts over OSC (UDP and TCP)",
                           description="Load the model once, then answer OSC requests until Ctrl-C or SIGTERM "
                                       "(the running job is cancelled and reported).")
    add_serve_arguments(serve)
    serve.set_defaults(handler=run_serve)
    send = sub.add_parser("send", help="send one OSC message to the bridge (and with --wait, print the result)",
                          description="Send one OSC message. Arguments are typed by inference (3 int, 2.5 float, "
                                      "else text) or explicitly (i:3 f:2 s:3). With --wait: wait for the job's "
                                      "done or fail and print the result paths, one per line.",
                          epilog="example: musicgen-bridge send /musicgen/generate \"\" \"dusty lofi keys\" 4 "
                                 "bpm 90 bars 2 --wait")
    add_send_arguments(send)
    send.set_defaults(handler=_run_send)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Hugging Face id, local folder, or a built-in (tiny-random, ...); "
                   "default facebook/musicgen-small")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default=None, help=PRECISION_HELP)
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=None, help=f"UDP and TCP port (default {DEFAULT_PORT})")
    p.add_argument("--reply-port", type=int, default=None,
                   help=f"port replies go to on the sender's host (default {DEFAULT_REPLY_PORT})")
    p.add_argument("--output-dir", type=Path, default=None, help="where results go (default ~/MusicGenBridge/out)")
    p.add_argument("--presets", type=Path, default=None, help="a folder of preset banks (YAML)")
    p.add_argument("--queue", type=int, default=None, help="jobs that may wait (default 16); more get busy")
    p.add_argument("--token", default=None, help="shared token every message must carry as `token <value>` "
                   "(or MUSICGEN_BRIDGE_TOKEN); required off loopback")
    p.add_argument("--config", type=Path, default=None, help="a YAML file of settings")
    p.add_argument("--midi", nargs="?", const="", default=None, metavar="PORT",
                   help="take a MIDI controller: a part of an input's name, or nothing for a virtual port "
                   "named musicgen-bridge (mido's backend: MIDO_BACKEND)")
    p.add_argument("--midi-bank", default=None, help="the preset bank the controller starts on (default: the first)")


def add_send_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("address", help="the OSC address, e.g. /musicgen/generate")
    p.add_argument("args", nargs="*", help='arguments, e.g. "" "dusty lofi keys" 4 bpm 90 (i:3 f:2 s:3 force a type)')
    p.add_argument("--host", default="127.0.0.1", help="the bridge's host (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"the bridge's port (default {DEFAULT_PORT})")
    p.add_argument("--reply-port", type=int, default=None, help="with --wait, listen on this port (default: any free "
                   "one, registered with /musicgen/notify)")
    p.add_argument("--wait", action="store_true", help="wait for the answer: a job's done or fail, else the first reply")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait (default 600)")
    p.add_argument("--token", default=None, help="the shared token (default $MUSICGEN_BRIDGE_TOKEN)")
    p.add_argument("--tcp", action="store_true", help="send over TCP (replies come back on the connection)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr while waiting")


def _run_send(args: argparse.Namespace) -> int:
    from bridge.frontends.client import run_send  # noqa: PLC0415

    return run_send(args)


def config_from_args(args: argparse.Namespace) -> Any:
    from bridge.config import load_config  # noqa: PLC0415

    return load_config(args.config, overrides={
        "model": args.model, "device": args.device, "precision": args.precision, "host": args.host,
        "port": args.port, "reply_port": args.reply_port, "output_dir": args.output_dir,
        "presets_dir": args.presets, "queue_size": args.queue, "token": args.token,
    })


def _check_port_free(host: str, port: int) -> None:
    """Fail before the (slow) model load when the port is taken."""
    if port == 0:
        return
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_DGRAM)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise BadArgs(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Is another bridge running? "
                      "Pick another --port") from None


def run_serve(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM; then cancel and report the jobs, and exit 0."""
    from bridge.app.bridge import Bridge  # noqa: PLC0415  (imports torch: keep --help fast)
    from bridge.frontends.osc.server import OscServer, is_loopback  # noqa: PLC0415

    config = config_from_args(args)
    if config.queue_size < 1:
        raise BadArgs(f"--queue must be 1 or more, got {config.queue_size}")
    if not is_loopback(config.host) and not config.token:
        raise BadArgs(f"listening on {config.host or 'every interface'} needs a shared token: add --token SECRET "
                      "(clients send `token SECRET` with every message), or listen on 127.0.0.1")
    _check_port_free(config.host, config.port)
    sys.stderr.write(f"loading {config.model} ...\n")
    bridge = Bridge.from_config(config)
    server = OscServer(bridge, config)
    server.start()
    midi = _open_midi(args, bridge, server) if getattr(args, "midi", None) is not None else None
    info = bridge.info()
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    try:
        try:
            sys.stderr.write(f"musicgen-bridge {__version__}: {info['model']} on {info['device']} "
                             f"({info.get('precision', info['dtype'])}, {info.get('kernel', '')}); OSC (UDP and TCP) "
                             f"on {config.host}:{server.port}, replies to port {config.reply_port}. Ctrl-C stops.\n")
            sys.stderr.flush()
            while not stop.wait(0.5):
                pass
            sys.stderr.write("stopping: cancelling jobs ...\n")
        finally:
            if midi is not None:
                midi.close()
            server.stop()
    finally:
        _restore_signal_handlers(previous)
    sys.stderr.write("stopped\n")
    return 0


def _open_midi(args: argparse.Namespace, bridge: Any, server: Any) -> Any:
    """Connect a MIDI controller: notes fire presets as jobs, CCs and clock steer the jam."""
    from bridge.frontends.midi import MidiActions, MidiInput, MidiMapper  # noqa: PLC0415

    if bridge.app.presets is None or not bridge.app.presets.banks():
        raise BadArgs("--midi needs preset banks (their midi: sections map the controller): add --presets DIR")
    bank = args.midi_bank or bridge.app.presets.banks()[0]
    mapper = MidiMapper(bridge.app.presets, bank)
    midi = MidiInput(mapper, MidiActions(bridge, server.submit, mapper).apply, port=args.midi or None)
    sys.stderr.write(f"MIDI: listening on {midi.name}, bank {bank}\n")
    return midi


def _install_signal_handlers(stop: threading.Event) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        del signum, frame
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):
            previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, old in previous.items():
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signum, old)
