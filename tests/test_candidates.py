import numpy as np
import pytest

from melodylstm import candidates as cand
from melodylstm.candidates import nearest_the_phrase
from melodylstm.generate import Generator
from melodylstm.midi import Song

RES = 12


def line(pitches, length=12, start=0):
    """One voice: the pitches in a row, each `length` steps long, from `start`."""
    return np.array([[start + i * length, length, p, 90, 0] for i, p in enumerate(pitches)], dtype=np.int64)


PHRASE = line([60, 62, 64, 62, 60, 62, 64, 65] * 2)  # 4 bars of quarter notes around E4


def traits(notes, start=192, steps=192):
    return cand.traits(notes, start, steps, RES)


def test_the_answer_most_like_the_phrase_wins_on_every_trait():
    phrase = traits(PHRASE, 0)
    near = line([62, 64, 65, 64, 62, 60, 62, 60] * 2, start=192)  # same register, pace and lengths
    high = line([74, 76, 77, 76, 74, 72, 74, 72] * 2, start=192)  # an octave up
    slow = line([62, 64, 65, 64], length=48, start=192)  # whole notes
    holes = line([62, 64, 65, 64, 62, 60, 62, 60] * 2, start=192)[::2]  # a quarter's rest after each note
    answers = [traits(a) for a in (high, slow, holes, near)]
    assert cand.closest(phrase, answers) == 3
    d = {name: cand.differences(phrase, a) for name, a in zip(("high", "slow", "holes"), answers[:3])}
    assert d["high"][0] == pytest.approx(12.0, abs=0.5) and d["high"][1:].max() < 1e-9  # only the register differs
    assert d["slow"][1] > 0.5 and d["slow"][2] == 1.0  # slower, other note lengths
    assert d["holes"][4] == pytest.approx(0.5)  # half the time silent, where the phrase never is


def test_an_empty_answer_is_never_chosen_over_one_with_notes():
    phrase = traits(PHRASE, 0)
    empty = np.zeros((0, 5), dtype=np.int64)
    far = line([90, 30], length=96, start=192)
    assert cand.closest(phrase, [traits(empty), traits(far)]) == 1


def test_a_replay_of_the_phrase_is_kept_only_when_every_answer_is_one():
    phrase = traits(PHRASE, 0)
    replay = PHRASE.copy()
    replay[:, 0] += 192
    varied = replay.copy()
    varied[::2, 2] += 2  # every other note a step higher
    assert cand.replayed(replay, PHRASE, 0, 192) == 1.0 and cand.replayed(varied, PHRASE, 0, 192) == 0.5
    answers = [traits(replay), traits(varied)]
    assert cand.closest(phrase, answers) == 0  # the replay is nearest on every trait...
    assert cand.closest(phrase, answers, replays=[1.0, 0.5]) == 1  # ... but it is not an answer
    assert cand.closest(phrase, answers, replays=[1.0, 1.0]) == 0
    assert cand.closest(phrase, answers, replays=[1.0, 0.95]) == 1  # all replays: the one replaying least


def test_a_phrase_played_twice_is_a_replay():
    """An 8-bar answer that plays the 4-bar phrase twice replayed all of it, not half (the helper's
    Twinkle, Twinkle came back twice, note for note)."""
    twice = np.concatenate([PHRASE, PHRASE])
    twice[:, 0] += 192 + np.repeat([0, 192], len(PHRASE))
    assert cand.replayed(twice, PHRASE, 0, 192) == 1.0
    late = twice.copy()
    late[:, 0] += 6  # half a beat later: not the phrase
    assert cand.replayed(late, PHRASE, 0, 192) == 0.0


def test_continue_keeps_the_nearest_of_its_candidates():
    """Eight samples per answer: the answer kept is the one the chooser ranks first among the same
    eight rows drawn one by one, and on average it is nearer the phrase than they are, in register
    and on most other traits."""
    tune = line([67, 64, 65, 67, 69, 67, 65, 64, 62, 64, 65, 62, 60, 64, 67, 72])  # no bar repeats
    phrase = Song(tune, RES)
    gen = Generator.load()
    kept, gaps = [], []
    for seed in (1, 2, 3):
        best = gen.continue_(phrase, bars=4, seed=seed, candidates=8)[0]
        assert gen.last_controls["candidates"] == 8
        drawn = gen.continue_(phrase, bars=4, seed=seed, num=8, candidates=1)
        new = [d.notes.notes[d.notes.notes[:, 0] >= phrase.end] for d in drawn]
        answers = [Song(n, RES) for n in new]
        chosen = new[nearest_the_phrase(phrase, answers)]
        assert np.array_equal(best.notes.notes[best.notes.notes[:, 0] >= phrase.end], chosen)
        heard = cand.traits(tune, 0, phrase.end, RES)
        kept.append(cand.differences(heard, traits(chosen)))
        gaps += [cand.differences(heard, traits(n)) for n in new]
    kept, gaps = np.mean(kept, axis=0), np.mean(gaps, axis=0)
    assert (kept <= gaps).sum() >= 4 and kept[0] < gaps[0], (kept, gaps)


def test_candidates_are_one_when_notes_are_heard_as_they_come_and_bounded():
    from melodylstm.candidates import answer_candidates

    assert answer_candidates(None, 1, None) == 32
    assert answer_candidates(None, 1, lambda note: None) == 1
    assert answer_candidates(8, 512, None) == 2  # never past the sampler's 1,024 rows
    for bad in (0, 65, 2.5, True):
        with pytest.raises(ValueError, match="candidates"):
            answer_candidates(bad, 1, None)
