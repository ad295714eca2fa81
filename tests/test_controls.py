"""Controls: key and chord estimation, transposition, hiding, and the model/sampler paths that
read them (numpy sampler against PyTorch, every control optional, every sample decodable)."""
import numpy as np
import pytest
import torch

from melodylstm import controls as ctl
from melodylstm import theory
from melodylstm.config import CONTROL_DIMS, ModelConfig
from melodylstm.data import WindowSampler
from melodylstm.midi import Song
from melodylstm.model import MelodyLSTM
from melodylstm.sampling import FastLSTM
from melodylstm.tokenizer import Tokenizer, token_times

from helpers import cli

TOK = Tokenizer()
RES = 12


def song_of(notes, ts=(4, 4)):
    return Song(np.array(notes), RES, [(0, 500000)], [(0, *ts)])


def cadence(tonic: int, minor: bool = False):
    """I-IV-V-I (i-iv-V-i in minor), one half-note chord each, root position around middle C."""
    third = 3 if minor else 4
    chords = [(0, third, 7), (5, 5 + third, 12), (7, 11, 14), (0, third, 7)]
    notes = []
    for i, chord in enumerate(chords):
        notes.append((i * 24, 24, 36 + tonic + chord[0], 80, 0))  # bass
        notes += [(i * 24, 24, 60 + tonic + p, 80, 0) for p in chord]
    return notes


def test_key_of_a_c_major_scale_and_a_minor_piece():
    scale = [(i * 12, 12, p, 80, 0) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 67, 64, 60])]
    assert theory.key_label(theory.estimate_key_index(np.array(scale))) == "C:major"
    a_minor = [(i * 12, 12, p, 80, 0) for i, p in enumerate([57, 59, 60, 62, 64, 65, 68, 69, 64, 60, 57, 56, 57])]
    assert theory.key_label(theory.estimate_key_index(np.array(a_minor))) == "A:minor"
    assert theory.estimate_key_index(np.array([(0, 12, 36, 80, 128)])) == theory.KEY_UNKNOWN  # drums only


@pytest.mark.parametrize("tonic", [0, 2, 7, 10])
def test_cadence_chords_in_several_keys(tonic):
    chords = ctl.estimate_chords(np.array(cadence(tonic)), 8, RES)
    expected = [theory.chord_index(tonic + step, "") for step in (0, 5, 7, 0)]
    assert chords.tolist() == [c for c in expected for _ in range(2)]
    minor = ctl.estimate_chords(np.array(cadence(tonic, minor=True)), 8, RES)
    assert [theory.chord_label(c) for c in minor[::2]] == [theory.chord_label(theory.chord_index(tonic + s, q))
                                                       for s, q in ((0, "m"), (5, "m"), (7, ""), (0, "m"))]


def test_silence_is_no_chord_and_parsing_names():
    assert ctl.estimate_chords(np.array([(0, 12, 60, 80, 0)]), 3, RES).tolist()[1:] == [theory.NO_CHORD] * 2
    assert [theory.chord_label(theory.parse_chord(c)) for c in ("Dm7", "G7", "Cmaj7", "F#dim", "Bbm", "N.C.")] == \
        ["Dm7", "G7", "Cmaj7", "F#dim", "Bbm", "N.C."]
    for bad in ("H7", "Cxyz", ""):
        with pytest.raises(ValueError, match="chord"):
            theory.parse_chord(bad)
    assert ctl.parse_density("low") == 1 and ctl.parse_density("2") == ctl.density_bucket(2.0)
    with pytest.raises(ValueError, match="low, medium, high"):
        ctl.parse_density("loud")


