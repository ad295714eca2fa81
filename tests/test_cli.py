import subprocess
import sys
import time

import pretty_midi
import pytest

from melodylstm import __version__
from melodylstm.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint

from helpers import cli


def test_help_is_fast_and_lists_the_commands():
    cli("--help")  # warm the file cache
    start = time.perf_counter()
    result = cli("--help")
    elapsed = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("data", "train", "generate", "continue", "roundtrip", "bench", "export"):
        assert f"  {command}" in result.stdout
    assert elapsed < 1.5  # the README figure is measured by `melodylstm bench`; this only catches a torch import
    assert "torch" not in subprocess.run([sys.executable, "-X", "importtime", "-m", "melodylstm", "--help"],
                                         capture_output=True, text=True).stderr


def test_version_and_quiet():
    assert cli("--version").stdout.strip().endswith(__version__)


def test_train_on_a_folder_without_midi_is_a_one_line_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    result = cli("train", str(tmp_path), "-o", str(tmp_path / "run"))
    assert result.returncode == 1 and "no usable MIDI" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    result = cli("generate", "-c", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.mid"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Usage:" not in result.stderr  # one line, no usage block
    result = cli("continue", str(tmp_path / "missing.mid"), "-o", str(tmp_path / "x.mid"))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"Error: Invalid value for 'MIDI_IN': File '{tmp_path / 'missing.mid'}' does not exist. "
        "(see melodylstm continue --help)")


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.exists(), reason="the default model is not built")
def test_first_command_makes_music_with_the_bundled_model(tmp_path):
    result = cli("generate", "-o", str(tmp_path / "song.mid"), "--bars", "8", "--seed", "1")
    assert result.returncode == 0, result.stderr
    pm = pretty_midi.PrettyMIDI(str(tmp_path / "song.mid"))
    notes = [n for i in pm.instruments for n in i.notes]
    assert len(notes) > 20
    assert 12.0 <= pm.get_end_time() <= 16.0 + 1e-6  # 8 bars of 4/4 at 120 bpm, cut at the last bar line
    ckpt = load_checkpoint()
    assert ckpt.meta["val_nll"] is not None
