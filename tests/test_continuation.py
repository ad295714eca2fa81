import json
import math

import numpy as np
import pytest

from melodylstm.metrics import continuations as cont
from melodylstm.checkpoint import load_checkpoint
from melodylstm.generate import Generator
from melodylstm.midi import DURATION, ONSET, Song
from melodylstm.metrics.features import LENGTH_CLASSES
from melodylstm.tokenizer import Tokenizer

from helpers import cli

TOK = Tokenizer()
RES = 12


def notes(rows):
    return np.array(rows, dtype=np.int64).reshape(-1, 5)


C_MAJOR = notes([[i * 12, 12, p, 80, 0] for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])])


def test_features_of_a_c_major_scale():
    f = cont.note_features(C_MAJOR, RES, (0, "major"), steps=96)  # 8 quarter notes in 8 beats
    assert f["in_key"] == 1.0
    assert f["polyphony"] == 1.0
    assert f["mean_pitch"] == pytest.approx(66.25)
    assert f["pitch_range"] == 12
    assert f["notes_per_beat"] == 1.0
    quarter = list(LENGTH_CLASSES).index(1)
    assert f["note_length_hist"][quarter] == 1.0 and f["inter_onset_hist"][quarter] == 1.0
    assert cont.note_features(C_MAJOR, RES, (2, "major"), 96)["in_key"] == 5 / 8  # C (twice) and F are not in D major
    assert cont.note_features(C_MAJOR, RES, (0, "major"), 192)["notes_per_beat"] == 0.5


def test_silent_share_and_motif_share():
    # two quarter notes in a 4-beat span, the second starting after a one-beat hole
    two = notes([[0, 12, 60, 80, 0], [24, 12, 62, 80, 0]])
    assert cont.silent_share(two, 0, 48) == 0.5
    assert cont.silent_share(two, 24, 24) == 0.5 and cont.silent_share(notes([]), 0, 12) == 1.0
    # the top line of a chord melody: intervals of the highest notes
    chordal = notes([[0, 12, 60, 80, 0], [0, 12, 48, 80, 0], [12, 12, 64, 80, 0], [24, 12, 67, 80, 0]])
    assert cont.interval_patterns(chordal) == [(4, 3)]
    primer = set(cont.interval_patterns(C_MAJOR))  # (2, 2), (2, 1), (1, 2), ...
    moved = C_MAJOR.copy()
    moved[:, 2] += 5  # the same shape a fourth higher: the same motifs
    assert cont.motif_share(moved, primer) == 1.0
    leaps = notes([[i * 12, 12, p, 80, 0] for i, p in enumerate([60, 67, 55, 72])])
    assert cont.motif_share(leaps, primer) == 0.0


def test_per_piece_distances_and_share_as_close_as_repeat():
    """Two synthetic pieces: on the first the model is further than the repeat baseline from the
    real continuation's register, on the second closer; medians and shares follow."""
    def row(pitch, overlap):
        return {**{k: 0.0 for k in cont.FEATURES}, "mean_pitch": pitch, "note_length_overlap": overlap,
                "inter_onset_overlap": overlap, "polyphony": 1.0, "notes": 4}

    pieces = [{"real": row(60, 1.0), "model": [row(66, 0.5), row(64, 0.5)], "repeat": row(61, 0.9),
               "primer_polyphony": 1.0, "nats": 10.0, "tokens": 10, "real_notes": 4, "model_notes_before_cut": 0},
              {"real": row(70, 1.0), "model": [row(70, 0.8), row(71, 0.8)], "repeat": row(73, 0.6),
               "primer_polyphony": 1.0, "nats": 10.0, "tokens": 10, "real_notes": 4, "model_notes_before_cut": 0}]
    summary = cont.summarize(pieces)
    pitch = summary["features"]["mean_pitch"]
    assert pitch["model_distance"] == pytest.approx((5 + 0.5) / 2) and pitch["repeat_distance"] == pytest.approx(2)
    assert pitch["model_as_close"] == 0.5
    lengths = summary["features"]["note_length_overlap"]
    assert lengths["model_distance"] == pytest.approx(0.35) and lengths["model_as_close"] == 0.5
    assert summary["goals"]["pitch_distance"]["ok"] is False  # 2.75 > 2.5 semitones
    assert summary["goals"]["as_close_pitch"]["ok"] is True


