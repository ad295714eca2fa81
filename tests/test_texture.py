"""`continue` keeps the phrase's texture: a melody is answered with one voice (whatever the
style guess or the model's wishes), a one-voice primer is heard only as a one-voice style, and
the answer rests no longer than the phrase does. Untrained models: the limits must hold by
construction, not because a model learned them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from melodylstm import controls as ctl
from melodylstm.checkpoint import load_checkpoint, save_checkpoint
from melodylstm.config import CONTROL_DIMS, ModelConfig
from melodylstm.metrics.continuations import polyphony_at_onsets, silent_share
from melodylstm.generate import Generator
from melodylstm.phrase import longest_rest, primer_voices
from melodylstm.midi import DURATION, ONSET, Song
from melodylstm.model import MelodyLSTM
from melodylstm.tokenizer import Tokenizer

TOK = Tokenizer()
RES = 12


def melody(lengths, pitches=(62, 64, 66, 67, 69, 71, 73, 74)) -> Song:
    notes, t = [], 0
    for i, d in enumerate(lengths):
        notes.append((t, d, pitches[i % len(pitches)], 80, 0))
        t += d
    return Song(np.array(notes), RES, [(0, 500000)], [(0, 4, 4)], {})


def chordal(bars=4) -> Song:
    rows = [(b * 48 + k * 12, 12, p + k % 2, 80, 0) for b in range(bars) for k in range(4) for p in (48, 55, 64, 72)]
    return Song(np.array(rows), RES, [(0, 500000)], [(0, 4, 4)], {})


@pytest.fixture(scope="module")
def styled_checkpoint(tmp_path_factory):
    """An untrained model with two styles: "choir" plays four voices in its corpus, "line" one."""
    torch.manual_seed(3)
    controls = ctl.model_controls(RES, ["choir", "line"], CONTROL_DIMS)
    model = MelodyLSTM(ModelConfig(len(TOK), 16, 48, 1, 0.0, controls=controls, styles=("choir", "line"),
                                   causal_controls=True))
    path = tmp_path_factory.mktemp("styled") / "m.safetensors"
    save_checkpoint(path, model, TOK, meta={"style_voices": {"choir": 4, "line": 1}})
    return path


def answers(gen, primer, voices="auto", n=6):
    out = gen.continue_(primer, bars=4, num=n, seed=5, voices=voices)
    return [r.notes.notes[r.notes.notes[:, ONSET] >= primer.end] for r in out]


def test_a_melody_in_whole_notes_is_answered_with_one_voice(untrained_checkpoint):
    primer = melody([48] * 4)
    assert primer_voices(primer) == 1
    gen = Generator(load_checkpoint(untrained_checkpoint))
    limited = answers(gen, primer)
    assert all(len(a) for a in limited)
    assert max(polyphony_at_onsets(a) for a in limited) == 1.0
    free = answers(gen, primer, voices=0)  # the same untrained model without the limit plays chords
    assert max(polyphony_at_onsets(a) for a in free) > 1.0


def test_a_chordal_primer_keeps_its_voices_and_no_more(untrained_checkpoint):
    primer = chordal()
    assert primer_voices(primer) == 4
    gen = Generator(load_checkpoint(untrained_checkpoint))
    for notes in answers(gen, primer):
        ends = notes[:, ONSET] + notes[:, DURATION]
        sounding = [((notes[:, ONSET] <= t) & (ends > t)).sum() for t in np.unique(notes[:, ONSET])]
        assert max(sounding) <= 4


def test_no_rest_longer_than_the_primer_has(untrained_checkpoint):
    primer = melody([6, 6, 12, 6, 6, 12] * 4)  # running notes, no rest at all
    assert longest_rest(primer) == 0
    gen = Generator(load_checkpoint(untrained_checkpoint))
    for notes in answers(gen, primer):
        span_end = int((notes[:, ONSET] + notes[:, DURATION]).max())
        assert silent_share(notes, primer.end, span_end - primer.end) == 0.0  # no hole before the last note
    with_rests = melody([12, 12, 24])
    with_rests.notes[:, DURATION] = [12, 6, 12]  # a rest of 6 steps, and 12 from the last note to the bar line
    assert longest_rest(with_rests) == 12  # a phrase that ends on a breath: its answer may breathe as long
    with_rests.notes[2, DURATION] = 24  # the last note held to the bar line
    assert longest_rest(with_rests) == 6


def test_a_phrase_that_ends_on_a_breath_is_answered_from_the_bar_line_and_may_breathe(untrained_checkpoint):
    """Four bars of quarters whose last bar stops at beat 2: the phrase ends at the bar line, so
    its closing half-bar rest is heard, the answer starts at the bar line and may rest as long.
    Before, the phrase ended at its last note: the answer filled the rest, and (the closing rest
    not counted) could never rest at all, as for a phrase without rests."""
    primer = melody([12] * 14)
    assert primer.end == 168 and longest_rest(primer) == 24
    gen = Generator(load_checkpoint(untrained_checkpoint))
    for seed in range(3):
        result = gen.continue_(primer, bars=4, seed=seed)[0]
        notes = result.notes.notes
        assert result.start == 192 and notes[:, ONSET].min() >= 192
        last = int((notes[:, ONSET] + notes[:, DURATION]).max())
        assert silent_share(notes, 192, last - 192) > 0, seed


def test_a_breath_is_no_way_into_another_instrument():
    """The rest echo takes its logits from every token that starts a note: where the phrase rested
    and the answer may not (its rest used up), the answer's next note stays in the phrase's
    instrument. Taken from the pitches alone, the default model escaped through a PROGRAM token:
    47 of these 48 answers went on in another instrument."""
    from melodylstm.checkpoint import DEFAULT_CHECKPOINT

    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip("the default model is not built")
    rows = [[i * 12, 12, 60 + (i * 2) % 7, 80, 0] for i in range(4)] + [[48 + 12 * i, 12, 62 + i, 80, 0] for i in range(1, 4)]
    rows += [[96 + 12 * i, 12, 64 + i % 3, 80, 0] for i in range(8)] + [[192, 12, 65, 80, 0], [204, 12, 64, 80, 0]]
    gen = Generator(load_checkpoint(None))
    for seed in range(3):
        for result in gen.continue_(Song(np.array(rows), RES), bars=4, seed=seed, num=16, candidates=1):
            assert set(result.notes.notes[:, 4].tolist()) == {0}, seed


def test_seconds_count_from_the_phrase_end_for_a_slow_line_too(untrained_checkpoint):
    """A line in half and whole notes (read in shorter values) that ends a beat and a half early:
    `seconds` of answer start at the bar line, as for any phrase (they were cut from the last
    note's end, so one second gave no answer at all)."""
    primer = Song(np.array([[0, 48, 60, 80, 0], [48, 48, 62, 80, 0], [96, 48, 64, 80, 0], [144, 24, 65, 80, 0]]), RES)
    gen = Generator(load_checkpoint(untrained_checkpoint))
    for seconds in (1, 2):  # 120 quarters a minute: 24 steps a second
        result = gen.continue_(primer, seconds=seconds, seed=0)[0]
        notes = result.notes.notes
        assert gen.last_controls["note_values"] == 2 and result.start == 192
        assert len(notes) and notes[:, ONSET].min() >= 192
        assert int((notes[:, ONSET] + notes[:, DURATION]).max()) == 192 + 24 * seconds


def test_a_one_voice_primer_is_heard_as_a_one_voice_style(styled_checkpoint):
    gen = Generator(load_checkpoint(styled_checkpoint))
    for seed in range(3):
        gen.continue_(melody([24] * 8), bars=2, seed=seed)
        assert gen.last_controls["style"] == "line"
        assert gen.last_controls["voices"] == 1
    scores = gen.last_controls["style_scores"]
    gen.continue_(chordal(), bars=2, seed=0)  # four voices: every style may be heard, by likelihood
    chosen = gen.last_controls["style"]
    assert chosen == max(gen.last_controls["style_scores"], key=gen.last_controls["style_scores"].get)
    assert set(scores) == {"choir", "line"}


def test_voices_is_checked(untrained_checkpoint):
    gen = Generator(load_checkpoint(untrained_checkpoint))
    with pytest.raises(ValueError, match="voices"):
        gen.continue_(melody([12] * 8), bars=1, voices=-1)
    with pytest.raises(ValueError, match="voices"):
        gen.generate(bars=1, voices=99)


def test_a_slow_line_is_read_in_shorter_note_values_and_answered_in_its_own(untrained_checkpoint, styled_checkpoint):
    """A line in whole and half notes is read by the model in halves and quarters (the same music;
    the model has heard far more of the second) and its answer comes back in the line's values."""
    from melodylstm.phrase import note_value_factor
    from melodylstm.midi import compress_time, stretch_notes

    slow = melody([48, 48, 24, 24] * 2)  # 8 notes in 24 quarters
    assert note_value_factor(slow) == 2
    assert note_value_factor(melody([96] * 4)) == 4 and note_value_factor(melody([12] * 16)) == 1
    assert note_value_factor(melody([48, 45, 3])) == 1  # a 3-step note cannot be halved on the grid
    sparse = melody([12] * 4)
    sparse.notes[:, ONSET] *= 8  # quarter notes two bars apart: slow, but not written in long values
    assert note_value_factor(sparse) == 1
    halved = compress_time(Song(slow.notes, RES, [(0, 500000)], [(0, 4, 2)], {}), 2)
    assert halved.time_signatures == [(0, 4, 4)] and halved.tempos == [(0, 1000000)]
    assert halved.seconds() == pytest.approx(slow.seconds()) and (stretch_notes(halved.notes, 2) == slow.notes).all()
    with pytest.raises(ValueError):
        compress_time(melody([12, 13]), 2)
    eighths = Song(melody([72, 36] * 4).notes, RES, [(0, 500000)], [(0, 3, 8)], {})  # bars of 18 steps
    assert compress_time(eighths, 2).time_signatures == [(0, 3, 16)]
    with pytest.raises(ValueError):
        compress_time(eighths, 4)  # 4.5 steps a bar: the bar lines would move
    assert note_value_factor(eighths) == 2

    gen = Generator(load_checkpoint(untrained_checkpoint))
    heard = []
    result = gen.continue_(slow, bars=4, seed=3, on_note=heard.append)[0]
    assert gen.last_controls["note_values"] == 2
    new = result.notes.notes[result.notes.notes[:, ONSET] >= slow.end]
    assert len(new) and not (new[:, [ONSET, DURATION]] % 2).any()  # drawn on the halved grid, then stretched
    assert new[:, ONSET].max() < slow.end + 4 * 48  # 4 of the line's bars, not 4 halved ones
    assert sorted(tuple(n) for n in new[:, :3].tolist()) == sorted(tuple(n[:3]) for n in heard)  # played as written
    assert gen.continue_(melody([12] * 16), bars=1, seed=3)[0] and gen.last_controls["note_values"] == 1
    timed = gen.continue_(slow, seconds=12.525, seed=3)[0].notes  # ends where 12.525 s end on the line's own grid
    assert (timed.notes[:, ONSET] + timed.notes[:, DURATION]).max() <= slow.tempo_map.first_step_at(slow.seconds() + 12.525)
    controlled = Generator(load_checkpoint(styled_checkpoint))
    controlled.continue_(slow, bars=1, seed=3)
    assert controlled.last_controls["note_values"] == 2
    controlled.continue_(slow, bars=1, seed=3, density="high")  # a pace the user asks for is taken as written
    assert controlled.last_controls["note_values"] == 1
