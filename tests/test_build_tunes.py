"""datasets/build_tunes.py: ABC tunes -> one-line MIDI with the bar lines where the score has them.

The ABC snippets below are written for these tests; the corpus tune is from Ryan's Mammoth
Collection (1883) as encoded in music21's corpus.
"""
import importlib.util

import numpy as np
import pytest

from melodylstm.midi import DURATION, ONSET, PITCH, read_midi_bytes
from melodylstm.tokenizer import Tokenizer

from conftest import ROOT

music21 = pytest.importorskip("music21")

RES = 12  # grid steps per quarter note, the tokenizer's default


def _builder():
    spec = importlib.util.spec_from_file_location("build_tunes", ROOT / "datasets" / "build_tunes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bt = _builder()


def convert(abc: str):
    score = music21.converter.parse(abc, format="abc")
    data, info = bt.convert_score(score)
    return read_midi_bytes(data, RES), info


def tune(body: str, metre="4/4", length="1/8", extra="") -> str:
    return f"X:1\nT:Test\nM:{metre}\nL:{length}\n{extra}K:D\n{body}\n"


def pitches(song):
    return [int(p) for p in song.notes[:, PITCH]]


def assert_monophonic(song):
    notes = song.notes
    assert len(np.unique(notes[:, ONSET])) == len(notes), "two notes start together"
    ends = notes[:-1, ONSET] + notes[:-1, DURATION]
    assert (ends <= notes[1:, ONSET]).all(), "a note sounds under the next one"


def bar_lines(song, count):
    grid = song.tempo_map
    return [grid.bar_start(i) for i in range(count)]


def test_pickup_is_padded_so_it_ends_on_the_first_bar_line():
    # 6/8 with a one-eighth pickup: padded with 5/8 of rest, bar 1 starts at the first bar line
    song, info = convert(tune("A | d2e f2g | a3 f3 | e2d c2B | A6 |]", metre="6/8"))
    assert info["pickup"] == 0.5 and info["pad"] == 2.5
    assert song.time_signatures == [(0, 6, 8)]
    assert song.notes[0, ONSET] == 30 and song.notes[0, PITCH] == 69  # the pickup A4 at 2.5 quarters
    assert song.notes[1, ONSET] == 36 == bar_lines(song, 2)[1]  # the d of bar 1 on the bar line
    assert info["misaligned"] == 0


def test_tune_without_pickup_is_not_shifted():
    song, info = convert(tune("d2 e2 f2 g2 | a4 f4 | e2 d2 c2 B2 | A8 |]"))
    assert info["pad"] == 0 and song.notes[0, ONSET] == 0
    assert set(song.notes[:, ONSET]) >= {0, 48, 96, 144}


def test_every_full_bar_starts_on_a_bar_line_and_bar_tokens_follow_the_score():
    # a pickup, an A part that ends on a full bar, then a B part with its own pickup:
    # the B pickup becomes a short bar (1/4) of its own so that the B bars stay on bar lines
    song, info = convert(tune("F | A2 B2 c2 d2 | e4 d4 || f2 | g2 f2 e2 d2 | c4 d4 |]", metre="4/4"))
    assert info["misaligned"] == 0
    # score bars start at (quarters) 0 (pickup bar, padded), 4, 8, then the B pickup at 12, B bars at 13, 17
    assert song.time_signatures == [(0, 4, 4), (12 * RES, 1, 4), (13 * RES, 4, 4)]
    lines = bar_lines(song, 6)
    assert lines == [0, 4 * RES, 8 * RES, 12 * RES, 13 * RES, 17 * RES]
    onsets = set(song.notes[:, ONSET].tolist())
    assert {4 * RES, 8 * RES, 13 * RES, 17 * RES} <= onsets
    # the tokenizer's BAR tokens: one per bar line, each right before the bar's first note
    tok = Tokenizer()
    tokens = tok.encode(song)
    assert sum(1 for t in tokens if t == tok.bar) == 6


def test_repeat_is_written_out():
    # (music21 makes measures only from two plain bar lines on, as every real tune has)
    song, info = convert(tune("|: d2 e2 f2 g2 | a8 | g8 :|"))
    assert info["repeats"] == "expanded"
    assert pitches(song) == [74, 76, 78, 79, 81, 79] * 2


def test_second_part_without_start_repeat_repeats_alone_AABB():
    # music21 alone would go back to the start of the tune for the second ':|' (AABAAB)
    song, info = convert(tune("d4 e4 | f8 :| a4 g4 | f8 :|"))
    assert info.get("implied start repeats added") == 1
    a, b = [74, 76, 78], [81, 79, 78]
    assert pitches(song) == a + a + b + b


def test_first_and_second_endings():
    song, _ = convert(tune("|: d4 e4 | c8 |1 f8 :|2 a8 | b8 |]"))
    assert pitches(song) == [74, 76, 73, 78, 74, 76, 73, 81, 83]


def test_chord_symbols_do_not_sound_and_double_stops_keep_the_top_note():
    song, info = convert(tune('"D"d2 e2 "A7"f2 g2 | "G"[Bg]4 "D"a4 | "4"f8 |]'))
    assert pitches(song) == [74, 76, 78, 79, 79, 81, 78]
    assert info["chord symbols dropped"] == 4
    assert info["chords reduced to the top note"] == 1
    assert_monophonic(song)


def test_grace_notes_are_dropped():
    song, info = convert(tune("{g}f2 e2 {fe}d4 | A8 | d8 |]"))
    assert pitches(song) == [78, 76, 74, 69, 74]
    assert info["grace notes dropped"] == 3


def test_grace_note_opening_a_triplet_does_not_overfill_the_bar():
    text = tune("(3{g}fed A2 B2 c2 | e8 | d8 |]", metre="4/4")
    assert "{g}(3fed" in bt.fix_abc(text)
    assert convert(text)[1]["metres"] != ["4/4"]  # music21 alone: an extra short bar
    song, info = convert(bt.fix_abc(text))
    assert info["metres"] == ["4/4"] and info["misaligned"] == 0
    assert bar_lines(song, 3)[1:] == [4 * RES, 8 * RES] and 4 * RES in song.notes[:, ONSET]


def test_tempo_from_q_field_else_one_beat_of_the_metre_at_120():
    song, info = convert(tune("d2 e2 f2 g2 | a8 | d8 |]", extra="Q:1/4=90\n"))
    assert song.tempos == [(0, 666_667)] and info["tempo"] == "Q: quarter=90"
    song, _ = convert(bt.fix_abc(tune("d2 e2 f2 g2 | a8 | d8 |]", extra="Q:1/4 =50\n")))
    assert song.tempos == [(0, 1_200_000)]  # music21 alone reads "Q:1/4 =50" as 250 a minute
    song, info = convert(tune("d2e f2g | a6 | d6 |]", metre="6/8"))
    assert song.tempos == [(0, 333_333)] and info["tempo"] == "default dotted quarter=120"  # 180 quarters/min
    song, _ = convert(tune("d2e2 f2g2 | a8 | d8 |]", metre="C|"))
    assert song.tempos == [(0, 250_000)] and song.time_signatures == [(0, 2, 2)]  # half = 120


def test_ryans_mammoth_reel_with_pickup():
    # Devil's Dream: a sixteenth-note pickup (1/8), A and B parts of 8 bars, both repeated
    score = music21.corpus.parse("ryansMammoth/DevilsDreamReel.abc")
    data, info = bt.convert_score(score)
    song = read_midi_bytes(data, RES)
    assert info["pad"] == 1.5 and song.notes[0, ONSET] == 18
    assert song.time_signatures == [(0, 2, 4)] and info["misaligned"] == 0
    assert info["repeats"] == "expanded" and info["implied start repeats added"] == 1
    # AABB (music21 alone: AABAAB), each part 16 quarters: pickup, 7 bars, a bar short by the pickup
    assert song.end == 18 + 4 * 16 * RES
    assert_monophonic(song)
    # every bar line after the padded first one carries a note: the score's bars sit on them
    onsets = set(song.notes[:, ONSET].tolist())
    assert [line in onsets for line in bar_lines(song, 33)] == [False] + [True] * 32


def test_ties_only_join_equal_pitches():
    # O'Neill's transcriptions write '-' between different notes (a3-b): both notes sound
    song, info = convert(tune("a3-b g3-a | f4 e4- | e4 d4 |]", length="1/8"))
    assert pitches(song) == [81, 83, 79, 81, 78, 76, 74]
    assert song.notes[5, DURATION] == 2 * 2 * RES  # e4-|e4: a real tie, one note of two half notes
    assert info["ties between different notes removed"] == 2


def test_short_bars_get_a_time_signature_that_fits():
    assert bt._metre_of(bt.Fraction(3, 2)) == "3/8"
    assert bt._metre_of(bt.Fraction(1)) == "1/4"
    assert bt._metre_of(bt.Fraction(5, 4)) == "5/16"
    assert bt._metre_of(bt.Fraction(1, 3)) is None  # a triplet eighth: no MIDI time signature
    assert bt._metre_of(bt.Fraction(1, 8)) is None  # a 32nd: the next bar line falls between grid steps


def test_slug_and_oneills_numbers(tmp_path):
    abc = tmp_path / "x.abc"
    abc.write_text("X: 699\nT: O'Carolan's Farewell\nB: O'Neill's 699\nK:D\nd8|\n\n"
                   "X: 800\nT: Farewell to Music\nB:O'Neill's 700\nK:D\nd8|\n\nX:5\nT:No book\nK:D\nd8|\n")
    assert bt.oneills_headers(str(abc)) == [(699, "O'Carolan's Farewell"), (700, "Farewell to Music"), (5, "No book")]
    assert bt.slug("Kerry Cobbler, The") == "kerry-cobbler-the"
    assert bt.slug("Caoineadh Uí Néill!") == "caoineadh-ui-neill"
    assert bt.slug("") == "untitled"
    assert len(bt.slug("a " * 100)) <= 48
