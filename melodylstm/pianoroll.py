"""Piano roll drawn with pygame: to a PNG (`melodylstm show`, no display needed), in a
scrolling window during playback (space pauses, Esc quits) and in `melodylstm studio`. All three
use the same drawing code, so pictures and windows look alike: a time ruler with bar numbers,
bar and beat lines from the tempo map, notes coloured by role (your notes blue, the model's
orange) or, when no note is the model's, by instrument."""
from __future__ import annotations

import os

import numpy as np

from .theory import pitch_name

BACKGROUND = (24, 26, 32)
RULER_BG = (34, 37, 45)
GRID = (48, 52, 62)
C_LINE = (70, 76, 90)
BEAT_LINE = (36, 39, 47)  # faint: between the bar lines
BAR_LINE = (92, 98, 116)
PRIMER = (90, 150, 230)  # notes from the input file, or played in the studio
GENERATED = (240, 150, 60)  # notes the model wrote
PLAYHEAD = (235, 235, 235)
LABEL = (200, 200, 200)
# one colour per instrument when no note is the model's (PRIMER first, so one track stays blue)
INSTRUMENTS = [PRIMER, (110, 200, 120), (200, 110, 200), (80, 200, 200), (230, 210, 90), (230, 100, 110),
               (160, 140, 240), (150, 190, 60)]
DRUM_COLOUR = (170, 170, 170)
MARGIN = 40  # left margin for pitch labels
RULER = 30  # top strip: bar numbers, then times


def _pygame():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    import pygame

    pygame.font.init()
    return pygame


_FONTS = {}


def font(size=16):
    """Fonts are cached: creating one costs more than drawing a whole frame."""
    if size not in _FONTS:
        _FONTS[size] = _pygame().font.Font(None, size)
    return _FONTS[size]


def pitch_bounds(notes) -> tuple[int, int]:
    if not notes:
        return 48, 84
    low = min(n[2] for n in notes)
    high = max(n[2] for n in notes)
    return max(0, low - 2), min(127, max(high + 2, low + 24))


def geometry(surface, low, high, t0, t1):
    width, height = surface.get_size()
    row = (height - RULER - 5) / (high - low + 1)
    scale = (width - MARGIN) / max(t1 - t0, 1e-6)

    def x_of(t):
        return MARGIN + (t - t0) * scale

    def y_of(pitch):
        return RULER + (high - pitch) * row

    return x_of, y_of, row


def note_colours(notes):
    """colour(note): by role when any note is the model's, else by track (a 7th field, when the
    notes have one) or instrument."""
    if any(n[5] for n in notes):
        return lambda n: GENERATED if n[5] else PRIMER

    def group(n):
        return n[6] if len(n) > 6 else n[4]

    groups = sorted({group(n) for n in notes if n[4] != 128})
    palette = {g: INSTRUMENTS[i % len(INSTRUMENTS)] for i, g in enumerate(groups)}
    return lambda n: DRUM_COLOUR if n[4] == 128 else palette.get(group(n), PRIMER)


def shaded(colour, velocity):
    shade = 0.55 + 0.45 * velocity / 127  # louder notes are brighter
    return tuple(int(c * shade) for c in colour)


def draw_background(surface, low, high, t0, t1, grid=None) -> None:
    """Everything but the notes and the playhead: pitch lines and labels, beat and bar lines,
    the ruler with bar numbers and times."""
    pygame = _pygame()
    x_of, y_of, row = geometry(surface, low, high, t0, t1)
    width, height = surface.get_size()
    surface.fill(BACKGROUND)
    pygame.draw.rect(surface, RULER_BG, (0, 0, width, RULER))
    small = font(16)
    lines = grid.beats(t0, t1, closed=True) if grid is not None else []
    bar_xs = [x_of(t) for t, bar in lines if bar]
    bar_gap = min(np.diff(bar_xs)) if len(bar_xs) > 1 else width
    beats_per_bar = len(lines) / max(1, len(bar_xs))
    if bar_gap / beats_per_bar >= 8:
        for t, bar in lines:  # beats only where they are far enough apart to read
            if not bar:
                pygame.draw.line(surface, BEAT_LINE, (x_of(t), RULER), (x_of(t), height))
    every = 1  # label (and, when crowded, draw) every n-th bar
    while bar_gap * every < 24:
        every *= 2
    for t, bar in lines:
        if bar and (bar - 1) % every == 0:
            x = int(round(x_of(t)))
            pygame.draw.line(surface, BAR_LINE, (x, 2), (x, height))
            surface.blit(small.render(str(bar), True, LABEL), (x + 3, 3))
    for pitch in range(low, high + 1):
        if pitch % 12 == 0:  # a line and a label at every C
            y = y_of(pitch) + row
            pygame.draw.line(surface, C_LINE, (MARGIN, y), (width, y))
            surface.blit(small.render(pitch_name(pitch), True, LABEL), (4, y - 12))
    _time_ruler(surface, x_of, t0, t1)


