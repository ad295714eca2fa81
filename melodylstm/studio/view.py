"""What the studio's window shows each frame: the piano roll (kept between frames; an answer's
new notes are drawn onto it), the keys held, the playhead, the status line and the help; and
which part of the piece is in view (following the playhead, or scrolled)."""
from __future__ import annotations

HELP = [
    ("A S D F G H J K L ; '", "white keys, C to F;  W E  T Y U  O P: black keys"),
    ("Z / X", "octave down / up"),
    ("C / V", "velocity down / up"),
    ("Enter", "answer now (else the model answers after a bar of silence)"),
    ("B", "another answer: re-sample the last one with a new seed"),
    ("Backspace", "undo the last answer or phrase"),
    ("Up / Down", "temperature up / down"),
    ("[ / ]", "answer length: fewer / more bars"),
    ("- / =", "tempo down / up"),
    ("N", "metre: 4/4 3/4 2/4 6/8 5/4 7/8"),
    ("M", "metronome on / off"),
    (", / .", "key: previous / next (off, auto, C ... B, minor keys)"),
    ("/", "style: next (models that have styles)"),
    ("Left / Right, wheel", "scroll;  Home: the start;  End: follow the playhead"),
    ("Ctrl+S or F2", "save session.mid and session.wav into the session folder"),
    ("drop a MIDI file", "load it as a phrase; the model continues it"),
    ("Esc", "stop the answer / close this help"),
    ("F1 or Tab", "this help"),
    ("Ctrl+Q or close", "quit (unsaved work is autosaved)"),
]
STATUS_H = 46
STATUS_CONTROLS = ("synth", "tempo", "metre", "metronome", "temperature", "bars", "key", "style", "octave", "velocity")
TEXT, DIM, ERROR, PANEL = (215, 215, 215), (140, 145, 155), (255, 110, 100), (16, 18, 22)


