"""MIDI: the bank's mapping as data, clock to tempo, and real JACK MIDI ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import mido
import pytest

from bridge.app.jobs import JobEvents, JobKind, JobQueue
from bridge.app.presets import PresetLibrary
from bridge.app.requests import build_request
from bridge.app.results import JobResult
from bridge.errors import BadArgs
from bridge.frontends.midi import (
    FirePreset,
    MidiActions,
    MidiMapper,
    SetParam,
    SetTempo,
    SongPosition,
    SwitchBank,
    Transport,
)

PRESETS = Path(__file__).resolve().parent.parent / "presets"
JACK_MIDI = "mido.backends.rtmidi/UNIX_JACK"


@pytest.fixture
def mapper():
    return MidiMapper(PresetLibrary.load(PRESETS), "lofi")


def _note(note, velocity=100, channel=0):
    return mido.Message("note_on", note=note, velocity=velocity, channel=channel)


def _cc(control, value, channel=0):
    return mido.Message("control_change", control=control, value=value, channel=channel)


# -- the pure mapper -------------------------------------------------------------------------------


def test_notes_fire_presets_with_the_current_parameters(mapper):
    assert mapper.handle(_note(37)) == [FirePreset("lofi", "drums", {})]
    assert mapper.handle(_cc(1, 127)) == [SetParam("temperature", 1.4)]
    assert mapper.handle(_note(36, velocity=1)) == [FirePreset("lofi", "keys", {"temperature": 1.4})]
    assert mapper.handle(_note(36, velocity=0)) == []  # a note-off in disguise
    assert mapper.handle(mido.Message("note_off", note=36)) == []
    assert mapper.ignored == 0


def test_cc_64_is_mid_range_and_whole_number_params_round(mapper):
    [mid] = mapper.handle(_cc(2, 64))  # guidance 1.5 .. 6.0
    assert mid.name == "guidance" and mid.value == pytest.approx(1.5 + 4.5 * 64 / 127)
    assert abs(mid.value - (1.5 + 6.0) / 2) < 4.5 / 127  # within one CC step of the middle
    assert mapper.handle(_cc(3, 0)) == [SetParam("bars", 1)]
    assert mapper.handle(_cc(3, 64)) == [SetParam("bars", 9)]  # 1 + 15 * 64/127 = 8.56
    assert mapper.handle(_cc(3, 65)) == []  # still 9 bars: said once
    assert mapper.handle(_cc(3, 127)) == [SetParam("bars", 16)]
    [fired] = mapper.handle(_note(38))
    assert fired.options == {"guidance": mid.value, "bars": 16}


def test_unknown_notes_ccs_and_programs_are_ignored_and_counted(mapper):
    assert mapper.handle(_note(100)) == []
    assert mapper.handle(_note(101)) == []
    assert mapper.handle(_cc(99, 3)) == []
    assert mapper.handle(mido.Message("program_change", program=42)) == []
    assert mapper.handle(mido.Message("pitchwheel", pitch=100)) == []
    assert mapper.handle(mido.Message("active_sensing")) == []  # housekeeping, not counted
    assert mapper.ignored == 5
    assert mapper.ignored_kinds == {"note_on": 2, "control_change": 1, "program_change": 1, "pitchwheel": 1}


def test_program_change_switches_bank(mapper):
    assert mapper.handle(mido.Message("program_change", program=1)) == [SwitchBank("techno")]
    assert mapper.handle(_note(36)) == [FirePreset("techno", "kick", {})]
    assert mapper.handle(_cc(4, 127)) == [SetParam("bpm", 150.0)]  # techno's own CC map is in force
    assert mapper.handle(mido.Message("program_change", program=0)) == [SwitchBank("lofi")]
    assert mapper.handle(_note(36)) == [FirePreset("lofi", "keys", {"bpm": 150.0})]


def test_a_bank_on_one_channel_ignores_the_others(tmp_path):
    (tmp_path / "one.yaml").write_text("bank: one\npresets:\n  a: {prompt: x, seconds: 2}\n"
                                       "midi:\n  channel: 10\n  notes: {36: a}\n", encoding="utf-8")
    mapper = MidiMapper(PresetLibrary.load(tmp_path), "one")
    assert mapper.handle(_note(36, channel=0)) == []
    assert mapper.handle(_note(36, channel=9)) == [FirePreset("one", "a", {})]  # channel 10 on the controller
    assert mapper.ignored == 1


def _clock(mapper, now, bpm, beats, start=0.0, jitter=0.0004):
    actions = []
    for i in range(24 * beats):
        now["t"] = start + i * 60.0 / bpm / 24 + (jitter if i % 2 else -jitter)
        actions += mapper.handle(mido.Message("clock"))
    return actions, start + 24 * beats * 60.0 / bpm


def test_clock_at_120_gives_120_once_despite_jitter():
    now = {"t": 0.0}
    mapper = MidiMapper(PresetLibrary.load(PRESETS), "lofi", now=lambda: now["t"])
    actions, _end = _clock(mapper, now, 120.0, beats=8)
    tempos = [a for a in actions if isinstance(a, SetTempo)]
    assert len(tempos) == 1 and tempos[0].bpm == pytest.approx(120.0, abs=0.5)
    assert mapper.tempo == tempos[0].bpm
    [fired] = mapper.handle(_note(36))
    assert isinstance(fired, FirePreset) and fired.options["bpm"] == tempos[0].bpm


def test_clock_follows_a_tempo_change_and_ignores_a_pause():
    now = {"t": 0.0}
    mapper = MidiMapper(PresetLibrary.load(PRESETS), "lofi", now=lambda: now["t"])
    _actions, end = _clock(mapper, now, 120.0, beats=4)
    actions, end = _clock(mapper, now, 90.0, beats=4, start=end)
    tempos = [a.bpm for a in actions if isinstance(a, SetTempo)]
    assert tempos and tempos[-1] == pytest.approx(90.0, abs=0.5)
    # the clock stops for 3 s and comes back at 90: the pause is not a (very slow) tempo
    actions, _end = _clock(mapper, now, 90.0, beats=2, start=end + 3.0)
    assert [a for a in actions if isinstance(a, SetTempo)] == []
    assert mapper.tempo == pytest.approx(90.0, abs=0.5)


def test_start_and_stop_are_transport(mapper):
    assert mapper.handle(mido.Message("start")) == [Transport("start")]
    assert mapper.handle(mido.Message("continue")) == [Transport("continue")]
    assert mapper.handle(mido.Message("songpos", pos=24)) == [SongPosition(24)]
    assert mapper.handle(mido.Message("stop")) == [Transport("stop")]


# -- what the daemon does with actions (a fake bridge) ---------------------------------------------


class FakeBridge:
    """The facade's request side, on the real preset library; jobs "run" at once."""

    def __init__(self, library):
        self.library = library

    def preset_request(self, bank, preset, options):
        return self.library.request(bank, preset, options)

    def make_request(self, mode, prompt, seconds, clip, options):
        return build_request(mode, prompt, options, seconds=seconds, clip=clip)

    def run(self, job_id, request, progress, is_cancelled, on_chunk=None, on_warning=None):
        return JobResult(paths=[Path(f"/tmp/{job_id}.wav")], seconds=1.0, sample_rate=8000)


