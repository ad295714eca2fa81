"""End to end: `melodylstm jam` as a real process, over real virtual MIDI ports.

JACK's dummy backend gives virtual MIDI ports with no sound card (this kernel has no ALSA
sequencer; neither do hosted CI runners). The test plays a phrase into jam's input port with
real timing and records what comes out of jam's output port. Skipped where `jackd` or
python-rtmidi's JACK API is missing (.ci/run installs jackd2)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JACK_BACKEND = "mido.backends.rtmidi/UNIX_JACK"
TEMPO = 120.0
STEP = 60.0 / TEMPO / 12  # one grid step of the bundled model (resolution 12): 41.7 ms
PAUSE = 0.5  # seconds of silence that end the phrase
PHRASE = [60, 62, 64, 65, 67]  # eighth notes (0.25 s apart), each held 0.2 s


def require_jack():
    if shutil.which("jackd") is None:
        pytest.skip("jackd is not installed (apt-get install jackd2)")
    rtmidi = pytest.importorskip("rtmidi", reason="python-rtmidi is not installed")
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        pytest.skip("python-rtmidi was built without JACK support")
    return rtmidi


def spawn(args, log: Path, death_signal=signal.SIGKILL, **kwargs) -> subprocess.Popen:
    """Start a process in its own session (so `stop` reaches all it starts) that gets
    `death_signal` if the test process dies first, even by SIGKILL: no orphans (Linux)."""

    preexec = None
    if sys.platform.startswith("linux"):
        import ctypes

        prctl = ctypes.CDLL(None).prctl  # looked up before the fork: the child only calls it
        preexec = lambda: prctl(1, int(death_signal))  # noqa: E731 - 1 = PR_SET_PDEATHSIG

    with open(log, "w") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=preexec, **kwargs)  # noqa: PLW1509 - only calls prctl


def stop(proc: subprocess.Popen, gently: float = 0.0) -> None:
    """SIGTERM first if `gently` (seconds to wait), then SIGKILL the process group."""
    for sig, wait in ((signal.SIGTERM, gently), (signal.SIGKILL, 10)):
        if wait and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        if proc.poll() is not None:
            return


def wait_for(condition, seconds: float, what: str, alive=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        if alive is not None:
            alive()
        time.sleep(0.05)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")


@pytest.fixture
def jack_server(tmp_path, monkeypatch):
    """A private JACK server on the dummy backend; its name is exported to this process (and
    so to the processes it starts).

    JACK keeps a registry of at most 8 servers in /dev/shm. A server stopped with SIGTERM leaves
    it; a killed one stays registered until a server of the same name starts. So the names come
    from a few fixed slots (a slot whose server is alive, e.g. in a parallel run, is skipped),
    and jackd gets SIGTERM, also when the test process dies."""
    rtmidi = require_jack()
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")  # clients never start a server of their own

    def up():
        try:
            rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="melodylstm-probe").delete()  # raises while it is down
            return True
        except rtmidi.SystemError:
            return False

    log = tmp_path / "jackd.log"
    for slot in range(4):
        name = f"melodylstm-test-{slot}"
        monkeypatch.setenv("JACK_DEFAULT_SERVER", name)
        # 256 frames at 48 kHz = 5.3 ms cycles. Realtime scheduling (jackd's default; it runs without
        # where that is not allowed): with -r, busy cores made JACK drop the phrase's messages.
        proc = spawn(["jackd", "-n", name, "-d", "dummy", "-r", "48000", "-p", "256"], log, signal.SIGTERM)
        try:
            if wait_for(lambda proc=proc: up() or proc.poll() is not None, 10, "the JACK server") and proc.poll() is None:
                break
        except BaseException:
            stop(proc, gently=5)
            raise
    else:
        pytest.fail(f"jackd did not start:\n{log.read_text()}")
    try:
        yield name
    finally:
        stop(proc, gently=5)
        # Shown with a failure: JACK drops MIDI events in the cycles it overruns (a busy machine,
        # no realtime priority)
        xruns = [line for line in log.read_text().splitlines() if "XRun" in line]
        print(f"jackd ({name}): {len(xruns)} xrun reports", *sorted(set(xruns))[:4], sep="\n  ")


class PortLister:
    """Lists JACK's MIDI ports through two clients kept open. mido's get_*_names() open and close
    a JACK client per call; polled while jam starts, that churn now and then left a client that
    never finished its cycle, and JACK stopped processing (every cycle an xrun, no MIDI at all)."""

    def __init__(self):
        import rtmidi

        self.sources = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="melodylstm-test-sources")
        self.sinks = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="melodylstm-test-sinks")

    def inputs(self):  # ports that send MIDI (mido's input names)
        return self.sources.get_ports()

    def outputs(self):  # ports that take MIDI (mido's output names)
        return self.sinks.get_ports()

    def close(self):
        self.sources.delete()
        self.sinks.delete()


def find_port(names, port_name):
    """JACK lists ports as 'client:port'; the client name is rtmidi's (maybe with a -NN suffix)."""
    return next((n for n in names if n.endswith(":" + port_name)), None)