def test_polyphony_counts_held_notes_and_overlap_is_shared_area():
    held = notes([[0, 24, 48, 80, 0], [0, 12, 60, 80, 0], [12, 12, 62, 80, 0]])
    assert cont.polyphony_at_onsets(held) == 2.0  # onset 0: two notes; onset 12: the held 48 and 62
    assert math.isnan(cont.polyphony_at_onsets(notes([])))
    assert cont.histogram_overlap(np.array([1, 1, 0]), np.array([2, 2, 0])) == 1.0
    assert cont.histogram_overlap(np.array([1, 0]), np.array([0, 3])) == 0.0
    assert cont.histogram_overlap(np.array([3, 1]), np.array([1, 1])) == pytest.approx(0.75)
    assert math.isnan(cont.histogram_overlap(np.zeros(3), np.zeros(3)))


def test_cut_at_bar_is_exact_across_a_metre_change():
    # 3/4 for two bars, then 4/4: bar lines at 0, 36, 72, 120, 168, 216; notes ring across bar lines
    sigs = [(0, 3, 4), (72, 4, 4)]
    song = Song(notes([[t, 18, 60 + t % 12, 80, 0] for t in range(0, 240, 6)]), RES, [(0, 500000)], sigs)
    c = cont.cut_piece(song, 2, 2, TOK)
    assert (c.cut, c.end) == (72, 168)
    assert cont.bar_count(song) == 6
    p, r = c.primer.notes, c.real
    assert (p[:, ONSET] < 72).all() and (p[:, ONSET] + p[:, DURATION] <= 72).all()
    assert (r[:, ONSET] >= 72).all() and (r[:, ONSET] < 168).all() and (r[:, ONSET] + r[:, DURATION] <= 168).all()
    kept = song.notes[song.notes[:, ONSET] < 168]
    assert len(p) + len(r) == len(kept)
    assert np.array_equal(np.concatenate([p, r])[:, [0, 2]], kept[:, [0, 2]])  # nothing lost, nothing moved
    assert p[-1, DURATION] == 6 and r[-1, DURATION] == 6  # cut at the bar lines
    assert set(np.concatenate([p, r])[:, DURATION].tolist()) <= set(TOK.durations)
    assert c.primer.time_signatures == sigs
    # a primer whose last bar is silent: generate one bar more so the answer still ends at bar line P + B
    quiet = Song(song.notes[song.notes[:, ONSET] < 24], RES, [(0, 500000)], sigs)
    primer = cont.cut_piece(quiet, 2, 2, TOK).primer
    assert cont.bars_to_generate(primer, 2, 2) == 3
    assert cont.bars_to_generate(c.primer, 2, 2) == 2


def repeating_song(bars=8, ring=True):
    pattern = [[0, 12, 60, 80, 0], [0, 24, 48, 80, 0], [12, 6, 64, 80, 0], [18, 6, 65, 80, 0],
               [24, 12, 67, 80, 0], [36, 18 if ring else 12, 72, 80, 0]]  # the last note rings into the next bar
    rows = [[on + 48 * b, d, p, v, g] for b in range(bars) for on, d, p, v, g in pattern]
    return Song(notes(rows), RES, [(0, 500000)], [(0, 4, 4)])


@pytest.mark.parametrize("primer_bars,bars", [(4, 4), (3, 2)])
def test_repeat_baseline_on_a_repeating_piece_matches_the_real_continuation(untrained_checkpoint, primer_bars, bars):
    ckpt = load_checkpoint(untrained_checkpoint)
    c = cont.cut_piece(repeating_song(), primer_bars, bars, TOK)
    assert np.array_equal(cont.repeat_baseline(c.primer, primer_bars, bars, TOK), c.real)
    record = cont.score_piece(Generator(ckpt), ckpt.build_model().eval(), c, primer_bars, bars, 2, 0, 1.0)
    summary = cont.summarize([record])
    for name, row in summary["features"].items():
        assert row["repeat_distance"] == 0 and row["repeat_error"] == 0, name
    assert record["real"]["note_length_overlap"] == 1.0 and record["real"]["in_key"] == 1.0
    assert record["primer_polyphony"] > 1
    assert len(record["model"]) == 2
    assert record["real_replays"] == 1.0 and summary["replays"]["pieces"] == 1  # the piece plays its primer again
    assert "1 of 1 pieces go on by playing their primer again" in cont.format_continuation(
        {**summary, "pieces": 1, "primer_bars": primer_bars, "bars": bars, "samples": 2, "temperature": 1.0,
         "seed": 0, "too_short": 0, "skipped": [], "track": None})


