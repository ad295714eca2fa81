"""The one tempo map (midi.TempoMap): steps <-> seconds, bar lines and beats over tempo and metre
changes, and the studio's changes at the next bar line."""
import numpy as np
import pytest

from melodylstm.midi import Song, TempoMap

TICKS = 480


def changing_map() -> TempoMap:
    """4/4 at 120 bpm, then 60 bpm from step 96 (bar 3 at 12 per quarter), 3/4 from step 96."""
    return TempoMap([(0, 500_000), (96, 1_000_000)], [(0, 4, 4), (96, 3, 4)], 12)


def test_seconds_and_steps_are_inverse_across_a_tempo_change():
    tm = changing_map()
    assert tm.seconds(96) == pytest.approx(4.0) and tm.seconds(108) == pytest.approx(5.0)
    steps = np.array([0, 7, 96, 100, 130.5])
    assert np.allclose(tm.step_at(tm.seconds(steps)), steps)
    assert tm.first_step_at(4.0) == 96 and tm.first_step_at(4.01) == 97
    assert Song(np.zeros((0, 5)), 12, tm.tempos, tm.signatures).seconds(108) == pytest.approx(5.0)


def test_bar_lines_follow_the_metre_and_go_on_forever():
    tm = changing_map()
    assert [tm.bar_start(i) for i in range(5)] == [0, 48, 96, 132, 168]
    assert list(tm.bar_starts(np.arange(5))) == [0, 48, 96, 132, 168]
    assert [tm.bar_of(s) for s in (0, 47, 48, 131, 132, 10_000)] == [0, 0, 1, 2, 3, 2 + (10_000 - 96) // 36]
    assert list(tm.bars_of([0, 47, 48, 131, 132])) == [0, 0, 1, 2, 3]
    assert tm.bar_at_or_after(49) == 2 and tm.beat_length(100) == 12
    assert TempoMap([], [(24, 3, 4)], 12).bar_start(1) == 24  # 4/4 before the first signature


def test_beats_are_bar_numbers_and_beats_in_seconds():
    tm = changing_map()
    lines = tm.beats(3.0, 5.0)  # half-open: the metronome
    assert lines == [(3.0, 0), (3.5, 0), (4.0, 3)]
    assert tm.beats(3.0, 5.0, closed=True)[-1] == (5.0, 0)  # the piano roll draws the last line too


def test_studio_changes_start_at_the_next_bar():
    tm = TempoMap.steady(120, (4, 4), TICKS)
    tm.change(3.0, bpm=60)  # in bar 2 (2-4 s): from bar 3 on, at 4 s
    assert tm.seconds(8 * TICKS) == pytest.approx(4.0) and tm.seconds(9 * TICKS) == pytest.approx(5.0)
    assert tm.next_beat(4.2) == pytest.approx(5.0) and tm.step_at(5.0) == pytest.approx(9 * TICKS)
    assert tm.next_bar(3.0) == 8 * TICKS and tm.bpm == 60
    tm.change(4.5, metre=(3, 4))
    assert tm.metre == (3, 4) and tm.bar_start(3) == 12 * TICKS and tm.bar_start(4) == 15 * TICKS
    on_model_grid = tm.on_grid(12)
    assert on_model_grid.tempos == [(0, 500_000), (96, 1_000_000)] and on_model_grid.signatures[-1] == (144, 3, 4)
    assert tm.next_step(4.01, 12) == pytest.approx(4.0 + 1 / 12)
    tm.restart(90, (6, 8))
    assert tm.tempos == [(0, 666_667)] and tm.metre == (6, 8) and tm.bar_seconds() == pytest.approx(2.0)
