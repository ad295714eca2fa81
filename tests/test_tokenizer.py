import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melodylstm.midi import DRUMS, MidiError, Song, midifile_bytes, read_midi, read_midi_bytes, song_to_midifile
from melodylstm.tokenizer import Tokenizer, TokenizerConfig

from conftest import BACH, shared_files
from helpers import scale_song

TOK = Tokenizer()

note_strategy = st.tuples(
    st.integers(0, 2000),  # onset in steps
    st.integers(1, 200),  # duration
    st.integers(0, 127),  # pitch
    st.integers(1, 127),  # velocity
    st.sampled_from([0, 0, 0, 1, 40, 73, DRUMS]),  # program
)
sig_strategy = st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 12), st.sampled_from([2, 4, 8])), max_size=3)


def make_song(notes, sigs=()):
    return Song(np.array(notes, dtype=np.int64).reshape(-1, 5), 12, [(0, 500000)], [(0, 4, 4)] + list(sigs))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(note_strategy, max_size=120), sig_strategy,
       st.sampled_from(["keep", "merge"]), st.sampled_from(["keep", "drop"]), st.booleans())
def test_round_trip_is_exact_on_random_notes(notes, sigs, programs, drums, bars):
    tok = Tokenizer(TokenizerConfig(programs=programs, drums=drums, bar_tokens=bars))
    song = make_song(notes, sigs)
    tokens, kept, lost = tok.tokenize(song)
    decoded = tok.decode(tokens, like=kept)
    assert np.array_equal(decoded.notes, kept.notes)
    assert tok.is_legal(tokens, like=kept)
    # every note is either kept or counted by a documented rule
    assert len(song.notes) - len(kept.notes) == lost["out_of_range"] + lost["duplicates"] + lost.get("drum_notes_dropped", 0)
    # normalizing twice changes nothing (the rules are a projection)
    again, _ = tok.normalize(kept)
    assert np.array_equal(again.notes, kept.notes)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, len(TOK) + 5), max_size=300))
def test_lenient_decoder_never_raises(tokens):
    song = TOK.decode(tokens)
    assert song.notes.shape[1] == 5
    assert (song.notes[:, 1] > 0).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(note_strategy, min_size=1, max_size=80))
def test_streaming_decode_matches_batch_and_emits_each_note_at_its_duration(notes):
    tokens, kept, _ = TOK.tokenize(make_song(notes))
    dec = TOK.decoder(kept)
    streamed = []
    for i, token in enumerate(tokens.tolist()):
        note = dec.push(token)
        if note is not None:
            assert TOK.vocab[token].startswith("DURATION_")  # emitted exactly when complete
            streamed.append(note)
    assert np.array_equal(Song(np.array(streamed).reshape(-1, 5), 12).notes, TOK.decode(tokens, like=kept).notes)


def test_grammar_masks_what_cannot_follow():
    dec = TOK.decoder()
    assert TOK.vocab[int(np.flatnonzero(dec.allowed())[0])] == "BOS" and dec.allowed().sum() == 1
    dec.push(TOK.bos)
    dec.push(TOK.pitch_token(60))
    allowed = {TOK.vocab[i].split("_")[0] for i in np.flatnonzero(dec.allowed())}
    assert allowed == {"VELOCITY"}
    dec.push(int(TOK.velocity_token[TOK.velocity_round[64]]))
    assert {TOK.vocab[i].split("_")[0] for i in np.flatnonzero(dec.allowed())} == {"DURATION"}


def test_shifts_may_not_cross_a_bar_line():
    dec = TOK.decoder()
    for t in (TOK.bos, TOK.bar, TOK.shift0 + 40 - 1):  # enter bar 0, move 40 of its 48 steps
        dec.push(t)
    allowed_shifts = [TOK.token_value[i] for i in np.flatnonzero(dec.allowed()) if TOK.vocab[i].startswith("SHIFT")]
    assert max(allowed_shifts) == 7


def test_a_phrase_can_end_on_its_closing_rest():
    """encode_normalized(end=...): the clock moves on past the last note (a BAR per bar line, then
    shifts), the notes decode unchanged and the decoder stands at `end`."""
    tok = Tokenizer()
    song = tok.normalize(Song(np.array([[0, 12, 60, 80, 0], [12, 12, 62, 80, 0], [60, 6, 64, 80, 0]]), 12))[0]  # 4/4: bar 48
    plain = tok.encode_normalized(song)
    for end, tail in ((96, ["BAR"]), (100, ["BAR", "SHIFT_4"]), (60, [])):
        tokens = tok.encode_normalized(song, end=end)
        assert tokens[:-1].tolist()[: len(plain) - 1] == plain[:-1].tolist()
        assert tok.describe(tokens[len(plain) - 1:-1]) == tail
        dec = tok.decoder(song)
        for t in tokens[:-1].tolist():
            dec.push(t)
        assert dec.time == max(end, 60) and np.array_equal(tok.decode(tokens, song).notes, song.notes)