def test_replay_share_counts_the_real_notes_the_repeat_plays_too():
    real = notes([[0, 12, 60, 80, 0], [12, 12, 62, 80, 0], [24, 12, 64, 80, 0], [36, 12, 65, 80, 0]])
    varied = real.copy()
    varied[3, 2] = 67  # the strain played again with a new last note
    assert cont.replay_share(real, real) == 1.0 and cont.replay_share(real, varied) == 0.75
    late = real.copy()
    late[:, ONSET] += 6  # the same pitches half a beat late: not a replay
    assert cont.replay_share(real, late) == 0.0 and math.isnan(cont.replay_share(notes([]), real))


def test_silent_time_is_reported_apart_for_primers_that_rest_inside_their_phrase():
    def row(silent):
        return {**{k: 0.0 for k in cont.FEATURES}, "silent_share": silent, "note_length_overlap": 1.0,
                "inter_onset_overlap": 1.0, "polyphony": 1.0, "notes": 4}

    def piece(primer_rest, model, real):
        return {"real": row(real), "model": [row(m) for m in model], "repeat": row(primer_rest),
                "primer_polyphony": 1.0, "nats": 1.0, "tokens": 1, "real_notes": 4, "model_notes_before_cut": 0,
                "primer_rest": primer_rest}

    pieces = [piece(0.1, [0.2, 0.0], 0.1), piece(0.2, [0.1, 0.1], 0.0),  # phrases that breathe
              piece(0.0, [0.0, 0.0], 0.3), piece(0.0, [0.0, 0.0], 0.0), piece(0.0, [0.0, 0.0], 0.0)]
    rests = cont.summarize(pieces)["rests"]
    assert rests["resting"]["pieces"] == 2 and rests["unbroken"]["pieces"] == 3
    assert rests["resting"]["model"] == pytest.approx(0.1) and rests["resting"]["real"] == pytest.approx(0.05)
    assert rests["resting"]["model_resting"] == pytest.approx(0.75) and rests["resting"]["real_resting"] == 0.5
    assert rests["unbroken"]["real"] == pytest.approx(0.1) and rests["unbroken"]["model_resting"] == 0.0
    line = cont.rests_line({"rests": rests})
    assert "inside its phrase (2 pieces): model 0.100, real 0.050" in line and "where it does not (3 pieces)" in line


