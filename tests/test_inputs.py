"""Bounds and early checks on what users type and give (issue 22): chord files, style names, keys,
checkpoint metadata, and a full disk. Each bad input is one line and exit 1, and leaves nothing."""
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from melodylstm import controls, fileio, theory
from melodylstm.checkpoint import DEFAULT_CHECKPOINT, CheckpointError, load_checkpoint
from melodylstm.data import parse_sources
from melodylstm.theory import parse_key

from helpers import invoke


def one_line_error(result, *words):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output[:500]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- chords

def test_chords_file_is_read_with_a_bound(tmp_path):
    with pytest.raises(ValueError, match="larger than 1 MB"):
        controls.read_chords_file("/dev/zero")  # would read until killed
    huge = tmp_path / "huge.txt"
    huge.write_text(" ".join(["C"] * 2_000_000))  # the 4 MB line of the issue
    with pytest.raises(ValueError, match="larger than"):
        controls.read_chords_file(huge)
    wide = tmp_path / "wide.txt"
    wide.write_text(" ".join(["C"] * 17))
    with pytest.raises(ValueError, match="line 1: 17 chords in one bar"):
        controls.read_chords_file(wide)
    long = tmp_path / "long.txt"
    long.write_text("C\n" * (controls.MAX_PROGRESSION_BARS + 1))
    with pytest.raises(ValueError, match="more than 4,096 bars"):
        controls.read_chords_file(long)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"C\x00G")
    with pytest.raises(ValueError, match="not a text file"):
        controls.read_chords_file(binary)
    with pytest.raises(ValueError, match="at most 4,096"):
        controls.parse_progression("C " * 5000)


def test_chords_file_blank_lines_and_comments():
    bars = controls.parse_chords_file("# intro\nC G\nF  # a comment\n# verse\nN.C.\nAm\n\n\n")
    assert [[theory.chord_label(c) for c in bar] for bar in bars] == [["C", "G"], ["F"], ["N.C."], ["Am"]]
    for text, line in (("C\n\nG\n", 2), ("\nC\n", 1), ("C\n   \nG", 2)):
        with pytest.raises(ValueError, match=f"line {line} is blank: write N.C."):
            controls.parse_chords_file(text)
    with pytest.raises(ValueError, match="line 2 holds no chord"):
        controls.parse_chords_file("C\n| |\n")
    with pytest.raises(ValueError, match=r"line 3: unparseable chord 'X{24}\.\.\.'"):
        controls.parse_chords_file("C\nG\n" + "X" * 1000)  # the message stays short


