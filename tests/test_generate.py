import mido
import numpy as np
import pretty_midi
import pytest

from melodylstm.generate import Generator
from melodylstm.phrase import phrase_end, register_bias
from melodylstm.midi import DRUMS, Song, read_midi, write_midi
from melodylstm.theory import SCALES, parse_key
from melodylstm.tokenizer import DRUM_T, PITCH_T, PROGRAM_T, Tokenizer

from helpers import cli, scale_song

TOK = Tokenizer()


@pytest.fixture(scope="module")
def random_ckpt(untrained_checkpoint):
    return untrained_checkpoint


@pytest.fixture(scope="module")
def gen(random_ckpt):
    return Generator.load(random_ckpt)


def primer_file(tmp_path, song=None, name="primer.mid"):
    path = tmp_path / name
    write_midi(song or scale_song(7, bars=4), path)
    return path


def tracks_notes(path):
    """Notes per pretty_midi instrument, by name."""
    pm = pretty_midi.PrettyMIDI(str(path))
    return {(i.name, i.program, i.is_drum): [(n.start, n.end, n.pitch, n.velocity) for n in i.notes] for i in pm.instruments}


def test_every_sample_from_random_weights_decodes(gen, tmp_path):
    songs = gen.generate(bars=4, num=8, seed=1, temperature=1.5)
    for i, song in enumerate(songs):
        assert len(song.notes) > 0
        path = tmp_path / f"s{i}.mid"
        write_midi(song, path)
        pretty_midi.PrettyMIDI(str(path))
        mid = mido.MidiFile(str(path))
        on = sum(m.type == "note_on" and m.velocity > 0 for t in mid.tracks for m in t)
        off = sum(m.type == "note_off" for t in mid.tracks for m in t)
        assert on == off == len(song.notes)  # no hanging notes
        assert song.end <= 4 * 48  # ends at the requested bar line


def test_sampled_tokens_obey_the_grammar(gen):
    from melodylstm.sampling import Sampler, start_state

    gen.net.reset(4)
    state = start_state(TOK, 4, Song(np.zeros((0, 5)), 12).tempo_map)
    rows = Sampler(gen.net, TOK, 1.3).run(4, state, lambda s, n, k: np.zeros(4, bool), np.random.default_rng(0), 500)
    for row in rows:
        assert TOK.is_legal([TOK.bos] + row)