def test_a_primer_rest_is_counted_from_its_first_note(untrained_checkpoint):
    """A voice that enters late has not rested inside its phrase; one that breathes has."""
    ckpt = load_checkpoint(untrained_checkpoint)
    gen, model = Generator(ckpt), ckpt.build_model().eval()

    def line(start, length):  # quarter-note onsets from `start` to the end of bar 8
        return Song(notes([[t, length, 60 + t // 12 % 5, 80, 0] for t in range(start, 48 * 8, 12)]), RES,
                    [(0, 500000)], [(0, 4, 4)])

    def primer_rest(song):
        return cont.score_piece(gen, model, cont.cut_piece(song, 4, 4, TOK), 4, 4, 1, 0, 1.0)["primer_rest"]

    assert primer_rest(line(24, 12)) == 0.0  # enters on beat 3, then never rests
    assert primer_rest(line(0, 9)) == pytest.approx(0.25)  # a sixteenth of breath after every quarter
    assert primer_rest(line(24, 9)) == pytest.approx(0.25)


def test_pieces_that_replay_their_primer_are_reported_apart():
    """A piece whose real continuation is its primer again favours the repeat baseline; the report
    gives the distances over the other pieces too."""
    def row(pitch):
        return {**{k: 0.0 for k in cont.FEATURES}, "mean_pitch": pitch, "note_length_overlap": 1.0,
                "inter_onset_overlap": 1.0, "polyphony": 1.0, "notes": 4}

    def piece(real, model, repeat, replays):
        return {"real": row(real), "model": [row(model)], "repeat": row(repeat), "primer_polyphony": 1.0,
                "nats": 1.0, "tokens": 1, "real_notes": 4, "model_notes_before_cut": 0, "real_replays": replays}

    pieces = [piece(60, 61, 60, 1.0), piece(60, 61, 60, 0.95),  # strains played again: repeat exact
              piece(60, 61, 62, 0.2), piece(70, 70.5, 72, 0.0), piece(64, 67, 65, 0.5)]
    summary = cont.summarize(pieces)
    assert summary["features"]["mean_pitch"]["model_as_close"] == pytest.approx(2 / 5)
    rep = summary["replays"]
    assert rep["pieces"] == 2 and rep["share"] == pytest.approx(0.4)
    pitch = rep["others"]["mean_pitch"]
    assert pitch["model_distance"] == 1.0 and pitch["repeat_distance"] == 2.0  # medians of (1, .5, 3) and (2, 2, 1)
    assert pitch["model_as_close"] == pytest.approx(2 / 3)


def test_repeat_baseline_loops_a_primer_shorter_than_the_continuation():
    c = cont.cut_piece(repeating_song(ring=False), 2, 5, TOK)
    assert np.array_equal(cont.repeat_baseline(c.primer, 2, 5, TOK), c.real)
    # notes held over the cut are cut in the primer, so the loop repeats them cut
    c = cont.cut_piece(repeating_song(), 1, 2, TOK)
    looped = cont.repeat_baseline(c.primer, 1, 2, TOK)
    assert np.array_equal(looped[:, [0, 2]], c.real[:, [0, 2]]) and looped[5, DURATION] == 12


def test_continuation_bits_match_the_numpy_sampler_network(untrained_checkpoint):
    ckpt = load_checkpoint(untrained_checkpoint)
    c = cont.cut_piece(repeating_song(), 2, 2, TOK)
    nats, tokens = cont.continuation_nll(ckpt.build_model().eval(), TOK, c.primer, c.real)
    prefix = TOK.encode_normalized(c.primer)[:-1]
    joint = TOK.encode_normalized(Song(np.concatenate([c.primer.notes, c.real]), RES))
    assert tokens == len(joint) - 1 - len(prefix)
    net = Generator(ckpt).net  # the independent numpy implementation, one step at a time
    net.reset(1)
    expected = 0.0
    for i, t in enumerate(joint[:-2].tolist()):
        logits = net.step(np.array([t])).astype(np.float64)[0]
        if i + 1 >= len(prefix):
            expected += np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[joint[i + 1]]
    assert nats == pytest.approx(expected, rel=1e-4)
    assert nats / tokens == pytest.approx(np.log(len(TOK)), rel=0.1)  # an untrained model is near uniform


def test_track_selection(untrained_checkpoint, tiny_corpus):
    ckpt = load_checkpoint(untrained_checkpoint)
    report = cont.evaluate_continuation(ckpt, tiny_corpus, primer_bars=2, bars=2, pieces=2, track="MELODY")
    assert report["pieces"] == 2 and report["track"] == "MELODY"
    with pytest.raises(ValueError, match="no piece"):
        cont.evaluate_continuation(ckpt, tiny_corpus, primer_bars=2, bars=2, pieces=2, track="violin")
    with pytest.raises(ValueError, match="no piece"):  # every piece is 8 bars long
        cont.evaluate_continuation(ckpt, tiny_corpus, primer_bars=6, bars=4)


def test_cli_evaluate_continuation_json(untrained_checkpoint, tiny_corpus):
    out = cli("-q", "evaluate", str(tiny_corpus), "-c", str(untrained_checkpoint),
              "--continuation", "--primer-bars", "2", "--bars", "2", "-n", "3", "--samples", "2",
              "--seed", "5", "-t", "0.9", "--json")
    assert out.returncode == 0, out.stderr

    def no_nan(text):
        raise ValueError(f"{text} in JSON")

    report = json.loads(out.stdout, parse_constant=no_nan)
    assert report["pieces"] == 3 and len(report["per_piece"]) == 3
    assert (report["primer_bars"], report["bars"], report["samples"], report["seed"], report["temperature"]) == (2, 2, 2, 5, 0.9)
    assert set(report["features"]) == set(cont.FEATURES)
    for row in report["features"].values():
        assert set(row) == {"real", "model", "repeat", "model_distance", "repeat_distance", "model_error",
                            "repeat_error", "model_as_close"}
    assert report["features"]["in_key"]["real"] == 1.0  # the corpus melodies are all in C major
    assert report["real_continuation_likelihood"]["bits_per_note"] > 0
    assert {"pitch_distance", "note_length_overlap", "as_close_pitch", "monophonic_polyphony",
            "silent_share_diff"} <= set(report["goals"])
    assert any(s["reason"] for s in report["skipped"])  # the broken files are listed, not fatal
    table = cont.format_continuation(report)
    assert "notes sounding together" in table and "bits/note" in table and "goals" in table