class Canvas:
    """Draws a Studio's window (`app`: its session, audio, answers, controls and messages)."""

    def __init__(self, app):
        self.app = app
        self.t0, self.follow = 0.0, True  # left edge of the view (seconds); page on with the playhead
        self.cache_key, self.cache, self.cache_parts = None, None, []
        self.status_rects = []  # (rect, control name) of the status line, for clicks and the wheel
        self.texts = {}
        self.shown = None  # what the last frame showed: now, t0, t1, low, high, size of the roll

    # ------------------------------------------------------------ what is in view

    def span(self) -> float:
        return max(8.0, 4 * self.app.session.tempo_map.bar_seconds())

    def scroll(self, seconds: float) -> None:
        self.follow = False
        self.t0 = max(0.0, self.t0 + seconds)

    def home(self) -> None:
        self.follow, self.t0 = False, 0.0

    def redraw(self) -> None:
        """Draw the roll afresh at the next frame (a control changed, the window was resized)."""
        self.cache_key = None

    def control_at(self, pos) -> str | None:
        """The control shown on the status line at a point of the window."""
        for rect, name in self.status_rects:
            if rect.collidepoint(pos):
                return name
        return None

    # ------------------------------------------------------------ drawing

    def bounds(self, held) -> tuple[int, int]:
        """Pitches shown: every note, the keys held and the keyboard's range, at least two octaves."""
        octave = self.app.octave
        pitches = [n[2] for n in held] + [octave, octave + 17] + list(self.app.session.pitch_range())
        low, high = min(pitches) - 2, max(pitches) + 2
        if high - low < 24:
            low -= (24 - (high - low)) // 2
            high = low + 24
        return max(0, low), min(127, high)

    def draw(self) -> None:
        from .. import pianoroll as roll

        app = self.app
        pygame = app.pygame
        screen = app.screen = pygame.display.get_surface()  # a new one after a resize
        width, height = screen.get_size()
        now = app.audio.now()
        span = self.span()
        if self.follow and not self.t0 <= now <= self.t0 + 0.85 * span:
            self.t0 = max(0.0, now - 0.15 * span)  # page on: the background is redrawn only then
        t0, t1 = self.t0, self.t0 + span
        area = screen.subsurface((0, 0, width, max(60, height - STATUS_H)))
        held = app.session.held_notes(now)
        low, high = self.bounds(held)
        self.draw_roll(area, low, high, t0, t1)
        area.blit(self.cache, (0, 0))
        self.shown = {"now": now, "t0": t0, "t1": t1, "low": low, "high": high, "size": area.get_size()}
        roll.draw_notes(area, held, low, high, t0, t1, colour_of=lambda n: roll.PRIMER)
        roll.draw_playhead(area, low, high, t0, t1, now)
        self.draw_status(screen, width, height)
        if app.help:
            self.draw_help(screen)
        pygame.display.flip()

    def draw_roll(self, area, low, high, t0, t1) -> None:
        """The piano roll without held keys and playhead, kept between frames: redrawn when the
        view pages on or something is removed; an answer's new notes are drawn onto it."""
        from .. import pianoroll as roll

        session = self.app.session
        tempo, parts = session.tempo_map, session.parts
        key = (t0, t1, area.get_size(), low, high, tuple(tempo.tempos), tuple(tempo.signatures))
        kept = key == self.cache_key and all(any(p is q for q in parts) and len(p.notes) >= n
                                             for p, n in self.cache_parts)
        if kept:
            done = {id(p): n for p, n in self.cache_parts}
            new = [(*n, p.kind == "answer") for p in parts for n in p.notes[done.get(id(p), 0):]]
        else:
            self.cache = self.app.pygame.Surface(area.get_size(), 0, area)  # the screen's format: a plain copy
            roll.draw_background(self.cache, low, high, t0, t1, tempo)
            new = session.roll_notes()
        if new:
            roll.draw_notes(self.cache, new, low, high, t0, t1, colour_of=self.colour_of)
        self.cache_key, self.cache_parts = key, [(p, len(p.notes)) for p in parts]

    @staticmethod
    def colour_of(note):
        from ..pianoroll import GENERATED, PRIMER

        return GENERATED if note[5] else PRIMER

    def state_text(self) -> str:
        app = self.app
        job = app.answerer.job
        if job is not None:
            return "answering..." if job.part is None or job.state == "sampling" else "answer playing"
        if app.session.held:
            return "playing"
        return "answer playing" if app.audio.busy_until() > app.audio.now() else "listening"

    def text(self, text: str, colour, size: int = 18):
        """Rendered text, cached: the status line is drawn 30 times a second but rarely changes."""
        from ..pianoroll import font

        key = (text, colour, size)
        if key not in self.texts:
            if len(self.texts) > 200:
                self.texts.clear()
            self.texts[key] = font(size).render(text, True, colour)
        return self.texts[key]

    def draw_status(self, screen, width, height) -> None:
        app = self.app
        app.pygame.draw.rect(screen, PANEL, (0, height - STATUS_H, width, STATUS_H))
        x, y = 8, height - STATUS_H + 5
        self.status_rects = []
        for name in STATUS_CONTROLS:
            rect = screen.blit(self.text(app.control_text(name), TEXT), (x, y))
            self.status_rects.append((rect, name))
            x = rect.right + 16
        line = self.text(f"{self.state_text()}  |  {app.session.note_count()} notes  |  {app.folder}  |  F1: keys", DIM)
        screen.blit(line, (8, y + 20))
        if app.message:
            text = self.text(app.message, ERROR if app.message_error else TEXT)
            screen.blit(text, (max(8 + line.get_width() + 24, width - text.get_width() - 8), y + 20))

    def draw_help(self, screen) -> None:
        from ..pianoroll import font

        pygame = self.app.pygame
        width = max(font(18).size(k)[0] for k, _ in HELP) + max(font(18).size(d)[0] for _, d in HELP) + 60
        height = 24 * len(HELP) + 40
        panel = pygame.Surface((width, height), pygame.SRCALPHA)
        panel.fill((*PANEL, 235))
        column = max(font(18).size(k)[0] for k, _ in HELP) + 30
        panel.blit(font(20).render("melodylstm studio: keys", True, TEXT), (15, 10))
        for i, (keys, what) in enumerate(HELP):
            panel.blit(font(18).render(keys, True, (240, 190, 120)), (15, 36 + 24 * i))
            panel.blit(font(18).render(what, True, TEXT), (column, 36 + 24 * i))
        screen.blit(panel, ((screen.get_width() - width) // 2, max(0, (screen.get_height() - STATUS_H - height) // 2)))