class FakeJam:
    def __init__(self, running):
        self.running = running
        self.changes = []
        self.stopped = 0

    def set(self, changes):
        self.changes.append(changes)
        return dict(changes)

    def stop(self):
        self.stopped += 1


class Queued:
    """A job listener that keeps what the queue accepted."""

    def __init__(self):
        self.jobs = []

    def queued(self, job, position):
        self.jobs.append(job)

    def __getattr__(self, name):
        return lambda *args: None


@pytest.fixture
def fake_app(mapper):
    """An App of the real job queue, a fake facade over the real banks, and a fake jam controller."""
    queued = Queued()
    bridge = FakeBridge(mapper.library)

    def make(jamming=False):
        events = JobEvents()
        events.subscribe("test", queued, unclaimed=True)  # MIDI's jobs are unclaimed: no front end listens for them
        return SimpleNamespace(bridge=bridge, jam=FakeJam(jamming), jobs=JobQueue(bridge, 8, events), queued=queued,
                               midi_clock=None)

    apps = []

    def new_app(jamming=False):
        apps.append(make(jamming))
        return apps[-1]

    yield new_app
    for app in apps:
        app.jobs.close(5)


def test_actions_queue_preset_jobs_and_start_the_jam(mapper, fake_app):
    app = fake_app()
    actions = MidiActions(app, mapper)
    for action in mapper.handle(_cc(3, 127)) + mapper.handle(_note(37)):
        actions.apply(action)
    [job] = app.queued.jobs  # straight into the one job queue, no OSC server in between
    assert job.kind is JobKind.PRESET and job.origin is None and (job.request.bars, job.request.bpm) == (16, 82.0)
    assert job.request.prompt.startswith("soft boom bap drums")
    for action in mapper.handle(mido.Message("start")):
        actions.apply(action)
    jam = app.queued.jobs[-1]
    assert jam.kind is JobKind.JAM and jam.request.mode == "jam" and jam.request.play
    assert (jam.request.prompt, jam.request.bars, jam.request.seed) == (mapper.library.get("lofi", "keys").prompt, 16, 11)
    assert app.jam.changes == []  # nothing is jamming yet: knobs only shape the next preset


def test_actions_steer_a_running_jam(mapper, fake_app):
    app = fake_app(jamming=True)
    actions = MidiActions(app, mapper)
    for message in (_cc(1, 0), mido.Message("start"), mido.Message("stop")):
        for action in mapper.handle(message):
            actions.apply(action)
    assert app.jam.changes == [{"temperature": 0.6}] and app.jam.stopped == 1
    assert app.queued.jobs == []  # a running jam is steered, not restarted


def test_a_knob_the_jam_cannot_use_only_shapes_the_next_preset(mapper, fake_app):
    app = fake_app(jamming=True)
    actions = MidiActions(app, mapper)
    for action in (SetParam("variations", 3), SetParam("seconds", 4.0), SetParam("top_p", 0.5)):
        actions.apply(action)
    assert app.jam.changes == [{"top_p": 0.5}]  # not a warning on every turn of a variations knob


