"""Hostile input across the commands: one-line errors or clean skips, never a traceback or a hang,
and no partial output left behind."""
import os
import random
from pathlib import Path

import numpy as np
import pytest

from melodylstm.data import load_corpus
from melodylstm.midi import MidiError, midifile_bytes, read_midi_bytes, song_to_midifile
from melodylstm.tokenizer import Tokenizer

from helpers import invoke, scale_song
from hostile_midi import cases, write_all

TOK = Tokenizer()
REGRESSIONS = Path(__file__).parent / "hostile"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    paths = write_all(folder)
    (folder / "folder.mid").mkdir()
    os.symlink(folder, folder / "loop")
    locked = folder / "locked.mid"
    locked.write_bytes(cases()["good.mid"])
    locked.chmod(0)
    return folder, paths


@pytest.fixture(scope="module")
def checkpoint(untrained_checkpoint):
    return untrained_checkpoint


def test_data_survives_a_hostile_folder(hostile, tmp_path):
    folder, paths = hostile
    report, store = load_corpus(folder, TOK, cache_dir=tmp_path, jobs=2)
    reasons = {os.path.basename(s["path"]): s["reason"] for s in report["files_skipped"]}
    assert store is not None and report["files_used"] >= 10
    for name in ("empty.mid", "text.mid", "smpte.mid", "zero_division.mid", "no_notes.mid", "folder.mid"):
        assert reasons[name], name
    if os.geteuid() != 0:  # root reads anything
        assert "locked.mid" in reasons
    assert all("\n" not in r for r in reasons.values())


@pytest.mark.parametrize("name", sorted(cases()))
def test_single_file_commands_never_crash(hostile, checkpoint, tmp_path, name):
    path = hostile[1][name]
    for command in (["roundtrip", path, "-o", tmp_path / "rt.mid"],
                    ["continue", path, "-o", tmp_path / "c.mid", "-c", checkpoint, "--bars", "1", "--seed", "0"],
                    ["show", path, "-o", tmp_path / "roll.png", "--width", "200", "--height", "100"],
                    ["render", path, "-o", tmp_path / "a.wav", "--synth", "numpy"]):
        out = Path(command[3])
        result = invoke(*command)
        if result.exit_code == 0 and out.suffix == ".mid":
            read_midi_bytes(out.read_bytes(), 12)  # what we write always reads back
        elif result.exit_code == 0:
            assert out.stat().st_size > 0
        else:
            assert result.exit_code == 1
            assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error:")
            assert not out.exists()
        assert not list(tmp_path.glob(".*.tmp"))  # no temporary leftovers


def mutate(data: bytes, rng: random.Random, donors) -> bytes:
    data = bytearray(data)
    kind = rng.random()
    if kind < 0.35:
        return bytes(data[: rng.randrange(len(data))])
    if kind < 0.75:
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    other = rng.choice(donors)
    return bytes(data[: rng.randrange(len(data))]) + other[rng.randrange(len(other)):]


def fuzz_inputs():
    seeds = [midifile_bytes(song_to_midifile(scale_song(i, bars=4))) for i in range(6)]
    seeds += [data for name, data in cases().items() if len(data) < 100_000]
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "midi" / "nottingham"
    seeds += [p.read_bytes() for p in sorted(shared.glob("*.mid"))[:10]] if shared.exists() else []
    return [s for s in seeds if s]


def test_mutation_fuzzer_finds_no_crash():
    """Byte flips, truncations and splices of real files: every input either reads or raises
    MidiError, and whatever reads tokenizes and round-trips exactly."""
    rng = random.Random(1234)
    seeds = fuzz_inputs()
    cases_to_try = int(os.environ.get("MELODYLSTM_FUZZ_CASES", "400"))
    crashes = []
    for i in range(cases_to_try):
        data = mutate(rng.choice(seeds), rng, seeds)
        try:
            song = read_midi_bytes(data, 12)
            tokens, kept, _ = TOK.tokenize(song)
            assert np.array_equal(TOK.decode(tokens, like=kept).notes, kept.notes)
        except MidiError:
            pass
        except Exception as exc:  # noqa: BLE001 - a crash to record
            crashes.append((i, repr(exc)))
            (REGRESSIONS / f"fuzz-{i}.mid").write_bytes(data)
    assert not crashes, crashes


def test_regression_files_stay_fixed():
    for path in sorted(REGRESSIONS.glob("*.mid")):
        try:
            song = read_midi_bytes(path.read_bytes(), 12)
            TOK.tokenize(song)
        except MidiError:
            pass


def test_evaluate_survives_a_hostile_folder(hostile, checkpoint):
    result = invoke("evaluate", hostile[0], "-c", checkpoint, "--baseline-train", hostile[0], "--json")
    assert result.exit_code == 0, result.output
    import json

    report = json.loads(result.output[result.output.index("{"):])
    assert report["files"] >= 10 and len(report["files_skipped"]) >= 6


def test_output_path_is_never_an_input(hostile, tmp_path):
    good = Path(hostile[1]["good.mid"])
    before = good.read_bytes()
    for command in (["roundtrip", good, "-o", good], ["continue", good, "-o", good]):
        result = invoke(*command)
        assert result.exit_code == 1 and "is the input file" in result.output
    assert good.read_bytes() == before


def test_read_only_output_folder_is_a_clear_error(hostile, checkpoint, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    result = invoke("roundtrip", hostile[1]["good.mid"], "-o", ro / "x.mid")
    assert result.exit_code == 1 and "ermission" in result.output
