"""`melodylstm jam` without ports: phrases captured in a studio session, in any metre (the
scripted-keyboard and lost-note-off tests are in test_playback.py, JACK in test_jam_jack.py)."""
import mido
import pytest

from melodylstm.generate import Generator
from melodylstm.jam import Jam


def play(jam, pitches, start, gap=0.5, hold=0.4):
    for i, pitch in enumerate(pitches):
        jam.feed(mido.Message("note_on", note=pitch, velocity=90), start + gap * i)
        jam.feed(mido.Message("note_off", note=pitch), start + gap * i + hold)
    return start + gap * (len(pitches) - 1) + hold  # the last note-off


def test_jam_reads_a_phrase_in_six_eight(untrained_checkpoint):
    """6/8 at 120 quarters a minute: a bar is three quarters, 1.5 s. The pause is one such bar,
    the primer is in 6/8 with the first note on its downbeat, and a one-bar answer fits the bar."""
    jam = Jam(Generator.load(untrained_checkpoint), None, bars=1, tempo=120, seed=3, metre=(6, 8))
    last_off = play(jam, [60, 64, 67], start=10.0)
    assert not jam.ready(last_off + 1.45) and jam.ready(last_off + 1.5)
    primer, crop = jam.session.primer()
    assert primer.time_signatures[0][1:] == (6, 8) and crop == 0
    assert primer.notes[:, 0].tolist() == [0, 12, 24] and primer.notes[:, 2].tolist() == [60, 64, 67]
    # the phrase's last note ends at step 34 (1.4 s after its first note), in bar 1 (steps 0-36):
    # the answer starts at the bar line (36) and a one-bar answer ends with bar 2, at step 72,
    # 36 steps (1.5 s) after it starts (in 4/4 the bar line is 48 and the answer ends at 96)
    timeline = jam.answer()
    assert timeline.notes and max(n[1] for n in timeline.notes) == pytest.approx(36 / 24)
    assert jam.phrase == [] and jam.answers == 1  # listening again, to a new phrase


def test_each_phrase_starts_on_its_own_downbeat():
    """After an answer the next phrase is read afresh: its first note is bar 1, beat 1 again."""
    jam = Jam(generator=None, respond=None, tempo=90, metre=(3, 4))  # one bar = 2 s
    last_off = play(jam, [62, 65], start=3.3)
    assert not jam.ready(last_off + 1.95) and jam.ready(last_off + 2.01)
    jam.listen()  # what answer() does once the model has answered
    play(jam, [69, 67, 65], start=17.75, gap=1 / 3)
    primer, crop = jam.session.primer()
    assert crop == 0 and primer.notes[:, 0].tolist() == [0, 6, 12]  # quarter = 2/3 s = 12 steps
    assert primer.time_signatures[0][1:] == (3, 4) and primer.tempos[0][1] == round(60e6 / 90)
