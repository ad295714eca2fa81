"""What several test files use: the command line run two ways, the scale-song corpus piece, and
probes of rendered audio (WAV files and SDL's disk-audio captures)."""
from __future__ import annotations

import subprocess
import sys
import wave

import numpy as np
from click.testing import CliRunner

from melodylstm.cli import cli as melodylstm
from melodylstm.midi import Song

SR = 44100


# ---------------------------------------------------------------- the command line

def cli(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """`melodylstm ARGS` in a child process (text output captured)."""
    return subprocess.run([sys.executable, "-m", "melodylstm", *args], capture_output=True, text=True,
                          timeout=timeout, **kw)


def invoke(*args):
    """`melodylstm ARGS` in this process; any exception but an exit fails the test."""
    result = CliRunner().invoke(melodylstm, [str(a) for a in args], catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


# ---------------------------------------------------------------- music

def scale_song(seed: int, bars: int = 8, resolution: int = 12, program: int = 0) -> Song:
    """A simple melody with chords, deterministic per seed."""
    rng = np.random.default_rng(seed)
    notes, t = [], 0
    steps = [3, 6, 12]
    major = [0, 2, 4, 5, 7, 9, 11]
    while t < bars * 4 * resolution:
        d = int(rng.choice(steps))
        pitch = 60 + major[int(rng.integers(0, 7))] + 12 * int(rng.integers(-1, 1))
        notes.append((t, d, pitch, int(rng.integers(60, 110)), program))
        if t % (4 * resolution) == 0:
            notes.append((t, 4 * resolution, 48, 70, program))
            notes.append((t, 4 * resolution, 55, 70, program))
        t += d
    return Song(np.array(notes), resolution, [(0, 500000)], [(0, 4, 4)], {program: "melody"})


# ---------------------------------------------------------------- audio

def read_wav(path) -> np.ndarray:
    """The left channel of a 16-bit stereo WAV file, in [-1, 1)."""
    with wave.open(str(path)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)[:, 0] / 32768.0


def onsets(signal, window=441, threshold=0.004) -> list:
    """Seconds where the short-time energy jumps up (10 ms frames)."""
    frames = len(signal) // window
    energy = np.sqrt((signal[: frames * window].reshape(frames, window) ** 2).mean(axis=1))
    before = np.concatenate([[0.0], energy[:-1]])  # silence before the start
    found = []
    for i in np.flatnonzero((energy > threshold) & (energy > 2.5 * before + 1e-4)):
        if not found or i * window / SR - found[-1] > 0.1:
            found.append(i * window / SR)
    return found