def _time_ruler(surface, x_of, t0, t1) -> None:
    pygame = _pygame()
    width = surface.get_width()
    seconds_per_px = (t1 - t0) / max(1, width - MARGIN)
    step = next((s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800) if s / seconds_per_px >= 60), 3600)
    t = np.ceil(max(0.0, t0) / step) * step
    while t <= t1:
        x = int(round(x_of(t)))
        pygame.draw.line(surface, LABEL, (x, RULER - 5), (x, RULER - 1))
        label = f"{int(t // 60)}:{t % 60:04.1f}" if step < 1 else f"{int(t // 60)}:{int(t % 60):02d}"
        surface.blit(font(14).render(label, True, (150, 150, 150)), (x + 3, 16))
        t += step


def draw_notes(surface, notes, low, high, t0, t1, colour_of=None) -> None:
    """notes: (start s, end s, pitch, velocity, program, is_new[, track])."""
    pygame = _pygame()
    x_of, y_of, row = geometry(surface, low, high, t0, t1)
    colour_of = colour_of or note_colours(notes)
    for note in notes:
        start, end, pitch, velocity = note[:4]
        if end < t0 or start > t1 or not low <= pitch <= high:
            continue
        x0, x1 = max(MARGIN, x_of(start)), x_of(end)
        rect = pygame.Rect(int(x0), int(y_of(pitch)), max(2, int(x1 - x0) - 1), max(2, int(row) - 1))
        pygame.draw.rect(surface, shaded(colour_of(note), velocity), rect)


def draw_playhead(surface, low, high, t0, t1, playhead) -> None:
    if playhead is not None and t0 <= playhead <= t1:
        x = int(geometry(surface, low, high, t0, t1)[0](playhead))
        _pygame().draw.line(surface, PLAYHEAD, (x, 0), (x, surface.get_height()), 2)


def draw(surface, notes, t0: float, t1: float, playhead: float | None = None, bounds=None, grid=None) -> None:
    """notes: (start s, end s, pitch, velocity, program, is_new); grid: a TempoMap for bar lines."""
    low, high = bounds or pitch_bounds(notes)
    draw_background(surface, low, high, t0, t1, grid)
    draw_notes(surface, notes, low, high, t0, t1)
    draw_playhead(surface, low, high, t0, t1, playhead)


def png_bytes(surface) -> bytes:
    import io

    buf = io.BytesIO()
    _pygame().image.save(surface, buf, "roll.png")  # the name hint picks the PNG encoder
    return buf.getvalue()


def save_png(notes, path, width=1200, height=500, grid=None) -> None:
    from .fileio import atomic_write_bytes

    surface = _pygame().Surface((width, height))
    end = max((n[1] for n in notes), default=1.0)
    draw(surface, notes, 0.0, end * 1.02, grid=grid)
    atomic_write_bytes(path, png_bytes(surface))


class Window:
    """A scrolling view of the timeline around the playhead."""

    def __init__(self, width=1000, height=480, span=8.0, title="melodylstm"):
        pygame = _pygame()
        self.pygame = pygame
        warn_if_offscreen()
        pygame.display.init()
        self.screen = pygame.display.set_mode((width, height))
        pygame.display.set_caption(title)
        self.span = span

    def handle_events(self, paused: bool) -> tuple[bool, bool]:
        quit_ = False
        for event in self.pygame.event.get():
            if event.type == self.pygame.QUIT:
                quit_ = True
            elif event.type == self.pygame.KEYDOWN:
                if event.key == self.pygame.K_ESCAPE:
                    quit_ = True
                elif event.key == self.pygame.K_SPACE:
                    paused = not paused
        return paused, quit_

    def draw(self, timeline, now: float) -> None:
        with timeline.lock:
            notes = list(timeline.notes)
        t0 = max(0.0, now - self.span * 0.25)
        draw(self.screen, notes, t0, t0 + self.span, playhead=max(0.0, now), bounds=pitch_bounds(notes),
             grid=getattr(timeline, "tempo_map", None))
        self.pygame.display.flip()


def warn_if_offscreen() -> None:
    """With no display and no SDL_VIDEODRIVER, SDL silently draws off-screen: say so."""
    import sys

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux") \
            and not os.environ.get("SDL_VIDEODRIVER"):
        print("warning: no display found; the window is drawn off-screen", file=sys.stderr)