def test_a_forked_decoder_goes_on_alone():
    tok = Tokenizer()
    song = tok.normalize(Song(np.array([[0, 12, 60, 80, 0], [12, 12, 62, 80, 0]]), 12))[0]
    tokens = tok.encode_normalized(song)[:-1].tolist()
    dec = tok.decoder(song)
    for t in tokens[:-1]:  # stop before the last DURATION: a note is pending
        dec.push(t)
    a, b = dec.fork(), dec.fork()
    assert a.push(tokens[-1]) == (12, 12, 62, a.notes[-1][3], 0) and len(a.notes) == 2
    assert b.pending is not None and len(b.notes) == len(dec.notes) == 1 and dec.pending is not None
    b.push(tok.bar)
    assert (a.time, a.bar_index) == (dec.time, dec.bar_index) != (b.time, b.bar_index)


def test_resolution_represents_sixteenths_and_triplets():
    res = TokenizerConfig().resolution
    assert res % 4 == 0 and res % 3 == 0


def test_lossy_rules_are_counted():
    notes = [(0, 12, 60, 78, 0), (0, 12, 60, 90, 0),  # duplicate
             (12, 24, 62, 78, 0), (18, 12, 62, 78, 0),  # overlapping same pitch
             (24, 12, 10, 78, 0),  # below the piano range
             (36, 12 * 20, 64, 78, 0)]  # longer than 8 beats
    kept, lost = TOK.normalize(make_song(notes))
    assert lost == {"out_of_range": 1, "duration_capped": 1, "duplicates": 1, "overlaps_truncated": 1}
    assert [tuple(n) for n in kept.notes.tolist()] == [
        (0, 12, 60, 90, 0), (12, 6, 62, 78, 0), (18, 12, 62, 78, 0), (36, 96, 64, 78, 0)]


def test_drums_are_never_mixed_into_pitched_parts():
    notes = [(0, 3, 36, 100, DRUMS), (0, 12, 36, 80, 0)]
    tokens, kept, _ = TOK.tokenize(make_song(notes))
    names = TOK.describe(tokens)
    assert "DRUM_36" in names and "PITCH_36" in names
    dropped = Tokenizer(TokenizerConfig(drums="drop")).tokenize(make_song(notes))[1]
    assert DRUMS not in dropped.notes[:, 4]


def test_programs_merge_or_keep():
    notes = [(0, 12, 60, 80, 0), (0, 12, 67, 80, 40), (12, 12, 62, 80, 40)]
    keep = TOK.decode(TOK.encode(make_song(notes)))
    assert sorted(set(keep.notes[:, 4].tolist())) == [0, 40]
    merge = Tokenizer(TokenizerConfig(programs="merge"))
    assert set(merge.decode(merge.encode(make_song(notes))).notes[:, 4].tolist()) == {0}


def test_json_round_trip_and_mismatch_is_refused():
    tok = Tokenizer(TokenizerConfig(resolution=8, programs="merge"))
    again = Tokenizer.from_json(tok.to_json())
    assert again.vocab == tok.vocab and again.config == tok.config
    data = tok.to_dict()
    data["vocab"] = data["vocab"][:-1]
    with pytest.raises(ValueError, match="does not match"):
        Tokenizer.from_dict(data)


def test_tempo_and_time_signature_survive_a_file_round_trip():
    song = scale_song(3)
    song.tempos = [(0, 600000), (96, 400000)]
    song.time_signatures = [(0, 3, 4), (72, 6, 8)]
    kept = TOK.normalize(song)[0]
    decoded = TOK.decode(TOK.encode(song), like=kept)
    back = read_midi_bytes(midifile_bytes(song_to_midifile(decoded)), 12)
    assert back.tempos == song.tempos and back.time_signatures == song.time_signatures
    assert np.array_equal(TOK.normalize(back)[0].notes, kept.notes)


def real_files():
    files = sorted(BACH.glob("*.mid"))[:40] + shared_files("realworld/**/*.mid") + shared_files("pop909/*.mid")[:10]
    return files


def test_round_trip_is_exact_on_real_files():
    files = real_files()
    if not files:
        pytest.skip("no real MIDI available")
    checked = 0
    for path in files:
        try:
            song = read_midi(path, 12)
        except MidiError:
            continue
        tokens, kept, _ = TOK.tokenize(song)
        decoded = TOK.decode(tokens, like=kept)
        assert np.array_equal(decoded.notes, kept.notes), path
        assert TOK.is_legal(tokens, like=kept), path
        # and through a written MIDI file
        back = read_midi_bytes(midifile_bytes(song_to_midifile(decoded)), 12)
        assert np.array_equal(TOK.normalize(back)[0].notes, kept.notes), path
        checked += 1
    assert checked >= min(10, len(files) // 2)


def test_unreadable_inputs_raise_one_line_midi_errors(tmp_path):
    for data, reason in [(b"", "not a MIDI"), (b"RIFF....", "not a MIDI"), (b"MThd\x00\x00\x00\x06\x00\x01\x00\x05\x01", "unreadable")]:
        with pytest.raises(MidiError, match=reason):
            read_midi_bytes(data, 12)
    (tmp_path / "d.mid").mkdir()
    with pytest.raises(MidiError, match="directory"):
        read_midi(tmp_path / "d.mid", 12)