def test_same_seed_same_bytes_and_different_seed_differs(random_ckpt, tmp_path):
    outs = []
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        result = cli("generate", "-c", str(random_ckpt), "-o", str(tmp_path / f"{name}.mid"), "--seed", str(seed), "--bars", "2")
        assert result.returncode == 0, result.stderr
        outs.append((tmp_path / f"{name}.mid").read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_continuation_keeps_the_input_unchanged_and_adds_its_own_track(random_ckpt, tmp_path):
    primer = primer_file(tmp_path)
    out = tmp_path / "out.mid"
    result = cli("continue", str(primer), "-o", str(out), "-c", str(random_ckpt), "--bars", "4", "--seed", "3")
    assert result.returncode == 0, result.stderr
    before, after = tracks_notes(primer), tracks_notes(out)
    for key, notes in before.items():
        assert after[key] == notes  # same notes, velocities, program, name
    new = {k: v for k, v in after.items() if k not in before}
    assert new and all(k[0] == "melodylstm continuation" for k in new)
    primer_end = max(n[1] for notes in before.values() for n in notes)
    assert min(n[0] for notes in new.values() for n in notes) >= primer_end - 2.0  # continues near the primer's end
    # tempo and time signature kept
    assert pretty_midi.PrettyMIDI(str(out)).get_tempo_changes()[1][0] == pytest.approx(120.0)


def test_bars_count_generated_music_only_and_end_cleanly(gen, tmp_path):
    primer = scale_song(1, bars=3)  # ends exactly on a bar line
    result = gen.continue_(primer, bars=5, seed=4)[0]
    grid = primer.tempo_map
    start_bar = grid.bar_at_or_after(primer.end)
    end = grid.bar_start(start_bar + 5)
    assert result.notes.end <= end
    assert result.notes.notes[:, 0].max() >= end - 2 * 48  # music reaches into the last bars
    assert result.notes.notes[:, 0].min() >= primer.notes[-1, 0]


def test_primer_ending_a_few_ticks_past_a_bar_line(gen, tmp_path):
    notes = [[i * 12, 12, 60 + i % 8, 80, 0] for i in range(8)] + [[96, 1, 72, 80, 0]]  # ends 1 step into bar 3
    path = primer_file(tmp_path, Song(np.array(notes), 12))
    result = gen.continue_(str(path), bars=2, seed=1)[0]
    assert result.start == 144  # the phrase ends at the bar line after its last note: the answer starts there
    end = 5 * 48  # the rest of bar 3 (the phrase's closing rest), then 2 full bars
    assert result.notes.end <= end and result.notes.notes[:, 0].min() >= 144
    pretty_midi.PrettyMIDI(__import__("io").BytesIO(result.midi_bytes()))


def test_polyphonic_multitrack_primer_with_drums(gen, tmp_path):
    melody = scale_song(3, bars=2, program=0).notes
    strings = scale_song(4, bars=2, program=48).notes
    drums = np.array([[t, 3, 36 if t % 24 == 0 else 42, 100, DRUMS] for t in range(0, 96, 12)])
    song = Song(np.vstack([melody, strings, drums]), 12, names={0: "piano", 48: "strings", DRUMS: "kit"})
    path = primer_file(tmp_path, song)
    out = tmp_path / "o.mid"
    gen.continue_(str(path), bars=2, seed=2)[0].save(out)
    before, after = tracks_notes(path), tracks_notes(out)
    assert all(after[k] == v for k, v in before.items())


def test_key_mask_keeps_every_new_pitch_in_the_scale(gen):
    for key in ("D:minor", "F#:major-pentatonic"):
        tonic, scale = parse_key(key)
        song = gen.generate(bars=4, seed=3, key=key, temperature=2.0, strict_key=True)[0]
        pitched = song.notes[song.notes[:, 4] != DRUMS]
        assert len(pitched) and set(((pitched[:, 2] - tonic) % 12).tolist()) <= set(SCALES[scale])
    song = gen.generate(bars=4, seed=3, pitch_range="C4-C5")[0]
    pitched = song.notes[song.notes[:, 4] != DRUMS]
    assert pitched[:, 2].min() >= 60 and pitched[:, 2].max() <= 72


def test_key_auto_estimates_the_primer_key(gen):
    c_major = Song(np.array([[i * 12, 12, 60 + p, 80, 0] for i, p in enumerate([0, 4, 7, 12, 7, 4, 0, 5, 9, 7, 2, 11, 0])]), 12)
    assert gen.continue_(c_major, bars=1, key="auto", seed=0)[0].key == "C:major"


def test_num_variations_are_written_as_numbered_files(random_ckpt, tmp_path):
    result = cli("generate", "-c", str(random_ckpt), "-o", str(tmp_path / "v.mid"), "-n", "3", "--bars", "2", "--seed", "1")
    assert result.returncode == 0, result.stderr
    files = sorted(p.name for p in tmp_path.glob("v-*.mid"))
    assert files == ["v-1.mid", "v-2.mid", "v-3.mid"]
    assert len({(tmp_path / f).read_bytes() for f in files}) == 3


def test_only_new_and_primer_bars(gen, tmp_path):
    song = scale_song(5, bars=8)
    result = gen.continue_(song, bars=2, primer_bars=2, seed=1)[0]
    assert result.notes.notes[:, 0].min() >= 6 * 48
    only = tmp_path / "only.mid"
    result.save(only, only_new=True)
    back = read_midi(only, 12)
    assert len(back.notes) == len(result.notes.notes) and back.notes[:, 0].min() < 2 * 48


@pytest.mark.parametrize("args, message", [
    (["--key", "H:major"], "unknown key"),
    (["--bars", "4", "--seconds", "3"], "only one of"),
    (["--pitch-range", "90-80"], "LOW is above HIGH"),
    (["--key", "C", "--strict-key", "--pitch-range", "61-61"], "no pitch is left"),
    (["--key", "C"], "trained without controls"),
    (["--style", "jigs"], "knows no styles"),
    (["--chords", "C G"], "without the chord control"),
    (["--strict-key"], "needs --key"),
    (["--primer-bars", "0"], "--primer-bars"),
    (["--temperature", "-1"], "temperature"),
])
def test_bad_options_give_one_line_errors_and_write_nothing(random_ckpt, tmp_path, args, message):
    primer = primer_file(tmp_path)
    out = tmp_path / "out.mid"
    result = cli("continue", str(primer), "-o", str(out), "-c", str(random_ckpt), *args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_primers(random_ckpt, tmp_path):
    junk = tmp_path / "junk.mid"
    junk.write_text("not midi")
    empty = tmp_path / "empty.mid"
    write_midi(Song(np.zeros((0, 5)), 12), empty)
    primer = primer_file(tmp_path)
    original = primer.read_bytes()
    for path, message in ((junk, "not a MIDI"), (empty, "no notes"), (primer, "is the input file")):
        result = cli("continue", str(path), "-o", str(path if path == primer else tmp_path / "o.mid"), "-c", str(random_ckpt))
        assert result.returncode == 1 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    assert primer.read_bytes() == original
    result = cli("generate", "-c", str(random_ckpt), "--key", "auto", "-o", str(tmp_path / "g.mid"))
    assert result.returncode == 1 and "needs a primer" in result.stderr


def test_python_api_accepts_pretty_midi(gen, tmp_path):
    pm = pretty_midi.PrettyMIDI(str(primer_file(tmp_path)))
    result = gen.continue_(pm, bars=2, temperature=0.9, seed=1)[0]
    assert len(result.notes.notes) > 0
    greedy = [gen.generate(bars=2, temperature=0, seed=s)[0].notes for s in (1, 2)]
    assert np.array_equal(*greedy)  # temperature 0 is greedy: no randomness left


def test_long_primer_is_primed_from_its_last_bars_and_copied_byte_for_byte(random_ckpt, tmp_path):
    long_song = scale_song(3, bars=200)
    primer = tmp_path / "long.mid"
    write_midi(long_song, primer)
    out = tmp_path / "out.mid"
    result = cli("continue", str(primer), "-o", str(out), "-c", str(random_ckpt), "--bars", "2", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "primed from the last 64 bars" in result.stderr
    source, written = primer.read_bytes(), out.read_bytes()
    assert written[14:len(source)] == source[14:]  # every input track unchanged, new tracks after them
    assert int.from_bytes(written[10:12], "big") > int.from_bytes(source[10:12], "big")
    back = read_midi(out, 12)
    assert len(back.notes) > len(long_song.notes) and back.notes[:, 0].max() >= 200 * 48


def dense_song(bars: int) -> Song:
    """Four voices of 16th notes: ~200 tokens a bar."""
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = [(s * 3, 3, scale[(s + v) % 8] + o, 80, 0) for s in range(bars * 16) for v, o in enumerate((-12, 0, 4, 7))]
    return Song(np.array(notes), 12, [(0, 500000)], [(0, 4, 4)])


def test_primer_is_bounded_by_tokens_as_well_as_bars(gen):
    from melodylstm.generate import DEFAULT_PRIMER_TOKENS, bound_primer_tokens

    song = dense_song(40)
    kept, cut, dropped = bound_primer_tokens(song, TOK, 1000)
    tokens = TOK.encode_normalized(kept, end=phrase_end(kept))
    assert len(tokens) - 1 <= 1000 and dropped > 0 and cut == dropped * 48  # whole bars, from a bar line
    assert len(TOK.encode_normalized(bound_primer_tokens(song, TOK, 1000 + 300)[0])) > len(tokens)  # no more cut than needed
    assert bound_primer_tokens(song, TOK, None)[0] is song and bound_primer_tokens(song, TOK, 10**6)[0] is song
    one_bar = bound_primer_tokens(song, TOK, 5)  # one bar is never split: the last bar stays
    assert one_bar[2] == 39 and len(one_bar[0].notes) == 64
    result = gen.continue_(song, bars=1, seed=2, primer_tokens=1000)[0]
    assert gen.last_controls["primer_bars"] == 40 - dropped
    assert result.start == song.end and result.notes.notes[:, 0].min() >= song.notes[:, 0].max()  # input timeline
    # below the bound nothing changes: the same answer as without a bound
    small = scale_song(7, bars=4)
    a = gen.continue_(small, bars=2, seed=3)[0].notes.notes
    b = gen.continue_(small, bars=2, seed=3, primer_tokens=None)[0].notes.notes
    assert np.array_equal(a, b) and DEFAULT_PRIMER_TOKENS >= 4096


def test_the_primer_bound_counts_the_clock_to_the_bar_line():
    """A phrase that stops a beat before its bar line is fed with the rest (clock tokens to the
    bar line): the bound counts them, so a primer one bar too long for it loses its first bar."""
    from melodylstm.generate import bound_primer_tokens

    song = Song(dense_song(4).notes[:-4 * 4], 12, [(0, 500000)], [(0, 4, 4)])  # the last beat rests
    assert phrase_end(song) > song.end
    notes_only = len(TOK.encode_normalized(song)) - 1
    assert len(TOK.encode_normalized(song, end=phrase_end(song))) - 1 > notes_only
    kept, cut, dropped = bound_primer_tokens(song, TOK, notes_only)
    assert dropped == 1 and cut == 48 and len(TOK.encode_normalized(kept, end=phrase_end(kept))) - 1 <= notes_only


def test_register_bias_costs_nothing_where_the_phrase_plays_and_more_the_further_away():
    tok = Tokenizer()
    phrase = Song(np.array([[i * 12, 12, p, 100, 0] for i, p in enumerate([60, 62, 64, 62, 60, 62, 64, 64])]), 12)
    bias = register_bias(tok, phrase, 1.0, 2.0)
    pitch = {p: bias[tok.pitch0 + p - tok.config.pitch_low] for p in (50, 55, 58, 62, 66, 70, 80)}
    assert pitch[62] == pytest.approx(0.0, abs=0.05)
    assert pitch[62] > pitch[66] > pitch[70] > pitch[80] and pitch[62] > pitch[58] > pitch[55] > pitch[50]
    others = np.ones(len(tok), dtype=bool)
    others[tok.pitch0: tok.pitch0 + tok.config.pitch_high - tok.config.pitch_low + 1] = False
    assert not bias[others].any()  # time, velocity and length tokens untouched


def test_an_answer_stays_in_the_phrase_register():
    """A phrase in the low register (mean pitch 51): unbiased, half of the default model's answers
    leapt an octave or more above it (means 62-69); each answer now stays near the phrase."""
    low = [48 + x for x in [0, 2, 4, 5, 7, 5, 4, 2, 0, 2, 4, 7, 4, 2, 0, 0]]
    phrase = Song(np.array([[i * 12, 12, p, 100, 0] for i, p in enumerate(low)]), 12)
    answers = Generator.load().continue_(phrase, bars=4, seed=1, num=8)
    means = [a.notes.notes[a.notes.notes[:, 0] >= phrase.end, 2].mean() for a in answers]
    assert max(abs(m - 51.0) for m in means) <= 7.0, means


def test_an_answer_keeps_the_dynamics_of_the_phrase():
    """The bundled corpora are written at one velocity (90); trained with whole windows made
    louder or softer, the default model answers a soft phrase softly and a loud one loudly
    (before: every answer at 90, whatever was played)."""
    line = [60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 67, 64, 60, 60]
    for velocity in (54, 74, 119):
        phrase = Song(np.array([[i * 12, 12, p, velocity, 0] for i, p in enumerate(line)]), 12)
        for answer in Generator.load().continue_(phrase, bars=4, seed=1, num=4):
            new = answer.notes.notes[answer.notes.notes[:, 0] >= phrase.end]
            assert len(new) and np.abs(new[:, 3] - velocity).max() <= 8, (velocity, new[:, 3])


def test_a_repeated_motif_is_taken_up_more_often_with_the_echo(monkeypatch):
    """A two-bar motif played twice: the default model, told what was played bars back, plays the
    motif's pitch at the motif's moment in 0.73 of the answers' notes (the model before lookback:
    0.10; untied, 0.45); the echo of 4 and 2 bars back takes that to 0.99."""
    import melodylstm.generate as generate

    motif = [(0, 12, 67), (12, 6, 69), (18, 6, 67), (24, 12, 65), (36, 12, 64), (48, 12, 62), (60, 12, 64), (72, 24, 60)]
    phrase = Song(np.array([[o + rep * 96, d, p, 100, 0] for rep in range(2) for o, d, p in motif]), 12)
    at = {o: p for o, _, p in motif}

    def taken_up() -> float:
        answers = Generator.load().continue_(phrase, bars=4, seed=1, num=16, candidates=1)  # the echo alone
        played = np.concatenate([a.notes.notes[a.notes.notes[:, 0] >= phrase.end][:, [0, 2]] for a in answers])
        return float(np.mean([at.get(onset % 96) == pitch for onset, pitch in played.tolist()]))

    with_echo = taken_up()
    monkeypatch.setattr(generate, "ECHO_WEIGHTS", (0.0, 0.0))
    monkeypatch.setattr(generate, "ECHO_LENGTH_WEIGHTS", (0.0, 0.0))
    model_alone = taken_up()
    assert model_alone > 0.3 and with_echo > model_alone + 0.15


def test_the_echo_adds_what_was_played_bars_ago_and_nothing_else():
    from melodylstm.sampling import Echo

    tok = Tokenizer()
    primer = np.array([[0, 12, 60, 100, 0], [48, 12, 64, 100, 0], [96, 12, 67, 100, 0]])
    echo = Echo(tok, 2, 48, primer, lags=(1, 2), weights=(1.0, 0.5))  # bars of 48 steps
    logits = np.zeros((2, len(tok)), dtype=np.float32)
    echo.bias(logits, np.array([144, 150]))  # row 0: 1 bar after 67, 2 after 64; row 1: nothing then
    pitch = lambda p: tok.pitch0 + p - tok.config.pitch_low  # noqa: E731
    assert logits[0, pitch(67)] == 1.0 and logits[0, pitch(64)] == 0.5 and logits[0].sum() == 1.5
    assert not logits[1].any()
    echo.record(np.array([pitch(72), tok.bar]), tok.token_type[[pitch(72), tok.bar]], np.array([144, 150]))
    later = np.zeros((2, len(tok)), dtype=np.float32)
    echo.bias(later, np.array([192, 198]))
    assert later[0, pitch(72)] == 1.0 and later[0, pitch(67)] == 0.5 and not later[1].any()


def test_the_echo_adds_the_length_of_what_was_played_bars_ago():
    from melodylstm.sampling import Echo
    from melodylstm.tokenizer import DURATION_T

    tok = Tokenizer()
    length = lambda steps: tok.duration0 + tok.durations.index(steps)  # noqa: E731
    primer = np.array([[0, 18, 60, 100, 0], [48, 6, 64, 100, 0]])  # a dotted quarter, then a 16th a bar later
    echo = Echo(tok, 1, 48, primer, lags=(1, 2), weights=(0.0, 0.0), length_weights=(2.0, 1.0))
    logits = np.zeros((1, len(tok)), dtype=np.float32)
    echo.bias(logits, np.array([96]))  # 1 bar after the 16th, 2 after the dotted quarter
    assert logits[0, length(6)] == 2.0 and logits[0, length(18)] == 1.0 and logits[0].sum() == 3.0
    pitch = tok.pitch0 + 67 - tok.config.pitch_low
    for token in (pitch, length(24)):  # the answer plays a half note at 96: heard a bar later
        echo.record(np.array([token]), tok.token_type[[token]], np.array([96]))
    assert tok.token_type[length(24)] == DURATION_T
    later = np.zeros((1, len(tok)), dtype=np.float32)
    echo.bias(later, np.array([144]))
    assert later[0, length(24)] == 2.0 and later[0, length(6)] == 1.0


def test_the_echo_rests_where_the_phrase_rested():
    from melodylstm.sampling import Echo

    tok = Tokenizer()
    starts = np.arange(tok.program0, tok.velocity0)  # every token that starts a note: program, pitch, drum
    assert {tok.token_type[t] for t in starts} == {PROGRAM_T, PITCH_T, DRUM_T}
    primer = np.array([[0, 24, 67, 100, 0], [36, 12, 69, 100, 0]])  # a half note, a rest of a quarter, a quarter
    echo = Echo(tok, 2, 48, primer, lags=(1,), weights=(0.0,), length_weights=(0.0,), rest_weights=(2.0,))
    logits = np.zeros((2, len(tok)), dtype=np.float32)
    echo.bias(logits, np.array([72, 60]))  # a bar after the rest; a bar after the half note sounded
    assert (logits[0, starts] == -2.0).all() and not np.delete(logits[0], starts).any()
    assert not logits[1].any()
    pitch, quarter = tok.pitch0 + 64 - tok.config.pitch_low, tok.duration0 + tok.durations.index(12)
    for token in (pitch, quarter):  # the answer plays a quarter at 72, in the primer's rest's place
        echo.record(np.array([token, token]), tok.token_type[[token, token]], np.array([72, 72]))
    later = np.zeros((2, len(tok)), dtype=np.float32)
    echo.bias(later, np.array([120, 132]))  # a bar after that quarter; a bar after the silence that followed it
    assert not later[0].any() and (later[1, starts] == -2.0).all()


def test_the_echo_hears_the_line_and_not_the_drums():
    from melodylstm.sampling import Echo

    tok = Tokenizer()
    length = lambda steps: tok.duration0 + tok.durations.index(steps)  # noqa: E731
    pitch = lambda p: tok.pitch0 + p - tok.config.pitch_low  # noqa: E731
    primer = np.array([[0, 12, 67, 100, 0], [0, 3, 36, 100, 128]])  # a quarter note and a kick under it
    echo = Echo(tok, 1, 48, primer, lags=(1,), weights=(1.0,), length_weights=(4.0,))
    logits = np.zeros((1, len(tok)), dtype=np.float32)
    echo.bias(logits, np.array([48]))
    assert logits[0, pitch(67)] == 1.0 and logits[0, length(12)] == 4.0 and logits[0].sum() == 5.0
    drum = tok.drum0 + 36 - tok.config.drum_low
    for token in (pitch(69), length(12), drum, length(3)):  # a sampled quarter note, then a kick at once
        echo.record(np.array([token]), tok.token_type[[token]], np.array([48]))
    later = np.zeros((1, len(tok)), dtype=np.float32)
    echo.bias(later, np.array([96]))
    assert later[0, pitch(69)] == 1.0 and later[0, length(12)] == 4.0 and later[0, length(3)] == 0.0


def test_a_model_with_lookback_takes_up_a_repeated_motif_more_often(tmp_path, monkeypatch):
    """Two tiny models trained on pieces that each repeat their own two-bar motif: the one that
    hears the lookback inputs plays a new primer's motif back far more often than the same model
    without them (the sampling-time echo off for both, so the model alone is measured)."""
    import melodylstm.generate as generate
    import melodylstm.train as train_module
    from melodylstm import controls as ctl
    from melodylstm.midi import write_midi
    from melodylstm.train import Run, TrainConfig

    rng = np.random.default_rng(0)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]

    def motif_piece(motif, repeats):
        return Song(np.array([[i * 12 + rep * 96, 12, p, 100, 0] for rep in range(repeats) for i, p in enumerate(motif)]), 12,
                    [(0, 500000)], [(0, 4, 4)])

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(24):
        write_midi(motif_piece(rng.choice(scale, 8).tolist(), 6), corpus / f"m{i}.mid")
    motif = [67, 64, 72, 60, 69, 62, 65, 71]
    at = {i * 12: p for i, p in enumerate(motif)}
    monkeypatch.setattr(generate, "ECHO_WEIGHTS", (0.0, 0.0))
    monkeypatch.setattr(generate, "ECHO_LENGTH_WEIGHTS", (0.0, 0.0))

    def taken_up(name, dims) -> float:
        monkeypatch.setattr(train_module, "CONTROL_DIMS", dims)
        cfg = TrainConfig(out=str(tmp_path / name), max_steps=300, batch_size=16, seq_len=96, lr=1e-2, warmup=10,
                          patience=0, evals=2, transpose=0)
        Run(corpus, Tokenizer(), {"embedding": 32, "hidden": 96, "layers": 1, "dropout": 0.0}, cfg,
            data_options={"cache_dir": tmp_path / "cache", "jobs": 1}, log=lambda m: None, progress=False).train()
        gen = Generator.load(tmp_path / name / "best.safetensors")
        assert ("back2" in gen.checkpoint.model_config.control_names) == (dims is generate_dims)
        answers = gen.continue_(motif_piece(motif, 2), bars=4, seed=1, num=8, primer_bars=None)
        played = np.concatenate([a.notes.notes[a.notes.notes[:, 0] >= 192][:, [0, 2]] for a in answers])
        return float(np.mean([at.get(onset % 96) == pitch for onset, pitch in played.tolist()]))

    from melodylstm.config import CONTROL_DIMS as generate_dims
    without = {k: v for k, v in generate_dims.items() if k not in ctl.BACK + ctl.GAP}
    heard, deaf = taken_up("lookback", generate_dims), taken_up("plain", without)
    assert heard > 0.6 and heard > 2 * deaf, (heard, deaf)


def test_a_named_key_leans_on_its_tonic_triad_and_a_drawn_key_does_not(monkeypatch):
    import melodylstm.generate as generate
    from melodylstm.theory import key_index

    tok = Tokenizer()
    bias = generate.tonic_triad_bias(tok, key_index(9, "minor"), (2.0, 1.0, 0.5))  # A minor: A C E
    pitches = np.arange(tok.config.pitch_low, tok.config.pitch_high + 1)
    on = bias[tok.pitch0: tok.pitch0 + len(pitches)]
    assert set(pitches[on == 2.0] % 12) == {9} and set(pitches[on == 1.0] % 12) == {0}
    assert set(pitches[on == 0.5] % 12) == {4} and bias.sum() == on.sum() and (on >= 0).all()
    seen = []
    real = generate.tonic_triad_bias
    monkeypatch.setattr(generate, "tonic_triad_bias", lambda *a: seen.append(a[1]) or real(*a))
    gen = Generator.load()
    gen.generate(bars=1, seed=1, key="D:minor")
    gen.generate(bars=1, seed=1)  # a key drawn from the corpus: the model's own way, no prior
    assert seen == [key_index(2, "minor")]


def test_a_named_key_keeper_pushes_only_the_scale_degrees_a_row_lacks():
    from melodylstm.sampling import KeyKeeper
    from melodylstm.theory import key_index

    tok = Tokenizer()
    keeper = KeyKeeper(tok, 2, key_index(2, "major"), strength=5.0, prior_notes=4.0, floor=0.05)
    d, e, f_sharp, g_sharp = (tok.pitch0 + p - tok.config.pitch_low for p in (62, 64, 66, 68))
    first = np.zeros((2, len(tok)), dtype=np.float32)
    keeper.bias(first, np.zeros(2, dtype=np.int64))
    assert not first.any()  # before any note the profile's own notes fill every share
    played = np.array([d, e])  # row 0 plays D eight times, row 1 E
    for _ in range(8):
        keeper.record(played, tok.token_type[played], np.zeros(2, dtype=np.int64))
    logits = np.zeros((2, len(tok)), dtype=np.float32)
    keeper.bias(logits, np.zeros(2, dtype=np.int64))
    assert logits[0, d] == 0 and logits[0, e] > 0 and logits[0, f_sharp] > 0  # D is past its share
    assert logits[1, e] == 0 and logits[1, d] == logits[1, f_sharp] > 0  # what is missing: pushed alike
    assert logits[:, g_sharp].max() == 0 and logits.max() <= 5.0  # no chromatic tone, at most `strength`
    assert np.array_equal(logits[0, d + 12], logits[0, d]) and logits[:, :tok.pitch0].max() == 0  # pitches only


def test_a_named_key_is_heard_without_a_drone_on_its_tonic():
    """`generate --key D:major --style tune` used to put half the notes on D (a drone): the tonic
    triad was pushed at every step. The corpus's tunes: 24% on their tonic."""
    songs = Generator.load().generate(bars=16, num=6, seed=3, key="D:major", style="tune")
    from melodylstm.theory import estimate_key_index, key_index

    tonic = [np.mean(s.notes[:, 2] % 12 == 2) for s in songs]
    assert np.median(tonic) < 0.33, tonic
    assert sum(estimate_key_index(s.notes) == key_index(2, "major") for s in songs) >= 5


def test_generate_leaves_no_hole_longer_than_its_corpus_has():
    """The default model's tunes ended bars early (a 2/4 reel heard in a 4/4 grid), leaving half
    of every bar silent (8 of 24 tunes, seeds 1-24); 90% of the bundled tunes never rest past half
    a beat, and generate now holds its pieces to that (meta style_rests)."""
    from melodylstm.phrase import inner_rest

    gen = Generator.load()
    assert gen.checkpoint.meta["style_rests"] == {"chorale": 12, "tune": 6}
    for seed in (7, 10, 14):  # tunes that were half silent
        song = gen.generate(bars=8, num=1, seed=seed, style="tune")[0]
        assert inner_rest(song.notes) <= 6, seed


def test_style_rests_are_the_longest_rest_most_pieces_stay_within(tmp_path):
    from melodylstm.data import parse_sources, style_rests
    from melodylstm.midi import write_midi

    for style, gap in (("steady", 0), ("breathing", 24)):
        (tmp_path / style).mkdir()
        for i in range(4):
            rows = [[t * 12 + (gap if t >= 4 else 0), 12, 60 + t, 80, 0] for t in range(8)]
            write_midi(Song(np.array(rows, dtype=np.int64), 12, [(0, 500000)], [(0, 4, 4)]), tmp_path / style / f"{i}.mid")
    files = sorted(str(p) for p in tmp_path.rglob("*.mid"))
    assert style_rests(files, parse_sources(str(tmp_path)), 12) == {"breathing": 24, "steady": 0}
