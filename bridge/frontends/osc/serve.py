"""``musicgen-bridge serve``: its arguments, and the daemon it assembles from the composition root.

``bridge.frontends.cli`` calls :func:`add_parsers`. ``run_serve`` builds the application once
(:class:`bridge.app.root.App`: model, services, the one job queue), puts the OSC server and the
MIDI input in front of it, and serves until Ctrl-C or SIGTERM.
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
from bridge.config import PRECISION_HELP, PRIORITY_HELP, THREADS_HELP, Config
from bridge.errors import BadArgs

DEFAULT_PORT = Config.port
DEFAULT_REPLY_PORT = Config.reply_port


def add_parsers(sub: Any) -> None:
    """Add ``serve`` to the CLI's subparsers."""
    serve = sub.add_parser("serve", help="keep the model loaded and serve DAW scripts over OSC (UDP and TCP)",
                           description="Load the model once, then answer OSC requests until Ctrl-C or SIGTERM "
                                       "(the running job is cancelled and reported).")
    add_serve_arguments(serve)
    serve.set_defaults(handler=run_serve)


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="Hugging Face id, local folder, or a built-in (tiny-random, ...); "
                   "default facebook/musicgen-small")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", default=None, help=PRECISION_HELP)
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--priority", default=None, help=PRIORITY_HELP)
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; any other needs --token)")
    p.add_argument("--port", type=int, default=None, help=f"UDP and TCP port (default {DEFAULT_PORT})")
    p.add_argument("--reply-port", type=int, default=None,
                   help=f"port replies go to on the sender's host (default {DEFAULT_REPLY_PORT})")
    p.add_argument("--output-dir", type=Path, default=None, help="where results go (default ~/MusicGenBridge/out)")
    p.add_argument("--state-dir", type=Path, default=None, help="where the job journal lives, so queued jobs survive "
                   "a crash (default: beside the output folder, OUT.state)")
    p.add_argument("--fresh", action="store_true", help="start clean: jobs a crash left in the journal are not run "
                   "again (their requesters get fail ... cancelled)")
    p.add_argument("--presets", type=Path, default=None, help="a folder of preset banks (YAML)")
    p.add_argument("--queue", type=int, default=None, help="jobs that may wait (default 16); more get busy")
    p.add_argument("--token", default=None, help="shared token every message must carry as `token <value>` "
                   "(or MUSICGEN_BRIDGE_TOKEN); required off loopback")
    p.add_argument("--allow-dir", type=Path, action="append", default=None, metavar="DIR", dest="allow_dirs",
                   help="a folder OSC clients may read clips from (repeat for more; the output folder always counts). "
                   "Default: anywhere on 127.0.0.1, only the output folder off loopback")
    p.add_argument("--audio-device", default=None, help="the output device for play 1 and the jam: an index or part "
                   "of a name (see `musicgen-bridge devices`; default: the system's)")
    p.add_argument("--max-job-memory", type=int, default=None, metavar="MB",
                   help="memory one job may hold at its peak, in MB; a request that needs more is refused before "
                   "any work (default: half this machine's memory)")
    p.add_argument("--config", type=Path, default=None, help="a YAML file of settings (see the README's "
                   "configuration section)")
    p.add_argument("--midi", nargs="?", const="", default=None, metavar="PORT",
                   help="take a MIDI controller: a part of an input's name, or nothing for a virtual port "
                   "named musicgen-bridge (mido's backend: MIDO_BACKEND)")
    p.add_argument("--midi-bank", default=None, help="the preset bank the controller starts on (default: the first)")
    add_link_argument(p)


def add_link_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--link", action="count", default=0, help="join the Ableton Link session (tempo, bar lines, "
                   "start/stop) so a jam with `sync link` plays with the set; needs "
                   "pip install 'musicgen-bridge[link]' (Ableton's Link, GPL)")


