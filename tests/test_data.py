import json
import os

import numpy as np
import pytest

from melodylstm.data import (TokenCache, WindowSampler, find_midi_files, is_validation, load_corpus,
                             shift_velocities, split_results, tokenize_files, transpose_pitches)
from melodylstm.midi import write_midi
from melodylstm.tokenizer import Tokenizer

from conftest import shared_files
from helpers import cli, scale_song

TOK = Tokenizer()


def test_scan_finds_nested_files_any_case_and_skips_broken_ones_with_reasons(tiny_corpus, tmp_path):
    report, store = load_corpus(tiny_corpus, TOK, cache_dir=tmp_path / "cache", jobs=2)
    assert report["files_found"] == 14 and report["files_used"] == 12
    reasons = {os.path.basename(s["path"]): s["reason"] for s in report["files_skipped"]}
    assert reasons["broken.mid"].startswith("unreadable MIDI")
    assert reasons["notmidi.MID"] == "not a MIDI file (no MThd header)"
    assert report["notes"] > 0 and report["tokens"] > report["notes"] * 3 and report["seconds"] > 0
    assert len(store.train) + len(store.val) == report["tokens"]
    assert isinstance(store.train, np.memmap)


def test_cache_hit_returns_identical_tokens(tiny_corpus, tmp_path):
    files, _ = find_midi_files(tiny_corpus)
    first = tokenize_files(files, TOK, str(tmp_path), jobs=1)
    second = tokenize_files(files, TOK, str(tmp_path), jobs=1)
    assert not any(r.cached for r in first) and all(r.cached for r in second)
    for a, b in zip(first, second):
        assert a.reason == b.reason and a.notes == b.notes
        if a.tokens is not None:
            assert np.array_equal(a.tokens, b.tokens)
    # a different tokenizer config does not reuse the entries
    other = Tokenizer(TOK.config.__class__(resolution=8))
    assert not any(r.cached for r in tokenize_files(files, other, str(tmp_path), jobs=1))


def test_damaged_cache_entry_is_recomputed(tiny_corpus, tmp_path):
    files, _ = find_midi_files(tiny_corpus)
    good = tokenize_files(files[:1], TOK, str(tmp_path), jobs=1)[0]
    entry = TokenCache(tmp_path, TOK)._path(good.content_hash)
    entry.write_bytes(b"junk")
    again = tokenize_files(files[:1], TOK, str(tmp_path), jobs=1)[0]
    assert not again.cached and np.array_equal(again.tokens, good.tokens)


def test_split_is_stable_when_files_are_added(tmp_path):
    for i in range(30):
        write_midi(scale_song(100 + i, bars=2), tmp_path / f"a{i}.mid")
    files, _ = find_midi_files(tmp_path)
    results = tokenize_files(files, TOK, None, jobs=1)
    _, val = split_results(results, 0.2)
    for i in range(30):
        write_midi(scale_song(500 + i, bars=2), tmp_path / f"b{i}.mid")
    files, _ = find_midi_files(tmp_path)
    more = tokenize_files(files, TOK, None, jobs=1)
    _, val_more = split_results(more, 0.2)
    old = {r.content_hash for r in val}
    assert old <= {r.content_hash for r in val_more}
    assert all(is_validation(h, 0.2) for h in old)


def test_windows_are_deterministic_and_transposition_stays_in_range():
    tokens = TOK.encode(scale_song(1, bars=32)).astype(np.uint16)
    a = WindowSampler(tokens, TOK, 64, 8, seed=3, transpose=6)
    b = WindowSampler(tokens, TOK, 64, 8, seed=3, transpose=6)
    x, y = a.next_batch(), b.next_batch()
    assert np.array_equal(x, y) and x.shape == (8, 65)
    plain = WindowSampler(tokens, TOK, 64, 8, seed=3, transpose=0).next_batch()
    is_pitch = (plain >= TOK.pitch0) & (plain <= TOK.pitch_token(TOK.config.pitch_high))
    assert np.array_equal(x[~is_pitch], plain[~is_pitch])  # only pitches move
    shift = (x - plain)[is_pitch]
    per_row = [(x[i] - plain[i])[is_pitch[i]] for i in range(8)]
    assert all(len(set(r.tolist())) <= 1 for r in per_row)  # one interval per window
    assert np.abs(shift).max() <= 6 and np.abs(shift).max() > 0


def test_transposition_never_leaves_the_pitch_range():
    rng = np.random.default_rng(0)
    top = TOK.pitch_token(TOK.config.pitch_high)
    batch = np.full((50, 10), top, dtype=np.int64)
    transpose_pitches(batch, TOK, 12, rng)
    assert (batch <= top).all() and (batch >= TOK.pitch0).all()


