"""`melodylstm jam`: call and response with a MIDI keyboard.

The player plays a phrase; after a pause (default: one bar of silence) the model answers with
a continuation of it, played live; then it listens again."""
from __future__ import annotations

import time

import numpy as np

from .config import CONTINUE_TEMPERATURE
from .midi import Song
from .playback import Timeline


class Jam:
    def __init__(self, generator, respond, bars=2, temperature=CONTINUE_TEMPERATURE, tempo=120.0, pause=None, seed=None,
                 clock=time.monotonic):
        self.gen, self.respond, self.clock = generator, respond, clock
        self.bars, self.temperature, self.tempo, self.seed = bars, temperature, tempo, seed
        self.bar_seconds = 4 * 60.0 / tempo  # one 4/4 bar
        self.pause = pause if pause is not None else self.bar_seconds  # one bar of silence ends a phrase
        self.held = {}  # pitch -> (start seconds, velocity)
        self.phrase = []  # (start s, end s, pitch, velocity)
        self.last_event = None
        self.answers = 0

    def feed(self, msg, now: float) -> None:
        if msg.type == "note_on" and msg.velocity > 0:
            self.held[msg.note] = (now, msg.velocity)
        elif msg.type in ("note_off", "note_on") and msg.note in self.held:
            start, velocity = self.held.pop(msg.note)
            self.phrase.append((start, now, msg.note, velocity))
        else:
            return
        self.last_event = now

    def ready(self, now: float) -> bool:
        self.release_stuck(now)
        return bool(self.phrase) and not self.held and now - self.last_event >= self.pause

    def release_stuck(self, now: float) -> None:
        """A note held over four bars of silence is taken as released: a lost note-off (MIDI drivers
        drop events under load) must not stop the jam from ever answering."""
        if self.held and now - self.last_event >= 4 * self.bar_seconds:
            for pitch, (start, velocity) in list(self.held.items()):
                self.phrase.append((start, self.last_event, pitch, velocity))
            self.held.clear()

    def phrase_song(self) -> Song:
        res = self.gen.tok.config.resolution
        step = 60.0 / self.tempo / res
        t0 = min(p[0] for p in self.phrase)
        notes = [[round((s - t0) / step), max(1, round((e - s) / step)), pitch, vel, 0] for s, e, pitch, vel in self.phrase]
        return Song(np.array(notes), res, [(0, round(60e6 / self.tempo))], [(0, 4, 4)])

    def answer(self) -> Timeline:
        """The model's continuation as a timeline starting now (the phrase is not replayed)."""
        primer = self.phrase_song()
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
        self.phrase, self.held, self.last_event = [], {}, None
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