def check_link_argument(args: argparse.Namespace) -> bool:
    """``--link`` given once, and the Link wheel importable: before the (slow) model load."""
    count = getattr(args, "link", 0) or 0
    if count > 1:
        raise BadArgs("--link was given twice: give it once")
    if count:
        from importlib.util import find_spec  # noqa: PLC0415

        from bridge.app.link import INSTALL_HINT  # noqa: PLC0415

        if find_spec("link") is None:
            raise BadArgs(INSTALL_HINT)
    return bool(count)


def config_from_args(args: argparse.Namespace) -> Any:
    from bridge.config import load_config  # noqa: PLC0415

    return load_config(args.config, overrides={
        "model": args.model, "device": args.device, "precision": args.precision, "host": args.host,
        "port": args.port, "reply_port": args.reply_port, "output_dir": args.output_dir,
        "presets_dir": args.presets, "queue_size": args.queue, "token": args.token,
        "state_dir": getattr(args, "state_dir", None), "allow_dirs": getattr(args, "allow_dirs", None),
        "audio_device": getattr(args, "audio_device", None), "max_job_memory": getattr(args, "max_job_memory", None),
        "threads": getattr(args, "threads", None), "priority": getattr(args, "priority", None),
        "link": check_link_argument(args) or None,
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
    from bridge.app.root import App  # noqa: PLC0415  (imports torch: keep --help fast)
    from bridge.frontends.osc.server import OscServer, is_loopback  # noqa: PLC0415

    config = config_from_args(args)
    if config.queue_size < 1:
        raise BadArgs(f"--queue must be 1 or more, got {config.queue_size}")
    if not is_loopback(config.host) and not config.token:
        raise BadArgs(f"listening on {config.host or 'every interface'} needs a shared token: add --token SECRET "
                      "(clients send `token SECRET` with every message), or listen on 127.0.0.1")
    _check_port_free(config.host, config.port)
    sys.stderr.write(f"loading {config.model} ...\n")
    app = App.build(config, journal=True)
    server = OscServer(app, config)
    server.bind()  # the restored jobs' replies need the socket
    app.restore(fresh=args.fresh)  # before new requests: the interrupted jobs keep their place
    server.start()
    midi = _open_midi(args, app) if getattr(args, "midi", None) is not None else None
    info = app.bridge.info()
    stop = threading.Event()
    previous = _install_signal_handlers(stop)
    try:
        try:
            sys.stderr.write(f"musicgen-bridge {__version__}: {info['model']} on {info['device']} "
                             f"({info.get('precision', info['dtype'])}, {info.get('kernel', '')}); OSC (UDP and TCP) "
                             f"on {config.host}:{server.port}, replies to port {config.reply_port}. Ctrl-C stops.\n")
            if app.link is not None:
                sys.stderr.write("Ableton Link: on: jams with `sync link` play on the session's bar lines; the "
                                 "bridge stays in the session only beside a DAW (or while such a jam plays), so a "
                                 "DAW turning Link on keeps its tempo\n")
            sys.stderr.flush()
            while not stop.wait(0.5):
                pass
            sys.stderr.write("stopping: cancelling jobs ...\n")
        finally:
            if midi is not None:
                midi.close()
            server.stop()
            app.close()
    finally:
        _restore_signal_handlers(previous)
    sys.stderr.write("stopped\n")
    return 0


def _open_midi(args: argparse.Namespace, app: Any) -> Any:
    """Connect a MIDI controller: notes fire presets as jobs, CCs and clock steer the jam."""
    from bridge.frontends.midi import MidiActions, MidiInput, MidiMapper  # noqa: PLC0415

    presets = app.presets
    if presets is None or not presets.banks():
        raise BadArgs("--midi needs preset banks (their midi: sections map the controller): add --presets DIR")
    bank = args.midi_bank or presets.banks()[0]
    mapper = MidiMapper(presets, bank)
    midi = MidiInput(mapper, MidiActions(app, mapper).apply, port=args.midi or None)
    if app.midi_clock is not None:
        app.midi_clock.attached = True  # a jam may now ask for sync midi
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
