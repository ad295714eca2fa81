"""Piano roll drawn with pygame: to a PNG (`melodylstm show`, no display needed) or in a
scrolling window during playback (space pauses, Esc quits)."""
from __future__ import annotations

import os

BACKGROUND = (24, 26, 32)
GRID = (48, 52, 62)
C_LINE = (70, 76, 90)
PRIMER = (90, 150, 230)  # notes from the input file
GENERATED = (240, 150, 60)  # notes the model wrote
PLAYHEAD = (235, 235, 235)
LABEL = (200, 200, 200)
MARGIN = 40  # left margin for pitch labels

NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]


def _pygame():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")
    import pygame

    pygame.font.init()
    return pygame


def pitch_bounds(notes) -> tuple[int, int]:
    if not notes:
        return 48, 84
    low = min(n[2] for n in notes)
    high = max(n[2] for n in notes)
    return max(0, low - 2), min(127, max(high + 2, low + 24))


def geometry(surface, low, high, t0, t1):
    width, height = surface.get_size()
    row = (height - 10) / (high - low + 1)
    scale = (width - MARGIN) / max(t1 - t0, 1e-6)

    def x_of(t):
        return MARGIN + (t - t0) * scale

    def y_of(pitch):
        return 5 + (high - pitch) * row

    return x_of, y_of, row


def draw(surface, notes, t0: float, t1: float, playhead: float | None = None, bounds=None) -> None:
    """notes: (start s, end s, pitch, velocity, program, is_new)."""
    pygame = _pygame()
    low, high = bounds or pitch_bounds(notes)
    x_of, y_of, row = geometry(surface, low, high, t0, t1)
    surface.fill(BACKGROUND)
    font = pygame.font.Font(None, 16)
    width = surface.get_width()
    for pitch in range(low, high + 1):
        if pitch % 12 == 0:  # a line and a label at every C
            y = y_of(pitch) + row
            pygame.draw.line(surface, C_LINE, (MARGIN, y), (width, y))
            surface.blit(font.render(f"C{pitch // 12 - 1}", True, LABEL), (4, y - 12))
    for start, end, pitch, velocity, program, is_new in notes:
        if end < t0 or start > t1 or not low <= pitch <= high:
            continue
        x0, x1 = max(MARGIN, x_of(start)), x_of(end)
        colour = GENERATED if is_new else PRIMER
        shade = 0.55 + 0.45 * velocity / 127  # louder notes are brighter
        rect = pygame.Rect(int(x0), int(y_of(pitch)), max(2, int(x1 - x0) - 1), max(2, int(row) - 1))
        pygame.draw.rect(surface, tuple(int(c * shade) for c in colour), rect)
    if playhead is not None and t0 <= playhead <= t1:
        x = int(x_of(playhead))
        pygame.draw.line(surface, PLAYHEAD, (x, 0), (x, surface.get_height()), 2)


def save_png(notes, path, width=1200, height=500) -> None:
    import io

    from .fileio import atomic_write_bytes

    pygame = _pygame()
    surface = pygame.Surface((width, height))
    end = max((n[1] for n in notes), default=1.0)
    draw(surface, notes, 0.0, end * 1.02)
    buf = io.BytesIO()
    pygame.image.save(surface, buf, "roll.png")  # the name hint picks the PNG encoder
    atomic_write_bytes(path, buf.getvalue())


class Window:
    """A scrolling view of the timeline around the playhead."""

    def __init__(self, width=1000, height=480, span=8.0, title="melodylstm"):
        pygame = _pygame()
        self.pygame = pygame
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and os.name == "posix" \
                and not os.environ.get("SDL_VIDEODRIVER"):
            import sys

            print("warning: no display found; the window is drawn off-screen", file=sys.stderr)
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
        draw(self.screen, notes, t0, t0 + self.span, playhead=max(0.0, now), bounds=pitch_bounds(notes))
        self.pygame.display.flip()
