"""Playback: one engine for files and for music still being generated.

A `Timeline` holds timed note events (in seconds); anything may add to it from another thread
while it plays. `BlockRenderer` turns it into PCM with a synth, placing every event on its exact
sample. Outputs: pygame's mixer (short blocks queued on one `pygame.mixer.Channel`), a WAV
file, or a MIDI port (mido + python-rtmidi) driven by a monotonic-clock scheduler.
"""
from __future__ import annotations

import heapq
import itertools
import os
import sys
import tempfile
import threading
import time
import wave

import numpy as np

from .midi import DRUMS, Song
from .options import one_line
from .synth import DRUM_CHANNEL, SAMPLE_RATE, make_synth

BLOCK = 1024  # frames per device buffer and rendering step: 23 ms at 44.1 kHz
QUEUED_BLOCK = 2 * BLOCK  # frames per block queued on the mixer channel; two in flight = 93 ms of
# cushion, enough for a busy 2-core machine (one-block cushions underran there under load)
TAIL_SECONDS = 0.6  # let the last notes ring out


class PlaybackError(RuntimeError):
    pass


class NoAudioDevice(PlaybackError):
    """The mixer cannot open an audio device (headless machine, no sound card)."""

    def hint(self, midi_path) -> str:
        """The one line to show, naming the MIDI file that exists and how to render it."""
        wav = os.path.splitext(str(midi_path))[0] + ".wav"
        return f"{one_line(self)}; nothing played. Render {midi_path} instead: melodylstm render {midi_path} -o {wav}"


SHOW_BACKEND_NOISE = False  # the CLI sets it with -v: show what the audio/MIDI libraries print


class quiet_stderr:
    """Capture file descriptor 2 while audio or MIDI devices are probed: without a sound card
    libasound prints eight `ALSA lib ...` lines before every error. pygame bundles its own copy
    of libasound, so setting the system library's error handler would not reach it; only the fd
    does. What was captured is shown when SHOW_BACKEND_NOISE is set (-v)."""

    def __enter__(self):
        self.saved = self.capture = None
        try:
            sys.stderr.flush()
            self.capture = tempfile.TemporaryFile()
            self.saved = os.dup(2)
            os.dup2(self.capture.fileno(), 2)
        except (OSError, ValueError):  # no fd 2 (or no temp dir): leave stderr as it is
            if self.capture is not None:
                self.capture.close()
            self.saved = self.capture = None
        return self

    def __exit__(self, *exc):
        if self.saved is None:
            return False
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.capture.seek(0)
        noise = self.capture.read().decode("utf-8", "replace")
        self.capture.close()
        if SHOW_BACKEND_NOISE and noise:
            sys.stderr.write(noise)
            sys.stderr.flush()
        return False


