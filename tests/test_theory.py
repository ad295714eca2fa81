"""Music theory: the key a user's phrase is heard in."""
import numpy as np
import pytest

from melodylstm import theory
from melodylstm.midi import Song, write_midi
from helpers import invoke

# two tunes everyone knows, one note per beat (onset, duration, pitch, velocity, program)
ODE_TO_JOY_D = [66, 66, 67, 69, 69, 67, 66, 64, 62, 62, 64, 66, 66, 64, 64, 64]
MARY_C = [64, 62, 60, 62, 64, 64, 64, 64, 62, 62, 62, 62, 64, 67, 67, 67]


def melody(pitches, step: int = 12) -> np.ndarray:
    return np.array([[i * step, step, p, 100, 0] for i, p in enumerate(pitches)], dtype=np.int64)


@pytest.mark.parametrize("pitches, key", [(ODE_TO_JOY_D, (2, "major")), (MARY_C, (0, "major"))])
def test_a_phrase_is_heard_in_its_key(pitches, key):
    """The melody profiles name both tunes' keys; the probe-tone profiles hear E minor in both
    (the phrases circle the third and stop away from the tonic), which is why a phrase is not
    judged by them."""
    assert theory.phrase_key(melody(pitches)) == key
    assert theory.estimate_key(melody(pitches)) == (4, "minor")


@pytest.mark.parametrize("first, key", [(69, (9, "minor")), (60, (0, "major")), (64, (0, "major")), (67, (0, "major"))])
def test_the_opening_tone_decides_between_close_keys(first, key):
    """The same eight notes, C major by their pitch classes alone; opened on A (A minor's tonic,
    outside C major's triad) they are heard in A minor, opened on C, E or G in C major."""
    notes = [60, 60, 60, 64, 64, 67, 69, 71]
    notes.remove(first)
    assert theory.estimate_key(melody([first] + notes), theory.MELODY_PROFILES) == (0, "major")
    assert theory.phrase_key(melody([first] + notes)) == key


def test_continue_reports_and_holds_the_phrase_key(tmp_path):
    write_midi(Song(melody(ODE_TO_JOY_D), 12), tmp_path / "ode.mid")
    result = invoke("continue", tmp_path / "ode.mid", "-o", tmp_path / "out.mid", "--seed", "1", "--bars", "2")
    assert result.exit_code == 0, result.output
    assert "D:major (the primer's)" in result.output


# A B C# D E and F#, never G or G#: as much A major as D major
A_OR_D = [69, 71, 73, 74, 76, 74, 73, 71, 69, 66, 64, 66, 69, 69]


def test_a_phrase_that_fits_two_keys_holds_none():
    """phrase_key names the better of two keys that fit almost alike; the key `continue` holds
    (sure=True) is none, while a phrase whose key leads clearly keeps it."""
    best, rival, lead = theory.phrase_key_choice(melody(A_OR_D))
    assert {theory.key_label(best), theory.key_label(rival)} == {"A:major", "D:major"} and lead < theory.KEY_LEAD
    assert theory.phrase_key_index(melody(A_OR_D)) == best
    assert theory.phrase_key_index(melody(A_OR_D), sure=True) == theory.KEY_UNKNOWN
    assert theory.key_label(theory.phrase_key_index(melody(ODE_TO_JOY_D), sure=True)) == "D:major"


def test_continue_leaves_the_key_of_an_ambiguous_phrase_open(tmp_path):
    write_midi(Song(melody(A_OR_D), 12), tmp_path / "a-or-d.mid")
    result = invoke("continue", tmp_path / "a-or-d.mid", "-o", tmp_path / "out.mid", "--seed", "1", "--bars", "2")
    assert result.exit_code == 0, result.output
    assert "key open (the primer fits A:major and D:major nearly alike)" in result.output
    assert "(the primer's)" not in result.output.split("key open")[0]


def test_the_key_estimate_is_the_same_however_the_profiles_are_passed():
    rng = np.random.default_rng(0)
    for _ in range(50):
        hist = rng.random(12)
        scores = [np.corrcoef(hist, row)[0, 1] for row in theory.KEY_PROFILES]
        assert theory.best_key(hist) == int(np.argmax(scores))
        melody_scores = [np.corrcoef(hist, row)[0, 1] for row in theory.MELODY_PROFILES]
        assert theory.best_key(hist, theory.MELODY_PROFILES) == int(np.argmax(melody_scores))
