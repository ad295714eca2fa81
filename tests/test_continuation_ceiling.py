"""benchmarks/continuation.py --ceiling: the real music scored against its own other bars."""
from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from melodylstm.midi import Song, write_midi

from conftest import ROOT


def _continuation():
    spec = importlib.util.spec_from_file_location("continuation_bench", ROOT / "benchmarks" / "continuation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["continuation_bench"] = module
    spec.loader.exec_module(module)
    return module


def _line(bar_lengths) -> Song:
    """A 4/4 melody, one list of note lengths (quarters = 12 steps) per bar; None is a rest."""
    notes, t = [], 0
    for lengths in bar_lengths:
        for d in lengths:
            if d is not None:
                notes.append((t, d, 60 + len(notes) % 5, 80, 0))
            t += d if d is not None else 12
    return Song(np.array(notes), 12, [(0, 500000)], [(0, 4, 4)], {0: "melody"})


def test_a_melody_that_repeats_every_four_bars_reaches_itself_exactly(tmp_path):
    bars = [[12, 12, 24], [6, 6, 12, 24], [48], [12, None, 12, 12]] * 3
    for i in range(3):
        write_midi(_line(bars), tmp_path / f"p{i}.mid")
    row = _continuation().ceiling(tmp_path).split("|")
    assert row[2].strip() == "3"
    assert row[3].strip() == "1.00 / 1.00" and row[4].strip() == "1.00 / 1.00"
    silent = [float(x) for x in row[5].split("/")]
    assert silent == [pytest.approx(12 / (16 * 12), abs=1e-3)] * 3  # one quarter rest in 4 bars


def test_a_melody_that_slows_down_is_scored_as_unlike_its_opening(tmp_path):
    quick, slow = [[12, 12, 12, 12]] * 4, [[48]] * 4
    for i in range(2):
        write_midi(_line(quick + slow + slow), tmp_path / f"p{i}.mid")
    row = _continuation().ceiling(tmp_path).split("|")
    assert row[3].strip() == "0.00 / 1.00"