def test_chords_on_the_command_line_are_bounded_and_summarised_short(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(" ".join(["C"] * 2_000_000))
    one_line_error(invoke("generate", "-o", tmp_path / "a.mid", "--chords-file", big), "larger than 1 MB")
    assert not (tmp_path / "a.mid").exists()
    one_line_error(invoke("generate", "-o", tmp_path / "a.mid", "--chords-file", "/dev/zero"), "larger than 1 MB")
    blank = tmp_path / "blank.txt"
    blank.write_text("C\n\nG\n")
    one_line_error(invoke("generate", "-o", tmp_path / "a.mid", "--chords-file", blank), "line 2 is blank")
    many = tmp_path / "many.txt"
    many.write_text("Dm7 G7\nCmaj7\n" * 1000)
    result = invoke("generate", "-o", tmp_path / "a.mid", "--chords-file", many, "--bars", "1", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert "chords Dm7/G7 Cmaj7 Dm7/G7" in result.output and "(2,000 bars)" in result.output
    assert max(len(line) for line in result.output.splitlines()) < 400


# ---------------------------------------------------------------- style names

@pytest.mark.parametrize("name", ["../../../escaped", "/abs/path", ".", "..", "a/b", "a\\b", "a\nError: fake",
                                  "tab\there", " padded", "x" * 65, "a\u2028b"])
def test_unsafe_style_names_are_refused(tiny_corpus, name):
    with pytest.raises(ValueError, match="style name"):
        parse_sources([f"{name}={tiny_corpus}"])
    with pytest.raises(ValueError, match="style name"):
        parse_sources([str(tiny_corpus)], style=name)


def test_safe_style_names_are_kept(tiny_corpus):
    for name in ("jig", "Bach chorales", "🎻", "x" * 64, "a.b", "reel-2"):
        assert parse_sources([f"{name}={tiny_corpus}"]) == [(tiny_corpus, name)]


def test_train_with_an_unsafe_style_name_writes_nothing(tiny_corpus, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for name in ("../../../escaped", str(tmp_path / "abs"), ".", "a\nError: fake"):
        line = one_line_error(invoke("train", f"{name}={tiny_corpus}", "--max-steps", "1", "--no-cache"), "style name")
        assert "\\n" in line or "\n" not in name
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c"]


def test_a_subfolder_style_with_a_line_break_is_refused(tmp_path):
    from melodylstm.data import load_corpus
    from melodylstm.midi import write_midi
    from melodylstm.tokenizer import Tokenizer

    from helpers import scale_song

    (tmp_path / "bad\nname").mkdir()
    write_midi(scale_song(0), tmp_path / "bad\nname" / "a.mid")
    with pytest.raises(ValueError, match="control character or line break"):
        load_corpus(tmp_path, Tokenizer(), use_cache=False, jobs=1)


# ---------------------------------------------------------------- keys

def test_empty_key_and_empty_scale_are_errors(tmp_path):
    for text in ("", "C:", "C: ", ":", " "):
        with pytest.raises(ValueError, match="unknown key"):
            parse_key(text)
    assert parse_key("C") == (0, "major") and parse_key("Bb:dorian") == (10, "dorian")
    for key in ("", "C:"):
        one_line_error(invoke("generate", "-o", tmp_path / "a.mid", "--key", key, "--bars", "1"), "unknown key")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- checkpoint metadata

def rewrite_checkpoint(path, **entries):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(DEFAULT_CHECKPOINT), framework="numpy") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    save_file(tensors, str(path), metadata={**metadata, **entries})
    return path


@pytest.mark.parametrize("entries, words", [
    ({"meta": "[1, 2]"}, "meta is a JSON array"),
    ({"meta": '"text"'}, "meta is a JSON string"),
    ({"meta": "null"}, "meta is a JSON null"),
    ({"train_state": "3"}, "train_state is a JSON number"),
    ({"meta": "[" * 100_000 + "]" * 100_000}, "recursion"),
    ({"meta": json.dumps({"key_prior": {"tune": [1, 2]}})}, "key_prior"),
    ({"meta": json.dumps({"key_prior": {"tune": [0] * 24}})}, "key_prior"),
    ({"meta": json.dumps({"sources": [[1, 2, 3]]})}, "sources"),
    ({"meta": json.dumps({"sources": "folder"})}, "'sources' is a JSON string"),
    ({"meta": json.dumps({"val_nll": "low"})}, "'val_nll' is a JSON string"),
    ({"meta": json.dumps({"corpus": {"notes": "many"}})}, "corpus"),
    ({"meta": json.dumps({"x": "y" * (9 << 20)})}, "at most 8,388,608"),
])
def test_checkpoint_meta_of_the_wrong_shape_is_one_line(tmp_path, entries, words):
    path = rewrite_checkpoint(tmp_path / "bad.safetensors", **entries)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_checkpoint(path)
    for command in (["info", path], ["generate", "-o", tmp_path / "x.mid", "--bars", "1", "-c", path]):
        line = one_line_error(invoke(*command), words)
        assert len(line) < 300 and "internal error" not in line
    assert not (tmp_path / "x.mid").exists()


def test_checkpoint_style_names_with_line_breaks_are_refused(tmp_path):
    from safetensors import safe_open

    with safe_open(str(DEFAULT_CHECKPOINT), framework="numpy") as fh:
        config = json.loads(fh.metadata()["model_config"])
    config["styles"][0] = "tune\nError: fake"
    path = rewrite_checkpoint(tmp_path / "bad.safetensors", model_config=json.dumps(config))
    one_line_error(invoke("info", path), "style name 'tune\\nError: fake' holds a control character")


def test_the_bundled_checkpoint_passes_the_meta_checks():
    assert load_checkpoint().meta["key_prior"]


# ---------------------------------------------------------------- disk full

def test_a_write_error_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "new" / "deeper" / "out.bin"

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(fileio.WriteError, match=f"cannot write {target}: No space left on device"):
        with fileio.atomic_path(target) as tmp:
            Path(tmp).write_bytes(b"partial")
            full(tmp)
    assert not list(tmp_path.iterdir())  # no temp file, no folders made for it

    class SafetensorError(Exception):
        pass

    error = fileio.write_error("x.safetensors", SafetensorError("Error while serializing: I/O error: "
                                                                "No space left on device (os error 28)"))
    assert isinstance(error, OSError) and str(error) == "cannot write x.safetensors: No space left on device"


def test_an_output_inside_a_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("song.mid").write_bytes(b"not a folder")
    line = one_line_error(invoke("generate", "-o", "song.mid/deeper/x.mid", "--bars", "1"), "is a file")
    assert line.endswith("cannot write song.mid/deeper/x.mid: song.mid is a file, not a folder")  # not "File exists"
    assert Path("song.mid").read_bytes() == b"not a folder"


def test_generate_into_new_folders_leaves_none_when_it_fails(tmp_path, monkeypatch):
    import melodylstm.midi as midi

    one_line_error(invoke("generate", "-o", f"{tmp_path / 'newdir'}{os.sep}", "--key", "Q:x"), "unknown key")
    assert not (tmp_path / "newdir").exists()

    real = midi.atomic_write_bytes

    def full_at_the_second(path, data):  # the disk fills up while the second of three files is written
        if str(path).endswith("-2.mid"):
            with fileio.atomic_path(path) as tmp:
                Path(tmp).write_bytes(data[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(path, data)

    monkeypatch.setattr(midi, "atomic_write_bytes", full_at_the_second)
    out = tmp_path / "d" / "e"
    line = one_line_error(invoke("generate", "-n", "3", "-o", f"{out}{os.sep}", "--bars", "1", "--seed", "0"),
                          "No space left on device")
    assert f"cannot write {out / 'melodylstm-2.mid'}" in line
    assert not list(tmp_path.iterdir())  # file 1, the temp file of 2 and both folders are gone
    (tmp_path / "keep.mid").write_bytes(b"mine")  # a file that was there before stays
    one_line_error(invoke("generate", "-n", "2", "-o", tmp_path / "keep.mid", "--bars", "1"), "No space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.mid"]


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs filled to the last byte (needs root and mount; skipped otherwise)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 512):
                pass
        except OSError:
            pass
        os.close(fd)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_is_one_line_naming_the_file(full_disk, tiny_corpus, untrained_checkpoint, tmp_path):
    song = next(tiny_corpus.glob("*.mid"))
    cases = [(["generate", "-o", full_disk / "new" / "a.mid", "--bars", "1"], full_disk / "new" / "a.mid"),
             (["generate", "-n", "2", "-o", f"{full_disk / 'dir'}{os.sep}", "--bars", "1"],
              full_disk / "dir" / "melodylstm-1.mid"),
             (["roundtrip", song, "-o", full_disk / "r.mid"], full_disk / "r.mid"),
             (["show", song, "-o", full_disk / "r.png", "--width", "200", "--height", "100"], full_disk / "r.png"),
             (["export", untrained_checkpoint, "-o", full_disk / "e.safetensors"], full_disk / "e.safetensors"),
             (["-q", "train", f"jig={tiny_corpus}", "--max-steps", "1", "--no-cache", "--hidden", "16", "--layers", "1",
               "--embedding", "8", "-o", full_disk / "runs" / "jig"], full_disk / "runs" / "jig" / "ingest.json")]
    for command, named in cases:
        one_line_error(invoke(*command), f"cannot write {named}: No space left on device")
        assert sorted(p.name for p in full_disk.iterdir()) == ["filler"], command


def test_train_on_a_full_disk_leaves_no_run_folder(tiny_corpus, tmp_path, monkeypatch):
    """safetensors reports a full disk as its own SafetensorError: one line naming the checkpoint,
    and the run folder this command made (ingest.json, metrics.jsonl) goes, as nothing can resume."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "runs" / "jig"
    line = one_line_error(invoke("-q", "train", f"jig={tiny_corpus}", "--max-steps", "1", "--no-cache", "--hidden", "16",
                                 "--layers", "1", "--embedding", "8", "-o", out), "No space left on device")
    assert f"cannot write {out}{os.sep}" in line and ".safetensors" in line
    assert not list(tmp_path.iterdir())
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")  # a folder that was there before stays, with its files
    one_line_error(invoke("-q", "train", f"jig={tiny_corpus}", "--max-steps", "1", "--no-cache", "--hidden", "16",
                          "--layers", "1", "--embedding", "8", "-o", out), "No space left on device")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["notes.txt"]
