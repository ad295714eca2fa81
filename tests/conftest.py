"""Shared fixtures: small corpora written by the tests themselves (public-domain material only),
and the ../shared MIDI collection when it is present (skipped otherwise)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from melodylstm.midi import write_midi

from helpers import scale_song

ROOT = Path(__file__).resolve().parent.parent
SHARED_MIDI = ROOT.parent / "shared" / "midi"
BACH = ROOT / "datasets" / "bach_chorales"

os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
os.environ.setdefault("SDL_NO_SIGNAL_HANDLERS", "1")


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(12):
        sub = folder / ("nested" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        write_midi(scale_song(i), sub / f"song{i}.mid")
    (folder / "broken.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage")
    (folder / "notmidi.MID").write_text("hello")
    (folder / "readme.txt").write_text("not scanned")
    return folder


@pytest.fixture(scope="session")
def bach_files():
    files = sorted(BACH.glob("*.mid"))
    if not files:
        pytest.skip("datasets/bach_chorales is not built")
    return files


def shared_files(pattern: str):
    return sorted(SHARED_MIDI.glob(pattern)) if SHARED_MIDI.exists() else []


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """A small model with random weights: the grammar alone must keep its samples decodable."""
    import torch

    from melodylstm.checkpoint import save_checkpoint
    from melodylstm.config import ModelConfig
    from melodylstm.model import MelodyLSTM
    from melodylstm.tokenizer import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer()
    path = tmp_path_factory.mktemp("ck") / "untrained.safetensors"
    save_checkpoint(path, MelodyLSTM(ModelConfig(len(tok), 16, 64, 2, 0.0)), tok)
    return path