class JamProcess:
    """`python -m melodylstm jam` with virtual ports in and out, connected to this process:
    `play_phrase` plays into jam's input; what jam plays lands in `received` as (monotonic
    seconds, message), stamped in rtmidi's thread as it arrives."""

    def __init__(self, tmp_path, *args):
        import mido

        self.jack = mido.Backend(JACK_BACKEND)  # this backend only; mido's global default stays
        tag = uuid.uuid4().hex[:6]
        jam_in, jam_out = f"jam_in_{tag}", f"jam_out_{tag}"
        env = dict(os.environ, MIDO_BACKEND=JACK_BACKEND, SDL_NO_SIGNAL_HANDLERS="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.log = tmp_path / f"jam-{tag}.log"
        self.proc = spawn([sys.executable, "-m", "melodylstm", "jam", "--in", f"virtual:{jam_in}",
                           "--out", f"virtual:{jam_out}", "--tempo", str(TEMPO), "--pause", str(PAUSE), "--seed", "1",
                           *args], self.log, cwd=ROOT, env=env)
        self.jam_in, self.jam_out = jam_in, jam_out
        self.received = []
        self.ports = PortLister()

    def connect(self):
        # jam loads the model first and opens its input port last: once that exists, it listens
        wait_for(lambda: find_port(self.ports.outputs(), self.jam_in), 60, "jam's ports", self.check_alive)
        self.to_jam = self.jack.open_output(find_port(self.ports.outputs(), self.jam_in))
        self.from_jam = self.jack.open_input(find_port(self.ports.inputs(), self.jam_out),
                                             callback=lambda msg: self.received.append((time.monotonic(), msg)))
        time.sleep(0.2)  # let JACK finish the connections

    def check_alive(self):
        if self.proc.poll() is not None:
            pytest.fail(f"jam exited early with {self.proc.returncode}:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text()

    def play_phrase(self) -> float:
        """Plays PHRASE with real timing; returns the time of its last note_off."""
        import mido

        start = time.monotonic()
        for i, pitch in enumerate(PHRASE):
            for at, msg in ((i * 0.25, mido.Message("note_on", note=pitch, velocity=90)),
                            (i * 0.25 + 0.2, mido.Message("note_off", note=pitch))):
                time.sleep(max(0.0, start + at - time.monotonic()))
                self.to_jam.send(msg)
        return time.monotonic()

    def wait(self, seconds: float) -> int:
        try:
            code = self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jam still runs after {seconds} s; received {[m for _, m in self.received]}\n{self.output()}")
        time.sleep(0.1)  # the last messages are still on their way through JACK
        return code

    def close(self):
        for port in ("to_jam", "from_jam"):
            if hasattr(self, port):
                getattr(self, port).close()
        self.ports.close()
        stop(self.proc)


@pytest.fixture
def start_jam(jack_server, tmp_path):
    """Starts jam processes connected to this one; kills them all at the end, whatever happened."""
    started = []

    def start(*args):
        jam = JamProcess(tmp_path, *args)
        started.append(jam)
        jam.connect()
        return jam

    try:
        yield start
    finally:
        for jam in started:
            jam.close()


def answer_checks(received, last_off):
    """What any answer must look like; returns the note_on messages with their arrival times."""
    assert received, "jam sent nothing"
    assert received[0][0] - last_off >= PAUSE, "jam answered before the pause ended"
    messages = [m for _, m in received]
    notes_on = [(t, m) for t, m in received if m.type == "note_on" and m.velocity > 0]
    assert notes_on, messages

    # Sane pitches: within the model's range and near the phrase
    pitches = [m.note for _, m in notes_on]
    assert all(21 <= p <= 108 for p in pitches), pitches
    assert abs(sum(pitches) / len(pitches) - sum(PHRASE) / len(PHRASE)) <= 24, pitches

    # Every note_on ends, then all-notes-off on all 16 channels ends the answer
    first_cc = next((i for i, m in enumerate(messages) if m.type == "control_change"), len(messages))
    held = {}
    for m in messages[:first_cc]:
        key = (m.channel, getattr(m, "note", None))
        if m.type == "note_on" and m.velocity > 0:
            held[key] = held.get(key, 0) + 1
        elif m.type in ("note_on", "note_off"):
            assert held.get(key), f"note_off without a note_on: {m}"
            held[key] -= 1
        else:
            assert m.type == "program_change", m
    tail = messages[first_cc:]
    assert sorted((m.channel, m.control) for m in tail) == [(c, 123) for c in range(16)], tail
    return notes_on, {k: n for k, n in held.items() if n}


def test_jam_answers_over_jack_ports(start_jam):
    # One retry, for JACK's dummy driver on a busy 2-core machine: an overrun cycle can drop a MIDI
    # message (3 runs in 56 lost a note_on). The worse failure, about 1 run in 8 where JACK stopped
    # processing altogether and jam heard nothing, came from mido opening a JACK client per port
    # listing (PortLister); none in 56 runs since. A second failure in a row fails the test.
    try:
        check_one_answer(start_jam)
    except (AssertionError, pytest.fail.Exception):
        check_one_answer(start_jam)


def check_one_answer(start_jam):
    jam = start_jam("--bars", "1", "--answers", "1")
    last_off = jam.play_phrase()
    assert jam.wait(20) == 0, jam.output()  # --answers 1: jam ends by itself
    assert "Traceback" not in jam.output()

    notes_on, stuck = answer_checks(jam.received, last_off)
    assert not stuck, f"stuck notes: {stuck}"
    started = jam.received[0][0]  # the answer's first message: the model has finished sampling
    assert started - last_off < PAUSE + 3.0
    t0 = notes_on[0][0]
    # --bars 1: the rest of the phrase's bar, then one more bar (2 s at 120 bpm); the phrase ends
    # 1.2 s into its bar, so the answer's notes start within 2.8 s of each other
    assert notes_on[-1][0] - t0 < 2.8

    # Notes come on the grid: onsets after the first are whole grid steps later
    errors = [abs((t - t0) / STEP - round((t - t0) / STEP)) * STEP for t, _ in notes_on]
    assert max(errors) < 0.015, errors
    print(f"\nlast note_off -> answer starts {(started - last_off) * 1000:.0f} ms, first note_on "
          f"{(t0 - last_off) * 1000:.0f} ms (pause {PAUSE * 1000:.0f} ms); {len(notes_on)} notes; "
          f"largest onset error vs the grid {max(errors) * 1000:.1f} ms")


def test_ctrl_c_during_an_answer_silences_it_and_exits_cleanly(start_jam):
    jam = start_jam("--bars", "4")
    last_off = jam.play_phrase()
    wait_for(lambda: any(m.type == "note_on" for _, m in jam.received), 10, "the answer", jam.check_alive)
    os.killpg(jam.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert jam.wait(10) == 0, jam.output()
    assert "stopped" in jam.output() and "Traceback" not in jam.output() and "Aborted" not in jam.output()
    answer_checks(jam.received, last_off)  # notes cut short, but all-notes-off came last
    assert not find_port(jam.ports.outputs(), jam.jam_in)  # jam's ports are gone