def test_velocity_shift_moves_a_windows_dynamics_as_one_and_stays_in_range():
    tokens = TOK.encode(scale_song(1, bars=32)).astype(np.uint16)
    shifted = WindowSampler(tokens, TOK, 64, 400, seed=3, velocity_shift=10, velocity_share=0.5).next_batch()
    plain = WindowSampler(tokens, TOK, 64, 400, seed=3).next_batch()
    is_velocity = (plain >= TOK.velocity0) & (plain < TOK.velocity0 + len(TOK.velocities))
    assert np.array_equal(shifted[~is_velocity], plain[~is_velocity])  # only velocities move
    per_row = [set((shifted[i] - plain[i])[is_velocity[i]].tolist()) for i in range(len(plain))]
    assert all(len(r) == 1 for r in per_row)  # one shift per window
    moves = np.array([r.pop() for r in per_row])
    assert np.abs(moves).max() == 10 and 0.35 < (moves == 0).mean() < 0.65  # about half keep their dynamics
    loud = np.full((50, 10), TOK.velocity0 + len(TOK.velocities) - 1, dtype=np.int64)
    assert (shift_velocities(loud, TOK, 10, np.random.default_rng(0)) <= 0).all()  # never past the loudest bin
    assert (loud < TOK.velocity0 + len(TOK.velocities)).all()


def test_data_command_json_and_one_line_errors(tiny_corpus, tmp_path):
    result = cli("data", str(tiny_corpus), "--json", "--cache-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"files_found", "files_used", "files_skipped", "notes", "tokens", "seconds"} <= set(report)
    assert all(set(s) == {"path", "reason"} for s in report["files_skipped"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "bad.mid").write_bytes(b"\x00" * 100)
    result = cli("data", str(empty), "--cache-dir", str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "no usable MIDI" in result.stderr.strip().splitlines()[-1]


def test_malformed_real_files_are_skipped_with_reasons(tmp_path):
    files = shared_files("malformed-from-repos/**/*.mid")
    if not files:
        pytest.skip("../shared/midi is not present")
    results = tokenize_files(files, TOK, None, jobs=1)
    assert all(r.reason for r in results if r.tokens is None)
    assert sum(bool(r.reason) for r in results) >= 5


def test_symlink_loops_and_directories_named_mid_do_not_break_the_scan(tmp_path):
    write_midi(scale_song(1), tmp_path / "ok.mid")
    (tmp_path / "folder.mid").mkdir()
    os.symlink(tmp_path, tmp_path / "loop")
    files, skipped = find_midi_files(tmp_path)
    assert [f.name for f in files] == ["ok.mid"]
    assert skipped[0]["reason"] == "is a directory"


def test_unchanged_folder_is_served_from_the_manifest_and_changes_are_seen(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        write_midi(scale_song(i, bars=2), corpus / f"s{i}.mid")
    first, store1 = load_corpus(corpus, TOK, cache_dir=tmp_path / "cache", jobs=1)
    second, store2 = load_corpus(corpus, TOK, cache_dir=tmp_path / "cache", jobs=1)
    assert second["cache_hits"] == second["files_found"] == 6 and second["notes"] == first["notes"]
    assert np.array_equal(store1.train, store2.train)
    write_midi(scale_song(99, bars=8), corpus / "s0.mid")  # an edited file
    os.utime(corpus / "s0.mid", ns=(1, 1))
    third, _ = load_corpus(corpus, TOK, cache_dir=tmp_path / "cache", jobs=1)
    assert third["notes"] != first["notes"] and third["cache_hits"] == 5


def test_subfolders_that_are_not_the_checkpoints_styles_are_reported(tmp_path):
    """Fine-tuning keeps the checkpoint's styles: a folder named otherwise trains with no style,
    and the report says which (a user's chorales/ and tunes/ against chorale and tune)."""
    corpus = tmp_path / "corpus"
    for name, count in (("tune", 2), ("tunes", 3), ("jigs", 1)):
        (corpus / name).mkdir(parents=True)
        for i in range(count):
            write_midi(scale_song(len(name) * 10 + i, bars=2), corpus / name / f"s{i}.mid")
    report, _ = load_corpus(corpus, TOK, cache_dir=tmp_path / "cache", jobs=1, styles=["chorale", "tune"])
    assert report["styles"] == {"chorale": 0, "tune": 2}
    assert report["styles_unmatched"] == {"jigs": 1, "tunes": 3}
    own, _ = load_corpus(corpus, TOK, cache_dir=tmp_path / "cache", jobs=1)  # a new model: the folders are its styles
    assert "styles_unmatched" not in own and own["styles"] == {"jigs": 1, "tune": 2, "tunes": 3}
