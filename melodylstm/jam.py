"""`melodylstm jam`: call and response with a MIDI keyboard, in any metre.

The player plays a phrase; after a pause (default: one bar of silence) the model answers with
a continuation of it, played live; then it listens again. Each phrase is captured in a studio
`Session` whose clock starts at its first note (with no metronome to play to, that note is the
downbeat), so the primer has the session's tempo and metre."""
from __future__ import annotations

import time

import numpy as np

from .config import CONTINUE_TEMPERATURE
from .playback import Timeline
from .studio.session import Session

DEFAULT_RESOLUTION = 12  # the grid of a jam without a model (tests): the bundled model's


class Jam:
    def __init__(self, generator, respond, bars=2, temperature=CONTINUE_TEMPERATURE, tempo=120.0, pause=None, seed=None,
                 clock=time.monotonic, metre=(4, 4)):
        self.gen, self.respond, self.clock = generator, respond, clock
        self.bars, self.temperature, self.tempo, self.metre, self.seed = bars, temperature, tempo, tuple(metre), seed
        self.resolution = generator.tok.config.resolution if generator is not None else DEFAULT_RESOLUTION
        self.listen()
        self.bar_seconds = self.session.tempo_map.bar_seconds()
        self.pause = pause if pause is not None else self.bar_seconds  # one bar of silence ends a phrase
        self.answers = 0

    def listen(self) -> None:
        """A new phrase: a fresh session, its clock started by the next note."""
        self.session = Session(self.tempo, self.metre, self.resolution)
        self.t0 = None  # the clock's time of the phrase's first note: the session's time 0
        self.last_event = None

    @property
    def phrase(self) -> list:
        """The notes played so far: [start s, end s, pitch, velocity, program] (keys held are not in it)."""
        part = self.session.last_part()
        return part.notes if part is not None else []

    def feed(self, msg, now: float) -> None:
        if msg.type == "note_on" and msg.velocity > 0:
            self.t0 = now if self.t0 is None else self.t0
            self.session.note_on(msg.note, msg.velocity, now - self.t0)
        elif msg.type in ("note_off", "note_on") and msg.note in self.session.held:
            self.session.note_off(msg.note, now - self.t0)
        else:
            return
        self.last_event = now

    def ready(self, now: float) -> bool:
        self.release_stuck(now)
        session = self.session
        return session.unanswered() and not session.held and now - self.last_event >= self.pause

    def release_stuck(self, now: float) -> None:
        """A note held over four bars of silence is taken as released: a lost note-off (MIDI drivers
        drop events under load) must not stop the jam from ever answering."""
        if self.session.held and now - self.last_event >= 4 * self.bar_seconds:
            for pitch in list(self.session.held):
                self.session.note_off(pitch, self.last_event - self.t0)

    def answer(self) -> Timeline:
        """The model's continuation as a timeline starting now (the phrase is not replayed)."""
        primer, _ = self.session.primer()
        result = self.gen.continue_(primer, bars=self.bars, temperature=self.temperature, seed=self.seed)[0]
        timeline = Timeline()
        start = result.start
        notes = result.notes.notes
        if len(notes):
            seconds = primer.seconds(notes[:, 0] - start)
            ends = primer.seconds(notes[:, 0] + notes[:, 1] - start)
            for (onset, dur, pitch, vel, prog), s, e in zip(notes.tolist(), np.atleast_1d(seconds), np.atleast_1d(ends)):
                timeline.add_note(max(0.0, float(s)), float(e), pitch, vel, prog)
        timeline.close()
        self.listen()
        self.answers += 1
        return timeline

    def run(self, inport, max_answers=None, idle_sleep=0.005) -> None:
        while max_answers is None or self.answers < max_answers:
            now = self.clock()
            for msg in inport.iter_pending():
                self.feed(msg, now)
            if self.ready(now):
                self.respond(self.answer())
                for _ in inport.iter_pending():  # notes played over the answer are not a new phrase
                    pass
            time.sleep(idle_sleep)
