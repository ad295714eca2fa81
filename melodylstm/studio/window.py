"""The studio's window and its event loop: musical typing and a MIDI keyboard, the controls, files
(drop, save, autosave), and `run_studio` (the `studio` command). The piece is the Session's,
answers are the Answerer's, sound is the Audio's and drawing the Canvas's."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

from ..config import CONTINUE_TEMPERATURE
from ..midi import MidiError
from ..options import one_line
from ..theory import PITCH_CLASS_NAMES, pitch_name
from .answers import Answerer, SamplerProcess, SamplerThread, available_styles, check_controls
from .audio import VELOCITIES, open_audio
from .session import Session, load_phrase, render_in_child
from .view import Canvas

WHITE_KEYS = "a s d f g h j k l ; '".split()  # C D E F G A B C D E F: a DAW's "musical typing"
WHITE_OFFSETS = [0, 2, 4, 5, 7, 9, 11, 12, 14, 16, 17]
BLACK_KEYS = "w e t y u o p".split()
BLACK_OFFSETS = [1, 3, 6, 8, 10, 13, 15]
METRES = [(4, 4), (3, 4), (2, 4), (6, 8), (5, 4), (7, 8)]
KEY_CHOICES = [None, "auto"] + PITCH_CLASS_NAMES + [f"{n}:minor" for n in PITCH_CLASS_NAMES]
FPS = 30
WAIT_MS = 8  # longest sleep between looks at the stream, the sampler and the MIDI port


def _musical_keys(pygame) -> tuple[dict, dict]:
    """Scancodes (physical positions, so any keyboard layout plays alike) and, for events that
    carry none, key codes -> semitones above the octave's C."""
    by_name = dict(zip(WHITE_KEYS, WHITE_OFFSETS)) | dict(zip(BLACK_KEYS, BLACK_OFFSETS))
    scan_names = {";": "SEMICOLON", "'": "APOSTROPHE"}
    scancodes = {getattr(pygame, "KSCAN_" + scan_names.get(k, k.upper())): v for k, v in by_name.items()}
    keycodes = {pygame.key.key_code(k): v for k, v in by_name.items()}
    return scancodes, keycodes