class Timeline:
    """Thread-safe queue of (seconds, kind, channel, pitch, velocity) events."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()
        self.counter = itertools.count()
        self.closed = False  # no more notes will come
        self.channels = {}  # program -> MIDI channel
        self.end = 0.0
        self.notes = []  # (start, end, pitch, velocity, program, is_new) for the piano roll
        self.tempo_map = None  # the piece's, for the piano roll's bar lines

    def channel_for(self, program: int) -> int:
        if program == DRUMS:
            return DRUM_CHANNEL
        if program not in self.channels:
            free = [c for c in range(16) if c != DRUM_CHANNEL and c not in self.channels.values()]
            self.channels[program] = free[0] if free else len(self.channels) % 15
            self._push(0.0, "program", self.channels[program], program, 0)
        return self.channels[program]

    def _push(self, when, kind, channel, pitch, velocity):
        heapq.heappush(self.events, (when, 0 if kind == "program" else 1 if kind == "off" else 2,
                                     next(self.counter), kind, channel, pitch, velocity))

    def add_note(self, start: float, end: float, pitch: int, velocity: int, program: int, is_new: bool = True,
                 shown: bool = True):
        """`shown=False`: sound only (the studio's metronome), not a note of the piece."""
        with self.lock:
            channel = self.channel_for(program)
            self._push(start, "on", channel, pitch, velocity)
            self._push(max(end, start + 0.01), "off", channel, pitch, 0)
            self.end = max(self.end, end)
            if shown:
                self.notes.append((start, end, pitch, velocity, program, is_new))

    def add_song(self, song: Song, is_new: bool = False, offset_steps: int = 0):
        if self.tempo_map is None and not offset_steps:
            self.tempo_map = song.tempo_map
        starts = song.seconds(song.notes[:, 0] + offset_steps) if len(song.notes) else []
        ends = song.seconds(song.notes[:, 0] + song.notes[:, 1] + offset_steps) if len(song.notes) else []
        for (onset, dur, pitch, vel, prog), s, e in zip(song.notes.tolist(), np.atleast_1d(starts), np.atleast_1d(ends)):
            self.add_note(float(s), float(e), pitch, vel, prog, is_new)

    def pop_until(self, when: float):
        out = []
        with self.lock:
            while self.events and self.events[0][0] < when:
                out.append(heapq.heappop(self.events))
        return out

    def close(self):
        self.closed = True

    def finished(self, now: float) -> bool:
        with self.lock:
            return self.closed and not self.events and now >= self.end + TAIL_SECONDS


class BlockRenderer:
    """Renders the timeline block by block; an event inside a block splits it at its sample."""

    def __init__(self, timeline: Timeline, synth, sample_rate=SAMPLE_RATE, preroll: float = 0.0):
        self.timeline, self.synth, self.sr = timeline, synth, sample_rate
        self.frame = -round(preroll * sample_rate)  # the playback clock; starts early by `preroll` s of silence

    @property
    def now(self) -> float:
        return self.frame / self.sr

    def apply(self, event):
        _, _, _, kind, channel, pitch, velocity = event
        if kind == "on":
            self.synth.note_on(channel, pitch, velocity)
        elif kind == "off":
            self.synth.note_off(channel, pitch)
        else:
            self.synth.program(channel, pitch)

    def render(self, frames: int = BLOCK) -> np.ndarray:
        end_time = (self.frame + frames) / self.sr
        out, done = [], 0
        for event in self.timeline.pop_until(end_time):
            at = min(frames, max(done, int(round(event[0] * self.sr)) - self.frame))
            if at > done:
                out.append(self.synth.render(at - done))
                done = at
            self.apply(event)
        if frames > done:
            out.append(self.synth.render(frames - done))
        self.frame += frames
        return np.concatenate(out) if len(out) > 1 else out[0]


def to_int16(block: np.ndarray) -> bytes:
    return (np.clip(block, -1.0, 1.0) * 32767).astype("<i2").tobytes()


# ---------------------------------------------------------------- outputs

def init_pygame_audio(buffer: int = BLOCK):
    """pygame with its mixer started; `buffer`: frames per device buffer (the studio uses a
    smaller one: a key's sound starts at the next buffer)."""
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")  # keep Ctrl-C and SIGTERM ours
    try:
        import pygame
    except ImportError as exc:
        raise PlaybackError(f"pygame is not installed ({exc})") from None
    try:
        with quiet_stderr():
            pygame.mixer.pre_init(SAMPLE_RATE, -16, 2, buffer)
            pygame.mixer.init()
    except (pygame.error, AttributeError, NotImplementedError) as exc:
        raise NoAudioDevice(f"no audio device ({exc})") from None
    return pygame


STREAM_CHANNELS = 4  # mixer channels reserved for the stream: it moves to the next if one gets stuck
STUCK_SECONDS = 0.06


class PygameOutput:
    """Keeps one mixer channel fed: while a block plays, the next waits in the channel's queue."""

    def __init__(self, buffer: int = BLOCK):
        self.pygame = init_pygame_audio(buffer)
        mixer = self.pygame.mixer
        mixer.set_num_channels(max(mixer.get_num_channels(), STREAM_CHANNELS))
        mixer.set_reserved(STREAM_CHANNELS)  # Sound.play() never takes them
        self.spares = itertools.cycle(range(STREAM_CHANNELS))
        self.channel = mixer.Channel(next(self.spares))
        self.stuck_since = None
        self.restarts = 0  # stuck channels left behind

    def feed(self, renderer) -> int:
        """Queue blocks from `renderer` (anything with render(frames)) until one waits; returns
        how many were queued."""
        # Only queue(), never play(): an idle channel plays a queued sound at once, while play()
        # drops the sound already queued if the mixer is between two blocks (a lost block, heard
        # as a skip; measured under load by benchmarks/playback.py).
        self._unstick()
        queued = 0
        while self.channel.get_queue() is None:
            self.channel.queue(self.pygame.mixer.Sound(buffer=to_int16(renderer.render(QUEUED_BLOCK))))
            queued += 1
        return queued

    def _unstick(self) -> None:
        """pygame race: a queue() that lands just as the playing block ends can leave the channel
        idle with the block still queued, and nothing will ever play it (seen on a 2-core machine
        under heavy load: the stream fell silent for good). Play that block on the next channel."""
        if self.channel.get_busy() or self.channel.get_queue() is None:
            self.stuck_since = None
            return
        now = time.monotonic()
        if self.stuck_since is None:
            self.stuck_since = now  # the mixer may just be late to start the queued block
        elif now - self.stuck_since >= STUCK_SECONDS:
            block = self.channel.get_queue()
            self.channel = self.pygame.mixer.Channel(next(self.spares))
            self.channel.play(block)
            self.stuck_since = None
            self.restarts += 1

    def close(self):
        self.channel.stop()
        self.pygame.mixer.quit()


def play_to_device(timeline: Timeline, synth, window=None, output=None, preroll: float = 0.0) -> None:
    """Play until the timeline is closed and rung out (or Esc in the window). `preroll` seconds
    of silence come first: the head start a live sampler needs so no note arrives late."""
    output = output or PygameOutput()
    renderer = BlockRenderer(timeline, synth, preroll=preroll)
    paused = False
    try:
        while not timeline.finished(renderer.now):
            if window is not None:
                paused, quit_ = window.handle_events(paused)
                if quit_:
                    break
                window.draw(timeline, renderer.now - (QUEUED_BLOCK * 2 + BLOCK) / SAMPLE_RATE)  # what is heard now
            if not paused:
                output.feed(renderer)
            time.sleep(0.004)
        while output.channel.get_busy() and window is None:
            time.sleep(0.005)
    finally:
        synth.all_off()  # no stuck notes, also on Ctrl-C
        output.close()


PEAK_DBFS = -1.0  # rendered files peak here, whatever the synth (their own levels differ by 12 dB)


def parse_peak(text: str) -> float | None:
    """--peak: a level in dBFS, or 'off' (None: the synth's own level)."""
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -60 <= value <= 0:  # also refuses nan
        raise ValueError(f"--peak must be a level from -60 to 0 dBFS, or off (not {text!r})")
    return value


def render_wav(timeline: Timeline, synth, path, max_seconds: float = 3600.0, peak_dbfs: float | None = PEAK_DBFS) -> float:
    """Render offline to a 16-bit stereo WAV (atomically), its loudest sample at `peak_dbfs`
    (None: the synth's own level). Returns the length in seconds.

    Two passes through a float32 scratch file beside the output: the peak is known only at the
    end, and holding an hour of audio in memory would take 1.3 GB."""
    from .fileio import atomic_path

    timeline.close()
    renderer = BlockRenderer(timeline, synth)
    with atomic_path(path) as tmp:
        with tempfile.TemporaryFile(dir=os.path.dirname(tmp)) as scratch:
            peak = 0.0
            while not timeline.finished(renderer.now) and renderer.now < max_seconds:
                block = np.asarray(renderer.render(BLOCK * 8), dtype=np.float32)
                peak = max(peak, float(np.abs(block).max(initial=0.0)))
                scratch.write(block.tobytes())
            gain = 10 ** (peak_dbfs / 20) / peak if peak_dbfs is not None and peak > 0 else 1.0
            scratch.seek(0)
            with wave.open(tmp, "wb") as wav:
                wav.setnchannels(2)
                wav.setsampwidth(2)
                wav.setframerate(SAMPLE_RATE)
                while chunk := scratch.read(BLOCK * 64 * 2 * 4):
                    wav.writeframes(to_int16(np.frombuffer(chunk, dtype=np.float32) * gain))
    return renderer.now


# ---------------------------------------------------------------- MIDI ports

def open_midi_output(name: str):
    return _open_midi_port("open_output", name)


def open_midi_input(name: str):
    return _open_midi_port("open_input", name)


def _open_midi_port(opener: str, name: str):
    """A named port, or a new virtual one for `virtual:NAME` (Linux/macOS)."""
    try:
        import mido

        with quiet_stderr():
            if name.startswith("virtual:"):
                return getattr(mido, opener)(name[len("virtual:"):], virtual=True)
            return getattr(mido, opener)(name)
    except ImportError as exc:
        raise PlaybackError(f"MIDI ports need python-rtmidi: pip install python-rtmidi ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - rtmidi's errors (e.g. no ALSA sequencer) derive from Exception only
        raise PlaybackError(f"cannot open MIDI port {name!r} ({one_line(exc)}); `melodylstm ports` lists them") from None


def list_ports() -> dict:
    try:
        import mido

        with quiet_stderr():
            return {"outputs": mido.get_output_names(), "inputs": mido.get_input_names()}
    except ImportError as exc:
        raise PlaybackError(f"MIDI ports need python-rtmidi: pip install python-rtmidi ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - rtmidi.SystemError when the MIDI system cannot start
        raise PlaybackError(f"no MIDI system available here ({one_line(exc)}); on Linux the ALSA sequencer "
                            f"(/dev/snd/seq) or JACK (MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK) is needed") from None


def play_to_port(timeline: Timeline, port, clock=time.monotonic, sleep=time.sleep, preroll: float = 0.0,
                 close: bool = True) -> None:
    """Send events at their times, measured on a monotonic clock from the start (a late event
    is sent at once; the schedule never drifts with the time spent sending). `close=False`
    leaves the port open for more (jam plays every answer through one port)."""
    import mido

    start = clock() + preroll
    try:
        while True:
            now = clock() - start
            for event in timeline.pop_until(now + 0.001):
                _, _, _, kind, channel, pitch, velocity = event
                if kind == "on":
                    port.send(mido.Message("note_on", channel=channel, note=pitch, velocity=velocity))
                elif kind == "off":
                    port.send(mido.Message("note_off", channel=channel, note=pitch))
                else:
                    port.send(mido.Message("program_change", channel=channel, program=pitch))
            if timeline.finished(now):
                break
            with timeline.lock:
                nxt = timeline.events[0][0] if timeline.events else now + 0.01
            sleep(min(0.01, max(0.0, nxt - (clock() - start))))
    finally:
        for channel in range(16):  # all notes off, whatever happened
            port.send(mido.Message("control_change", channel=channel, control=123, value=0))
        if close:
            port.close()


# ---------------------------------------------------------------- live generation

class LivePlayer:
    """Receives notes from the sampler (another thread) and schedules them for playback;
    `like` gives the tempo map that turns grid steps into seconds."""

    def __init__(self, like: Song):
        self.like, self.timeline = like, Timeline()
        self.timeline.tempo_map = like.tempo_map

    def add_primer(self, song: Song):
        self.timeline.add_song(song, is_new=False)

    def add_note(self, note):
        onset, dur, pitch, vel, prog = note
        start, end = self.like.seconds(np.array([onset, onset + dur], dtype=np.float64))
        self.timeline.add_note(float(start), float(end), pitch, vel, prog, is_new=True)

    def close(self):
        self.timeline.close()


# ---------------------------------------------------------------- the commands' playback

def open_playback(soundfont=None, synth="auto", midi_out=None, window=False, verbose=False, say=None):
    """Open the output (port, or synth + audio device + window) and return play(timeline, preroll).
    Opened before a model loads, so sound can start as soon as the first note exists."""
    global SHOW_BACKEND_NOISE
    SHOW_BACKEND_NOISE = bool(verbose)  # -v: show what libasound/rtmidi print

    if midi_out:
        port = open_midi_output(midi_out)
        return lambda timeline, preroll=0.0: play_to_port(timeline, port, preroll=preroll)
    engine = make_synth(synth, soundfont)
    output = PygameOutput()
    view = None
    if window:
        from .pianoroll import Window

        view = Window()

    def play(timeline, preroll=0.0):
        say(f"playing (synth: {engine.name}; Ctrl-C stops)")
        play_to_device(timeline, engine, view, output=output, preroll=preroll)

    return play


def open_live_playback(soundfont, synth, midi_out, play, window, verbose=False, say=None):
    """(play, None) for generate/continue --play; (None, error) without an audio device: the
    music is then generated and written all the same, and the error is reported after it."""
    if not (play or window):
        return None, None
    try:
        return open_playback(soundfont, synth, midi_out, window, verbose, say), None
    except NoAudioDevice as exc:
        return None, exc


def run_playback(timeline, soundfont=None, synth="auto", midi_out=None, window=False, wav=None, peak=-1.0,
                 verbose=False, say=None):
    """Play (or render) a timeline; returns when it has played out."""
    if wav:
        engine = make_synth(synth, soundfont)
        seconds = render_wav(timeline, engine, wav, peak_dbfs=peak)
        level = "synth level" if peak is None else f"peak {peak:g} dBFS"
        say(f"wrote {wav} ({seconds:.1f} s, synth: {engine.name}, {level})")
        return None
    return open_playback(soundfont, synth, midi_out, window, verbose, say)(timeline)


LIVE_PREROLL = 0.15  # seconds


def play_while_generating(play, generate_fn, like, primer=None, on_done=None, say=None):
    """Sample in a worker thread while the main thread plays: notes sound as they are made.
    `on_done(result)` runs as soon as generation ends, so the output is written even if playback
    is cut short; Ctrl-C stops playback cleanly (says "stopped"), as it ends `jam`."""
    player = LivePlayer(like)
    if primer is not None:
        player.add_primer(primer)
    outcome = {}

    def work():
        from threadpoolctl import threadpool_limits

        try:
            # One BLAS thread: the audio thread needs a core, and a second BLAS thread spinning
            # against it made sampling 2-4x slower on a busy 2-core machine (benchmarks/playback.py).
            with threadpool_limits(1, user_api="blas"):
                outcome["result"] = generate_fn(player.add_note)
            player.close()
            if on_done is not None:
                on_done(outcome["result"])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc
        finally:
            player.close()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    stopped = False
    try:
        # From scratch the first notes are due at once: start the clock a little early so a busy
        # machine cannot make them late (measured by benchmarks/playback.py --load 2).
        play(player.timeline, preroll=0.0 if primer is not None else LIVE_PREROLL)
    except KeyboardInterrupt:
        stopped = True  # the worker still finishes and writes; a second Ctrl-C aborts that
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    if stopped and say is not None:
        say("stopped")
    return outcome["result"]