def test_a_failing_action_is_logged_not_raised(mapper, fake_app, caplog):
    actions = MidiActions(fake_app(), mapper)
    actions.apply(FirePreset("lofi", "nope", {}))
    assert "not_found: bank 'lofi' has no preset 'nope'" in caplog.text


# -- real ports on a JACK dummy server ---------------------------------------------------------------


def _run_python(script, jack_server, timeout=60):
    env = dict(jack_server.env, MIDO_BACKEND=JACK_MIDI)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, check=False, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_virtual_jack_port_fires_a_preset(jack_server):
    out = _run_python(f"""
        import time, mido
        from bridge.frontends.midi import MidiInput, MidiMapper
        from bridge.app.presets import PresetLibrary
        got = []
        with MidiInput(MidiMapper(PresetLibrary.load({str(PRESETS)!r}), "lofi"), got.append, virtual=True) as midi_in:
            [name] = [n for n in mido.get_output_names() if "musicgen-bridge" in n]  # our virtual input
            with mido.open_output(name) as out:
                out.send(mido.Message("note_on", note=38, velocity=100))
                deadline = time.monotonic() + 30
                while not got and time.monotonic() < deadline:
                    time.sleep(0.01)
            print(midi_in.name, "|", got, "|", midi_in.received)
    """, jack_server)
    assert "FirePreset(bank='lofi', preset='bass', options={})" in out and out.strip().endswith("| 1")


def test_a_named_jack_port_is_found_by_part_of_its_name(jack_server):
    out = _run_python(f"""
        import time, mido
        from bridge.errors import BridgeError
        from bridge.frontends.midi import MidiInput, MidiMapper
        from bridge.app.presets import PresetLibrary
        mapper = MidiMapper(PresetLibrary.load({str(PRESETS)!r}), "lofi")
        try:
            MidiInput(mapper, print, port="launchpad")
        except BridgeError as exc:
            print("MISSING", exc.code, exc.message)
        controller = mido.open_output("Fake Controller", virtual=True)  # a controller's output port
        got = []
        with MidiInput(mapper, got.append, port="fake contr") as midi_in:
            controller.send(mido.Message("program_change", program=1))
            controller.send(mido.Message("note_on", note=39, velocity=90))
            deadline = time.monotonic() + 30
            while len(got) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            print("OPENED", midi_in.name, "|", got)
        controller.close()
    """, jack_server)
    assert "MISSING not_found no MIDI input matches 'launchpad'; inputs: none" in out
    assert "OPENED RtMidiOut Client:Fake Controller | [SwitchBank(bank='techno'), FirePreset(bank='techno', " \
           "preset='hats', options={})]" in out


def test_an_ambiguous_port_name_is_refused(monkeypatch):
    import bridge.frontends.midi

    monkeypatch.setattr(bridge.frontends.midi, "input_names", lambda: ["Pad A:out 1", "Pad A:out 2", "Keys"])
    with pytest.raises(BadArgs, match="matches 2 MIDI inputs"):
        bridge.frontends.midi.MidiInput(MidiMapper(PresetLibrary.load(PRESETS), "lofi"), print, port="pad a")


def test_serve_with_midi_fires_a_preset_job(jack_server, tmp_path):
    """The whole chain: a JACK MIDI note into `serve --midi`, a preset job, /musicgen/done on a real UDP port."""
    import soundfile as sf
    from pythonosc.osc_message import OscMessage

    from bridge.tempo import bars_to_samples

    replies = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    replies.bind(("127.0.0.1", 0))
    replies.settimeout(0.5)
    env = dict(jack_server.env, MIDO_BACKEND=JACK_MIDI)
    daemon = subprocess.Popen(  # port 0: the daemon picks a free one (the test speaks MIDI to it, not OSC)
        [sys.executable, "-m", "bridge.cli", "serve", "--model", "tiny-random", "--port", "0", "--reply-port",
         str(replies.getsockname()[1]), "--output-dir", str(tmp_path), "--presets", str(PRESETS), "--midi"],
        env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert daemon.stderr is not None
        while "MIDI: listening" not in (line := daemon.stderr.readline()):
            assert line, "the daemon exited before opening MIDI"
        _run_python("""
            import mido
            [name] = [n for n in mido.get_output_names() if "musicgen-bridge" in n]
            with mido.open_output(name) as out:
                out.send(mido.Message("note_on", note=37, velocity=100))
        """, jack_server)
        deadline = time.monotonic() + 60
        done = None
        while done is None and time.monotonic() < deadline:
            try:
                message = OscMessage(replies.recv(65536))
            except TimeoutError:
                continue
            if message.address == "/musicgen/done":
                done = message.params
        assert done is not None and done[0] == "/musicgen/preset"
        assert sf.info(done[2]).frames == bars_to_samples(2, 82.0, 32000)  # lofi/drums: 2 bars at 82 bpm
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        replies.close()