class Studio:
    """The window and its event loop around a Session, an Audio and a Generator."""

    on_frame = None  # tests and benchmarks: called with the app after every frame drawn

    def __init__(self, session: Session, generator, audio, folder, bars=2, temperature=CONTINUE_TEMPERATURE,
                 key=None, style=None, pause=None, seed=None, inport=None, size=(1100, 560), synth="auto",
                 soundfont=None, metronome=True, gen_options=None, log=None, sampler=None):
        self.session, self.gen, self.audio, self.folder = session, generator, audio, Path(folder)
        self.sampler = sampler or SamplerThread(generator)
        self.inport, self.size = inport, size
        self.synth_kind = audio.name if audio.name != "none" else synth
        self.soundfont = soundfont
        self.audio.metronome, self.audio.tempo_map = metronome, session.tempo_map
        self.log = log if log is not None else (lambda m: print(f"studio: {m}", file=sys.stderr, flush=True))
        self.octave, self.velocity = 60, 96  # the A key plays C4
        self.down = {}  # key -> pitch sounding for it
        self.saving = None  # a save thread
        self.message, self.message_error = "", False
        self.messages = []  # everything said, in order
        self.quit_reason = None
        self.help = False
        self.next_frame = 0.0
        self.events = []  # (monotonic, stream s, what, detail): what the window did, for benchmarks
        self.screen = None
        self.answerer = Answerer(session, generator, audio, self.sampler, self.say, self.events, bars=bars,
                                 temperature=temperature, key=key, style=style, pause=pause, seed=seed,
                                 gen_options=gen_options)
        self.canvas = Canvas(self)

    @property
    def job(self):
        """The answer being sampled or placed (None between answers)."""
        return self.answerer.job

    @property
    def answers(self) -> int:
        """Answers placed in the session so far (less those undone or withdrawn)."""
        return self.answerer.count

    @property
    def view(self):
        """What the last frame showed: now, t0, t1, low, high, size of the roll."""
        return self.canvas.shown

    # ------------------------------------------------------------ messages

    def say(self, text: str, error: bool = False, quiet: bool = False) -> None:
        """Status line (and stderr unless quiet): the only way anything reaches the user."""
        self.message, self.message_error = text, error
        self.messages.append(text)
        if not quiet:
            self.log(text)

    def safe(self, fn, *args):
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - the session goes on, whatever one action did
            self.say(f"error: {one_line(exc)}", error=True)
            return None

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        """Until the window closes, Ctrl+Q, Ctrl-C or SIGTERM; unsaved work is autosaved. Always 0."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # a worker thread (keys, save) must not hold the GIL 5 ms while a key waits
        try:
            self._open_window()
            while self.quit_reason is None:
                self.step()
        except KeyboardInterrupt:
            self.quit_reason = "Ctrl-C"
        except Exception as exc:  # noqa: BLE001 - never a traceback; the work is still saved below
            self.say(f"error: {one_line(exc)}", error=True)
            self.quit_reason = "error"
        finally:
            sys.setswitchinterval(switch)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._close()
        return 0

    def _on_signal(self, signum, frame):
        self.quit_reason = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"

    def _open_window(self):
        from ..pianoroll import _pygame, warn_if_offscreen

        pygame = self.pygame = _pygame()
        warn_if_offscreen()
        pygame.display.init()
        self.screen = pygame.display.set_mode(self.size, pygame.RESIZABLE)
        pygame.display.set_caption("melodylstm studio")
        pygame.key.stop_text_input()  # raw keys: no input method between a key and its note
        self.scancodes, self.keycodes = _musical_keys(pygame)
        self._prepare_keys()

    def step(self) -> None:
        for event in self.pygame.event.get():
            self.safe(self.handle, event)
        self.work()
        # Sleep until an event comes (a key is handled at once) or it is time to look at the
        # stream, the sampler and the MIDI port again.
        event = self.pygame.event.wait(WAIT_MS)
        if event.type != self.pygame.NOEVENT:
            self.safe(self.handle, event)

    def work(self) -> None:
        if self.inport is not None:
            self.safe(self.poll_midi)
        self.safe(self.sampler.poll)
        self.safe(self.answerer.update)
        self.safe(self.audio.feed)
        now = time.monotonic()
        if now >= self.next_frame:
            self.next_frame = now + 1.0 / FPS
            self.safe(self.canvas.draw)
            if self.on_frame is not None:
                self.on_frame()

    def _close(self):
        self.answerer.cancel()
        self.safe(self.sampler.close)
        if self.saving is not None:
            self.saving.join(timeout=60)
        for pitch in list(self.down.values()):
            self.audio.key_off(pitch)
        now = self.audio.now()
        for pitch in list(self.session.held):
            self.session.note_off(pitch, now)
        self.safe(self.audio.close)
        try:
            self.autosave()
        except Exception as exc:  # noqa: BLE001 - said, never a traceback
            self.log(f"cannot autosave: {one_line(exc)}")
        try:
            self.pygame.display.quit()
        except Exception:  # noqa: BLE001 - closing anyway
            pass

    def autosave(self) -> str | None:
        """Unsaved work goes to autosave.mid in the session folder (a temp folder if that fails)."""
        if not self.session.dirty:
            self.log(f"{self.quit_reason or 'closed'}: nothing unsaved")
            return None
        import tempfile

        from ..fileio import atomic_write_bytes

        version, data = self.session.version, self.session.midi_bytes()
        for folder in (self.folder, None):
            try:
                folder = folder or Path(tempfile.mkdtemp(prefix="melodylstm-autosave-"))
                path = folder / "autosave.mid"
                folder.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data)
            except OSError as exc:
                self.log(f"cannot autosave into {folder} ({exc.strerror or exc})")
                continue
            self.session.mark_saved(version)
            self.log(f"{self.quit_reason or 'closed'}: autosaved {self.session.note_count()} notes to {path}")
            return str(path)
        return None

    # ------------------------------------------------------------ events

    def handle(self, event) -> None:
        pygame = self.pygame
        if event.type == pygame.QUIT:
            self.quit_reason = "window closed"
        elif event.type == pygame.KEYDOWN:
            self.key_down(event)
        elif event.type == pygame.KEYUP:
            self.key_up(event)
        elif event.type == pygame.DROPFILE:
            self.load(event.file)
        elif event.type == pygame.MOUSEBUTTONDOWN and event.button in (1, 3):
            self.click(event.pos, 1 if event.button == 1 else -1)
        elif event.type == pygame.MOUSEWHEEL:
            self.wheel(event)
        elif event.type in (pygame.VIDEORESIZE, pygame.WINDOWRESIZED):
            self.canvas.redraw()
        elif event.type == pygame.WINDOWFOCUSLOST:
            for code in list(self.down):  # no key-up will come for keys held now
                self.release(code)

    def musical_offset(self, event):
        if event.mod & (self.pygame.KMOD_CTRL | self.pygame.KMOD_ALT | self.pygame.KMOD_META):
            return None
        scancode = getattr(event, "scancode", 0)
        if scancode:
            return self.scancodes.get(scancode)
        return self.keycodes.get(event.key)

    def key_down(self, event) -> None:
        offset = self.musical_offset(event)
        code = getattr(event, "scancode", 0) or event.key
        if offset is not None:
            if code not in self.down:
                self.press(code, self.octave + offset, self.velocity)
            return
        self.command(event)

    def key_up(self, event) -> None:
        self.release(getattr(event, "scancode", 0) or event.key)

    def press(self, code, pitch: int, velocity: int) -> None:
        pitch = max(0, min(127, pitch))
        at = self.audio.now()  # the moment of the press, whatever starting the sound costs
        self.audio.key_on(pitch, self.sound_velocity(velocity))
        self.session.note_on(pitch, velocity, at)
        self.down[code] = pitch
        self.canvas.follow = True
        self.events.append((time.monotonic(), self.session.last_note_on, "key", pitch))

    def release(self, code) -> None:
        pitch = self.down.pop(code, None)
        if pitch is not None:
            self.audio.key_off(pitch)
            self.session.note_off(pitch, self.audio.now())

    @staticmethod
    def sound_velocity(velocity: int) -> int:
        return min(VELOCITIES, key=lambda v: abs(v - velocity))  # pre-rendered layers

    def poll_midi(self) -> None:
        for msg in self.inport.iter_pending():
            if msg.type == "note_on" and msg.velocity > 0:
                self.release(("midi", msg.note))
                self.press(("midi", msg.note), msg.note, msg.velocity)
            elif msg.type in ("note_off", "note_on"):
                self.release(("midi", msg.note))

    def command(self, event) -> None:
        pygame, key, canvas = self.pygame, event.key, self.canvas
        ctrl = event.mod & (pygame.KMOD_CTRL | pygame.KMOD_META)
        if ctrl and key == pygame.K_s or key == pygame.K_F2:
            self.save()
        elif ctrl and key == pygame.K_q:
            self.quit_reason = "Ctrl+Q"
        elif ctrl and key == pygame.K_z or key == pygame.K_BACKSPACE:
            self.undo()
        elif key in (pygame.K_RETURN, pygame.K_KP_ENTER):
            self.answerer.now()
        elif key == pygame.K_b:
            self.answerer.again()
        elif key in (pygame.K_F1, pygame.K_TAB):
            self.help = not self.help
        elif key == pygame.K_ESCAPE:
            self.escape()
        elif key in (pygame.K_LEFT, pygame.K_RIGHT):
            canvas.scroll((1 if key == pygame.K_RIGHT else -1) * self.session.tempo_map.bar_seconds())
        elif key in (pygame.K_PAGEUP, pygame.K_PAGEDOWN):
            canvas.scroll((1 if key == pygame.K_PAGEDOWN else -1) * canvas.span() * 0.8)
        elif key == pygame.K_HOME:
            canvas.home()
        elif key == pygame.K_END:
            canvas.follow = True
        else:
            for name, (up, down) in self.control_keys().items():
                if key in (up, down):
                    self.adjust(name, 1 if key == up else -1)

    def control_keys(self) -> dict:
        p = self.pygame
        return {"octave": (p.K_x, p.K_z), "velocity": (p.K_v, p.K_c), "temperature": (p.K_UP, p.K_DOWN),
                "bars": (p.K_RIGHTBRACKET, p.K_LEFTBRACKET), "tempo": (p.K_EQUALS, p.K_MINUS),
                "metre": (p.K_n, None), "metronome": (p.K_m, None), "key": (p.K_PERIOD, p.K_COMMA),
                "style": (p.K_SLASH, None)}

    def wheel(self, event) -> None:
        name = self.canvas.control_at(self.pygame.mouse.get_pos())
        if name is not None:
            self.adjust(name, 1 if event.y > 0 else -1)
        else:
            self.canvas.scroll(-(event.y or -event.x) * self.session.tempo_map.bar_seconds())

    def click(self, pos, direction: int) -> None:
        name = self.canvas.control_at(pos)
        if name is not None and name not in ("synth", "folder"):
            self.adjust(name, direction)

    # ------------------------------------------------------------ controls

    def adjust(self, name: str, direction: int) -> None:
        """One control one notch up (+1) or down (-1): keys and clicks on the status line."""
        session, answers = self.session, self.answerer
        if name == "octave":
            self.octave = max(12, min(108, self.octave + 12 * direction))
            self._prepare_keys()
        elif name == "velocity":
            i = VELOCITIES.index(self.sound_velocity(self.velocity))
            self.velocity = VELOCITIES[max(0, min(len(VELOCITIES) - 1, i + direction))]
            self._prepare_keys()
        elif name == "temperature":
            answers.temperature = round(max(0.0, min(2.0, answers.temperature + 0.1 * direction)), 2)
        elif name == "bars":
            answers.bars = max(1, min(32, answers.bars + direction))
        elif name == "tempo":
            session.retime(self.audio.now(), bpm=max(30.0, min(300.0, round(session.tempo_map.bpm) + 5 * direction)))
        elif name == "metre":
            i = METRES.index(session.tempo_map.metre) if session.tempo_map.metre in METRES else -1
            session.retime(self.audio.now(), metre=METRES[(i + direction) % len(METRES)])
        elif name == "metronome":
            self.audio.metronome = not self.audio.metronome
        elif name == "key":
            i = KEY_CHOICES.index(answers.key) if answers.key in KEY_CHOICES else 0
            answers.key = KEY_CHOICES[(i + direction) % len(KEY_CHOICES)]
        elif name == "style":
            styles = available_styles(self.gen)
            if not styles:
                self.say("this model has no style control", error=True)
                return
            choices = [None] + styles
            i = choices.index(answers.style) if answers.style in choices else 0
            answers.style = choices[(i + direction) % len(choices)]
        self.say(f"{name}: {self.control_text(name)}", quiet=True)
        self.canvas.redraw()

    def control_text(self, name: str) -> str:
        tempo, answers = self.session.tempo_map, self.answerer
        texts = {
            "synth": f"synth: {self.audio.name}", "tempo": f"{tempo.bpm:.0f} bpm",
            "metre": "%d/%d" % tempo.metre, "metronome": "click on" if self.audio.metronome else "click off",
            "temperature": f"temp {answers.temperature:.1f}",
            "bars": f"{answers.bars} bar{'s' if answers.bars != 1 else ''}",
            "key": f"key {answers.key or 'off'}", "style": f"style {answers.style or '-'}",
            "octave": f"A = {pitch_name(self.octave)}", "velocity": f"vel {self.velocity}",
        }
        return texts[name]

    def _prepare_keys(self) -> None:
        """The keys' notes rendered ahead: the keyboard's range first, then an octave either side."""
        if getattr(self.audio, "keys", None) is not None:
            pitches = list(range(self.octave, self.octave + 18)) + list(range(self.octave + 18, self.octave + 30)) + \
                list(range(self.octave - 1, self.octave - 13, -1))
            self.audio.keys.prepare(pitches, self.sound_velocity(self.velocity))

    # ------------------------------------------------------------ undo, stop

    def undo(self) -> None:
        if self.answerer.cancel_unplaced():
            self.say("answer cancelled", quiet=True)
            return
        for code in list(self.down):
            self.release(code)
        part = self.session.undo()
        if part is None:
            self.say("nothing to undo", error=True)
            return
        self.answerer.undone(part)  # an undone answer does not come straight back
        self.say(f"undid the last {part.kind} ({len(part.notes)} notes)", quiet=True)

    def escape(self) -> None:
        if self.help:
            self.help = False
            return
        self.answerer.stop()
        self.say("stopped", quiet=True)

    # ------------------------------------------------------------ files

    def load(self, path, song=None) -> None:
        """A MIDI file as a new phrase, played and continued (`song`: the file already read)."""
        name = os.path.basename(str(path))
        at = max(self.audio.horizon() + 0.05, self.session.end())
        try:
            part = self.session.load(path if song is None else song, at, name=name)
        except (MidiError, OSError, ValueError) as exc:
            self.say(f"cannot load {name}: {one_line(exc)}", error=True)
            return
        self.answerer.cancel()
        self.audio.schedule(part.notes, part)
        self.canvas.follow = True
        self.say(f"loaded {name} ({len(part.notes)} notes); the model continues it")
        self.answerer.start(target=None, in_place=True, mode="file")

    def save(self) -> None:
        if self.saving is not None and self.saving.is_alive():
            self.say("still saving", error=True)
            return
        if self.session.note_count() == 0:
            self.say("nothing to save yet", error=True)
            return
        snapshot = self.session.snapshot()
        self.say(f"saving into {self.folder} ...", quiet=True)

        def work():
            try:
                midi = snapshot.save(self.folder, wav=False)[0]
                self.session.mark_saved(snapshot.version)
                wav = render_in_child(midi, self.synth_kind, self.soundfont)
                self.say(f"saved {os.path.basename(midi)} and {os.path.basename(wav)} in {self.folder}")
            except Exception as exc:  # noqa: BLE001 - a message; the session goes on
                self.say(f"cannot save into {self.folder}: {one_line(exc)}", error=True)

        self.saving = threading.Thread(target=work, daemon=True, name="melodylstm-save")
        self.saving.start()


# ---------------------------------------------------------------- entry point

def default_folder() -> Path:
    return Path.cwd() / time.strftime("studio-%Y%m%d-%H%M%S")


def run_studio(midi_file=None, checkpoint=None, out=None, in_port=None, bars=2, temperature=CONTINUE_TEMPERATURE,
               tempo=120.0, metre=(4, 4), key=None, style=None, pause=None, metronome=True, seed=None,
               synth="auto", soundfont=None, size=(1100, 560), gen_options=None) -> int:
    """The `studio` command: load the model, check the options and the file against it (one-line
    errors, before anything opens), open sound and window, run until closed."""
    from ..generate import Generator
    from ..playback import PlaybackError, open_midi_input

    generator = Generator.load(checkpoint)  # here for its grid and controls; it samples in a process
    messages = check_controls(generator, key, style)  # ValueError for what every answer would refuse
    phrase = None
    if midi_file:
        try:
            phrase = load_phrase(midi_file)
        except (MidiError, OSError) as exc:
            raise MidiError(f"cannot load {os.path.basename(str(midi_file))}: {one_line(exc)}") from None
    session = Session(tempo, metre, generator.tok.config.resolution)
    try:
        sampler = SamplerProcess(checkpoint)
    except (OSError, RuntimeError) as exc:
        messages.append(f"answers are sampled in a thread ({one_line(exc)})")
        sampler = SamplerThread(generator)
    audio = open_audio(synth, soundfont, messages)
    inport = None
    if in_port:
        try:
            inport = open_midi_input(in_port)
        except PlaybackError as exc:
            messages.append(f"{one_line(exc)}: the computer keyboard still plays")
    app = Studio(session, generator, audio, out or default_folder(), bars=bars, temperature=temperature, key=key,
                 style=style, pause=pause, seed=seed, inport=inport, size=size, synth=synth, soundfont=soundfont,
                 metronome=metronome, gen_options=gen_options, sampler=sampler)
    for message in messages:
        app.say(message, error=True)
    app.log(f"synth: {audio.name}; session folder {app.folder}; F1 lists the keys")
    if phrase is not None:
        app.load(midi_file, phrase)
    try:
        return app.run()
    finally:
        if inport is not None:
            inport.close()