def test_per_token_controls_read_only_the_notes_before_their_beat_or_bar():
    song = song_of(cadence(2) + [(96 + i * 3, 3, 74, 80, 0) for i in range(16)])  # D major, then a bar of 16ths
    kept, _ = TOK.normalize(song)
    tokens = TOK.encode_normalized(kept)
    c = ctl.controls_for(kept, tokens, TOK)
    times = token_times(tokens, TOK, kept.tempo_map)
    old = ctl.controls_for(kept, tokens, TOK, causal=False)
    # the key heard so far: unknown for the first 8 notes, then the piece's key
    heard = np.array([(kept.notes[:, 0] < (t // RES) * RES).sum() for t in times])
    assert set(c[heard < 8, ctl.KEY]) == {theory.KEY_UNKNOWN}
    assert set(c[heard >= 8, ctl.KEY]) == {theory.key_index(2, "major")}
    # the chord of the beat before, the density of the bar before
    chords = ctl.estimate_chords(kept.notes, int(times.max()) // RES + 2, RES)
    assert c[times < 12, ctl.CHORD].tolist() == [theory.NO_CHORD] * int((times < 12).sum())
    later = times >= 12
    assert np.array_equal(c[later, ctl.CHORD], chords[times[later] // RES - 1])
    assert set(c[times < 48, ctl.DENSITY]) == {ctl.DENSITY_UNKNOWN}
    assert set(c[(times >= 48) & (times < 96), ctl.DENSITY]) == set(old[times < 48, ctl.DENSITY])
    assert set(c[times >= 96, ctl.DENSITY]) == {ctl.density_bucket(0.5)}  # the bar before the 16ths
    assert np.array_equal(c[:, ctl.POSITION], old[:, ctl.POSITION])


def test_per_token_controls_of_older_checkpoints_follow_the_music():
    song = song_of(cadence(2) + [(96 + i * 3, 3, 74, 80, 0) for i in range(16)])  # D major, then a bar of 16ths
    kept, _ = TOK.normalize(song)
    tokens = TOK.encode_normalized(kept)
    c = ctl.controls_for(kept, tokens, TOK, causal=False)
    assert c.shape == (len(tokens), len(ctl.COLUMNS) - 1)
    assert set(c[:, ctl.KEY]) == {theory.key_index(2, "major")}
    times = token_times(tokens, TOK, kept.tempo_map)
    assert np.array_equal(c[:, ctl.POSITION], times % 48)  # 4/4 bars of 48 steps
    assert c[times < 24, ctl.CHORD].tolist() == [theory.chord_index(2, "")] * int((times < 24).sum())
    assert set(c[(times >= 48) & (times < 96), ctl.DENSITY]) == {ctl.density_bucket(0.5)}  # 2 chords in 4 beats
    assert set(c[times >= 96, ctl.DENSITY]) == {ctl.density_bucket(4.0)}


def test_transposition_moves_key_and_chords_with_the_notes():
    controls = np.zeros((2, 3, len(ctl.COLUMNS)), dtype=np.int64)
    controls[..., ctl.KEY] = [[theory.key_index(11, "major")] * 3, [theory.key_index(0, "minor")] * 3]
    controls[..., ctl.CHORD] = [[theory.chord_index(11, "7"), theory.NO_CHORD, theory.CHORD_UNKNOWN]] * 2
    back = ctl.COLUMNS.index("back1")
    controls[..., back] = [[60, ctl.NO_ONSET, ctl.NO_ONSET + 1]] * 2
    ctl.transpose(controls, np.array([2, -3]))
    assert controls[..., back].tolist() == [[62, ctl.NO_ONSET, ctl.NO_ONSET + 1], [57, ctl.NO_ONSET, ctl.NO_ONSET + 1]]
    # a model from before lookback (resumed or fine-tuned) reads 5 columns: its style is not a pitch
    older = np.array([[[theory.key_index(0, "major"), theory.chord_index(0, ""), 2, 0, 1]]])
    ctl.transpose(older, np.array([2]), ("key", "chord", "density", "position", "style"))
    assert older.tolist() == [[[theory.key_index(2, "major"), theory.chord_index(2, ""), 2, 0, 1]]]
    assert theory.key_label(controls[0, 0, ctl.KEY]) == "C#:major" and theory.key_label(controls[1, 0, ctl.KEY]) == "A:minor"
    assert theory.chord_label(controls[0, 0, ctl.CHORD]) == "C#7" and theory.chord_label(controls[1, 0, ctl.CHORD]) == "Ab7"
    assert controls[0, 1, ctl.CHORD] == theory.NO_CHORD and controls[0, 2, ctl.CHORD] == theory.CHORD_UNKNOWN


def test_window_sampler_transposes_labels_and_hides_each_control():
    song = song_of(cadence(0) * 1)
    kept, _ = TOK.normalize(song)
    tokens = np.tile(TOK.encode_normalized(kept), 20)
    controls = np.tile(np.concatenate([ctl.controls_for(kept, TOK.encode_normalized(kept), TOK, causal=False),
                                       np.zeros((len(TOK.encode_normalized(kept)), 1), np.uint8)], axis=1), (20, 1))
    unknown = ctl.unknown_values(RES, 1)
    sampler = WindowSampler(tokens, TOK, 16, 64, seed=1, transpose=5, controls=controls, unknown=unknown, hide=0.5)
    batch, c = sampler.next_batch()
    starts = np.random.Generator(np.random.PCG64(1)).integers(0, len(tokens) - 16, size=64)  # the sampler's first draw
    original = tokens[starts[:, None] + np.arange(17)].astype(np.int64)
    checked = 0
    for row in range(64):
        moved = np.unique(batch[row] - original[row])
        keys = set(c[row, :, ctl.KEY].tolist())
        if keys != {unknown[ctl.KEY]} and len(moved) == 2:  # 0 (other tokens) and the row's shift
            shift = int(moved[moved != 0][0])
            assert keys == {theory.key_index(shift % 12, "major")}
            checked += 1
    assert checked > 10
    hidden = (c == unknown[None, None]).all(axis=1)  # per row and control: hidden for the whole window
    hidden = hidden[:, [ctl.KEY, ctl.CHORD, ctl.DENSITY, ctl.POSITION, ctl.STYLE]]  # lookback is unknown in bar 1 anyway
    assert 0.3 < hidden.mean() < 0.7 and hidden.any(axis=0).all()


# the lookback inputs concatenated with the token embedding, as checkpoints before they were summed have them
SIDE_BY_SIDE = {**CONTROL_DIMS, **{name: 4 for name in ctl.BACK + ctl.GAP}}


def controlled_model(styles=("chorale", "tune"), seed=0, dims=CONTROL_DIMS):
    torch.manual_seed(seed)
    config = ModelConfig(len(TOK), 16, 32, 2, 0.0, controls=ctl.model_controls(RES, styles, dims), styles=styles)
    model = MelodyLSTM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("dims", [CONTROL_DIMS, SIDE_BY_SIDE], ids=["lookback summed", "lookback side by side"])
def test_numpy_sampler_and_layer_by_layer_priming_match_pytorch_with_controls(dims):
    model = controlled_model(dims=dims)
    weights = {k: v.numpy() for k, v in model.state_dict().items()}
    net = FastLSTM(weights, model.config)
    rng = np.random.default_rng(0)
    T = 30
    tokens = rng.integers(0, len(TOK), T)
    sizes = [v for _, v, _ in model.config.controls]
    controls = np.stack([rng.integers(0, n, T) for n in sizes], axis=1)
    with torch.no_grad():
        expected, (h, c) = model(torch.from_numpy(tokens[None]), controls=torch.from_numpy(controls[None]))
    net.reset(1)
    stepped = np.stack([net.step(tokens[t:t + 1], controls[t:t + 1]).copy()[0] for t in range(T)])
    np.testing.assert_allclose(stepped, expected[0].numpy(), atol=2e-5, rtol=1e-4)
    (h2, c2), logits = net.prime(tokens, controls, rows=1, want_logits=True)
    np.testing.assert_allclose(logits[0], expected[0].numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(h2, h.numpy(), atol=2e-5)
    np.testing.assert_allclose(c2, c.numpy(), atol=2e-5)


def test_summed_inputs_keep_the_first_layer_narrow_and_are_heard():
    summed, side = controlled_model(), controlled_model(dims=SIDE_BY_SIDE)
    assert summed.config.input_size == side.config.input_size - 4 * len(ctl.BACK + ctl.GAP)
    assert summed.control_embed["back1"].weight.shape == (130, summed.config.embedding)
    rng = np.random.default_rng(1)
    tokens = torch.from_numpy(rng.integers(0, len(TOK), (1, 12)))
    controls = np.stack([rng.integers(0, n, 12) for _, n, _ in summed.config.controls], axis=1)[None]
    moved = controls.copy()
    moved[0, 5:, summed.config.control_names.index("back2")] = 60  # one lookback pitch, from step 5 on
    with torch.no_grad():
        a, _ = summed(tokens, controls=torch.from_numpy(controls))
        b, _ = summed(tokens, controls=torch.from_numpy(moved))
    assert torch.equal(a[0, :5], b[0, :5]) and not torch.allclose(a[0, 5:], b[0, 5:])
    with pytest.raises(ValueError, match="control sizes"):
        ModelConfig(len(TOK), 16, 32, controls=(("back1", 130, 0),))


def test_every_control_can_be_hidden_and_controlled_samples_always_decode(tmp_path):
    from melodylstm.checkpoint import save_checkpoint
    from melodylstm.generate import Generator

    path = tmp_path / "ctl.safetensors"
    save_checkpoint(path, controlled_model(), TOK)
    gen = Generator.load(path)
    plain = gen.generate(bars=2, seed=1, num=2)  # nothing given: key, chords, density unknown
    told = gen.generate(bars=4, seed=1, num=2, key="D:minor", style="tune", chords="Dm7 G7 Cmaj7 Cmaj7", density="high",
                        temperature=1.5)
    assert gen.last_controls["chords"] == "Dm7 G7 Cmaj7 Cmaj7" and gen.last_controls["style"] == "tune"
    for song in plain + told:
        assert len(song.notes) > 0 and song.notes[:, 0].max() < 4 * 48
    primer = song_of(cadence(0))
    result = gen.continue_(primer, bars=2, seed=2)[0]
    assert result.controls["key"] == "C:major" and result.controls["key_source"] == "primer"
    assert result.controls["style_source"] == "primer" and set(result.controls["style_scores"]) == {"chorale", "tune"}
    with pytest.raises(ValueError, match="this model knows chorale, tune"):
        gen.generate(bars=1, style="jigs")
    with pytest.raises(ValueError, match="major and minor"):
        gen.generate(bars=1, key="D:dorian")
    strict = gen.generate(bars=2, seed=1, key="D:dorian", strict_key=True, temperature=2.0)[0]
    pitched = strict.notes[strict.notes[:, 4] != 128]  # drums are never masked
    assert len(pitched) and np.isin((pitched[:, 2] - 2) % 12, [0, 2, 3, 5, 7, 9, 10]).all()


# ---------------------------------------------------------------- a tiny model that learned two styles

def style_corpus(root):
    """Two styles in subfolders: block chords (half notes) and a one-line melody (eighth notes)."""
    from melodylstm.midi import write_midi

    rng = np.random.default_rng(0)
    for i in range(8):
        chords = [(b * 24, 24, p, 80, 0) for b in range(16) for p in (48 + i % 3, 52 + i % 3, 55 + i % 3, 60 + i % 3)]
        melody = [(b * 6, 6, 60 + int(rng.choice([0, 2, 4, 5, 7, 9, 11, 12])), 80, 0) for b in range(64)]
        for style, notes in (("chords", chords), ("melody", melody)):
            (root / style).mkdir(parents=True, exist_ok=True)
            write_midi(song_of(notes), root / style / f"{style}{i}.mid")
    return root


@pytest.fixture(scope="module")
def two_style_model(tmp_path_factory):
    from melodylstm.train import Run, TrainConfig

    tmp = tmp_path_factory.mktemp("styles")
    cfg = TrainConfig(out=str(tmp / "run"), max_steps=300, batch_size=16, seq_len=64, lr=1e-2, warmup=10,
                      patience=0, evals=2, transpose=0)
    Run(style_corpus(tmp / "corpus"), TOK, {"embedding": 32, "hidden": 64, "layers": 1, "dropout": 0.0}, cfg,
        data_options={"cache_dir": tmp / "cache", "jobs": 1}, log=lambda m: None, progress=False).train()
    return tmp / "run"


def test_style_estimation_and_a_monophonic_answer_to_a_monophonic_primer(two_style_model):
    from melodylstm.generate import Generator
    from melodylstm.metrics.features import polyphony

    gen = Generator.load(two_style_model)
    assert gen.styles == ["chords", "melody"]
    block = song_of([(b * 24, 24, p, 80, 0) for b in range(4) for p in (50, 54, 57, 62)])
    line = song_of([(b * 6, 6, p, 80, 0) for b, p in enumerate([60, 62, 64, 65, 67, 65, 64, 62] * 2)])
    assert gen.continue_(block, bars=1, seed=0)[0].controls["style"] == "chords"
    answers = gen.continue_(line, bars=4, seed=0, num=4)
    assert answers[0].controls["style"] == "melody"
    for answer in answers:
        notes = answer.notes.notes
        assert len(notes) >= 8 and polyphony(notes) <= 1.05


# ---------------------------------------------------------------- key guidance and the key prior

def test_key_guidance_moves_only_the_pitch_choice():
    from melodylstm.sampling import KeyGuide

    guide = KeyGuide(TOK, columns=0, unknowns=theory.KEY_UNKNOWN, strength=2.0)
    rng = np.random.default_rng(0)
    told, hidden = rng.normal(size=(2, len(TOK))).astype(np.float32), rng.normal(size=(2, len(TOK))).astype(np.float32)
    out = guide.combine(np.concatenate([told, hidden]))
    pitches = guide.pitches
    assert np.array_equal(np.delete(out, np.arange(len(TOK))[pitches], axis=1),
                          np.delete(told, np.arange(len(TOK))[pitches], axis=1))  # rhythm tokens untouched

    def log_softmax(x):
        return x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)

    expected = told[:, pitches] + 2.0 * (log_softmax(told[:, pitches]) - log_softmax(hidden[:, pitches]))
    np.testing.assert_allclose(out[:, pitches], expected, rtol=1e-5, atol=1e-5)
    values = np.array([[3, 7], [5, 7]])
    doubled = guide.controls(values)
    assert doubled.tolist() == [[3, 7], [5, 7], [theory.KEY_UNKNOWN, 7], [theory.KEY_UNKNOWN, 7]]
    assert guide.controls(values) is doubled  # reused while the plan's values stay the same


def test_a_named_key_is_held_harder_with_guidance():
    """On the bundled model (the one that learned keys from real music): Eb major, asked for."""
    from melodylstm.generate import Generator

    gen = Generator.load()

    def share_in_key(strength):
        songs = gen.generate(bars=8, num=6, seed=11, style="chorale", key="Eb:major", key_strength=strength)
        return np.mean([theory.in_key_rate(s.notes, (3, "major")) for s in songs])

    unguided, guided = share_in_key(0.0), share_in_key(3.0)
    assert gen.last_controls["key_strength"] == 3.0 and gen.last_controls["key"] == "Eb:major"
    assert guided > unguided and guided > 0.95, (unguided, guided)


def test_without_a_key_generate_draws_one_from_the_corpus_keys():
    prior = {"tune": [0] * 7 + [30] + [0] * 16, "chorale": [10] * 24}  # tunes: all in G major (index 7)
    rng = np.random.default_rng(0)
    assert {ctl.pick_key(prior, "tune", rng) for _ in range(50)} == {7}
    assert len({ctl.pick_key(prior, "chorale", rng) for _ in range(200)}) > 15
    assert len({ctl.pick_key(None, None, rng) for _ in range(200)}) > 15  # an old checkpoint: any key
    rows = np.zeros((9, len(ctl.COLUMNS)), dtype=np.int64)
    rows[:, ctl.KEY] = [7] * 5 + [2] * 3 + [theory.KEY_UNKNOWN]
    rows[:5, ctl.STYLE] = 1
    stored = ctl.key_prior(rows, ["chorale", "tune"])
    assert stored["tune"][7] == 5 and stored["chorale"][2] == 3 and sum(stored["chorale"]) == 3

    from melodylstm.generate import Generator
    from melodylstm.theory import parse_key

    gen = Generator.load()
    gen.generate(bars=1, seed=3, style="tune")
    assert gen.last_controls["key_source"] == "picked"
    assert gen.checkpoint.meta["key_prior"]["tune"][theory.key_index(*parse_key(gen.last_controls["key"]))] > 0


@pytest.mark.parametrize("chords,key", [("Dm7 G7 Cmaj7 Cmaj7", "C:major"), ("Am Dm E Am", "A:minor"),
                                        ("Gm Cm D7 Gm", "G:minor"), ("D G A D", "D:major")])
def test_chords_without_a_key_imply_their_key(chords, key):
    """The key told with --chords and no --key is the progression's, not one drawn at random
    (the model was told E major under a progression in C)."""
    from melodylstm import controls as ctl
    from melodylstm.generate import Generator, describe_controls

    assert theory.key_label(theory.progression_key([[c] for c in ctl.parse_progression(chords)])) == key
    gen = Generator.load()
    gen.generate(bars=1, seed=1, style="chorale", chords=chords)
    assert gen.last_controls["key"] == key and gen.last_controls["key_source"] == "chords"
    assert f"key {key} (the chords'; --key chooses)" in describe_controls(gen.last_controls)
    gen.generate(bars=1, seed=1, style="chorale", chords=chords, key="F#:major")  # a key given wins
    assert gen.last_controls["key"] == "F#:major" and gen.last_controls["key_source"] == "given"
    assert theory.progression_key([[theory.NO_CHORD]]) == theory.KEY_UNKNOWN


def test_continue_answers_at_temperature_one_in_the_primers_key(tmp_path):
    import json

    from melodylstm.generate import Generator
    from melodylstm.midi import write_midi

    primer = tmp_path / "cadence.mid"
    write_midi(song_of(cadence(2) * 1), primer)  # D major
    result = cli("continue", str(primer), "-o", str(tmp_path / "out.mid"), "--bars", "1", "--seed", "1", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["temperature"] == 1.0 and report["key"] == "D:major" and report["key_source"] == "primer"
    assert report["key_strength"] == -0.5  # a heard key is held a little less than told
    gen = Generator.load()
    gen.generate(bars=1, seed=1, key="A:minor")
    assert gen.last_controls["temperature"] == 0.8 and gen.last_controls["key_strength"] == 3.0


def test_lookback_inputs_while_generating_are_those_of_the_finished_piece(tmp_path, monkeypatch):
    """What the sampler tells each row about 1, 2, 4 and 8 bars back equals what training computes
    from that row's finished piece (controls_for), step by step, through a primer with two-note
    chords, a change from 3/4 to 4/4 (shorter bars earlier: "unknown") and three rows apart."""
    from melodylstm.checkpoint import save_checkpoint
    from melodylstm.generate import Generator
    from melodylstm.phrase import phrase_end
    from melodylstm.sampling import FastLSTM

    path = tmp_path / "ctl.safetensors"
    save_checkpoint(path, controlled_model(), TOK)
    gen = Generator.load(path)
    fed = []
    step = FastLSTM.step

    def spy(net, tokens, controls=None):
        fed.append((np.array(tokens), np.array(controls)))
        return step(net, tokens, controls)

    monkeypatch.setattr(FastLSTM, "step", spy)
    melody = [(i * 6, 6 if i % 3 else 12, 60 + (0, 4, 7, 5, 2, 9)[i % 6], 80, 0) for i in range(32) if i % 5 != 4]
    melody += [(o, d, p - 5, 70, 0) for o, d, p, _, _ in melody[::3]]  # a lower voice now and then
    primer = Song(np.array(sorted(melody)), RES, [(0, 500000)], [(0, 3, 4), (72, 4, 4)])
    rows = 3
    gen.continue_(primer, bars=14, seed=4, num=rows, temperature=1.5, primer_bars=None)
    kept, _ = TOK.normalize(primer)
    prefix = TOK.encode_normalized(kept, end=phrase_end(kept))[:-1].tolist()  # the phrase's clock to its bar line
    columns = [gen.checkpoint.model_config.control_names.index(name) for name in ctl.BACK + ctl.GAP]
    lags, first = len(ctl.LOOKBACK_BARS), len(prefix) - 1
    told_all = []
    for r in range(rows):
        tokens = prefix[:-1] + [int(t[r]) for t, _ in fed]
        song = TOK.decode(tokens, like=kept)
        expected = ctl.controls_for(song, np.array(tokens), TOK)
        told = np.stack([c[r, columns] for _, c in fed])
        assert np.array_equal(told, expected[first:, ctl.POSITION + 1:ctl.STYLE]), r
        told_all.append(told)
    told = np.concatenate(told_all)
    assert ((told[:, :lags] < ctl.NO_ONSET).sum(axis=0) > 5).all()  # every lag heard notes ...
    assert ((told[:, lags:] > 0) & (told[:, lags:] <= ctl.POSITION_BEATS * RES)).sum(axis=0).min() > 5  # ... and gaps
    assert (told[:, :lags] == ctl.NO_ONSET + 1).any()  # and a place that a shorter bar lacked


def test_a_grid_too_fine_for_one_byte_per_control_is_refused_with_a_clear_error():
    assert ctl.model_controls(31, ("a",), CONTROL_DIMS)  # positions up to 248, gaps up to 249: one byte each
    with pytest.raises(ValueError, match="--resolution 48: .* at most 31 steps per quarter note"):
        ctl.model_controls(48, ("a",), CONTROL_DIMS)
    assert ctl.model_controls(48, ("a",), CONTROL_DIMS, use_controls=False) == ()
