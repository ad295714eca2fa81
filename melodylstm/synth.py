"""Synthesizers that turn note events into PCM, first available wins:
FluidSynth (pyfluidsynth + the system library) > TinySoundFont (PyPI wheels) > a small numpy
synth that always works. The SoundFont: --soundfont, else $MELODYLSTM_SOUNDFONT, else the
General MIDI SoundFont that the pretty_midi package ships (TimGM6mb.sf2)."""
from __future__ import annotations

import os

import numpy as np

SAMPLE_RATE = 44100
DRUM_CHANNEL = 9


class SynthError(RuntimeError):
    pass


def find_soundfont(path=None) -> str | None:
    if path:
        if not os.path.isfile(path):
            raise SynthError(f"SoundFont not found: {path}")
        return str(path)
    env = os.environ.get("MELODYLSTM_SOUNDFONT")
    if env and os.path.isfile(env):
        return env
    try:
        import pretty_midi

        bundled = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
        return bundled if os.path.isfile(bundled) else None
    except ImportError:
        return None


class NumpySynth:
    """Additive synth: a few harmonics with an attack-decay-release envelope; noise for drums."""

    name = "numpy"

    def __init__(self, sample_rate=SAMPLE_RATE):
        self.sr = sample_rate
        self.voices = {}  # (channel, pitch) -> [frequency, amplitude, age in frames, release age or None]
        self.rng = np.random.default_rng(0)

    def program(self, channel, program):
        pass  # one timbre for every instrument

    def note_on(self, channel, pitch, velocity):
        freq = 440.0 * 2 ** ((pitch - 69) / 12)
        self.voices[(channel, pitch)] = [freq, 0.12 * (velocity / 127) ** 1.5, 0, None]

    def note_off(self, channel, pitch):
        voice = self.voices.get((channel, pitch))
        if voice is not None and voice[3] is None:
            voice[3] = voice[2]

    def all_off(self):
        self.voices.clear()

    def render(self, frames: int) -> np.ndarray:
        out = np.zeros(frames, dtype=np.float32)
        t = np.arange(frames, dtype=np.float64)
        attack, decay, release = 0.005 * self.sr, 0.3 * self.sr, 0.12 * self.sr
        for key, voice in list(self.voices.items()):
            freq, amp, age, released = voice
            ages = age + t
            env = np.minimum(ages / attack, 1.0) * (0.55 + 0.45 * np.exp(-ages / decay))
            if released is not None:
                env *= np.clip(1 - (ages - released) / release, 0.0, 1.0)
            if key[0] == DRUM_CHANNEL:
                wave = self.rng.standard_normal(frames) * np.exp(-ages / (0.05 * self.sr))
            else:
                phase = 2 * np.pi * freq * ages / self.sr
                wave = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.1 * np.sin(3 * phase)
            out += (amp * env * wave).astype(np.float32)
            voice[2] = age + frames
            finished = (released is not None and age + frames - released > release) or \
                       (key[0] == DRUM_CHANNEL and age > 0.5 * self.sr)
            if finished:
                del self.voices[key]
        return np.repeat(out[:, None], 2, axis=1)

    def silent(self) -> bool:
        return not self.voices


class SoundFontSynth:
    """What FluidSynth and TinySoundFont share: both bindings name their calls alike."""

    def _setup(self, engine, soundfont: str, **drum_flag):
        self.engine, self.active = engine, set()
        self.sfid = engine.sfload(soundfont)
        for ch in range(16):
            engine.program_select(ch, self.sfid, 128 if ch == DRUM_CHANNEL else 0, 0,
                                  **(drum_flag if ch == DRUM_CHANNEL else {}))

    def program(self, channel, program):
        if channel != DRUM_CHANNEL:
            self.engine.program_select(channel, self.sfid, 0, program)

    def note_on(self, channel, pitch, velocity):
        self.engine.noteon(channel, pitch, velocity)
        self.active.add((channel, pitch))

    def note_off(self, channel, pitch):
        self.engine.noteoff(channel, pitch)
        self.active.discard((channel, pitch))

    def silent(self) -> bool:
        return not self.active


class TinySoundFontSynth(SoundFontSynth):
    name = "tinysoundfont"

    def __init__(self, soundfont: str, sample_rate=SAMPLE_RATE):
        import tinysoundfont

        self._setup(tinysoundfont.Synth(gain=-3, samplerate=sample_rate), soundfont, is_drums=True)

    def all_off(self):
        self.engine.notes_off()
        self.active.clear()

    def render(self, frames: int) -> np.ndarray:
        return np.frombuffer(self.engine.generate(frames), dtype=np.float32).reshape(frames, 2).copy()


class FluidSynthSynth(SoundFontSynth):
    name = "fluidsynth"

    def __init__(self, soundfont: str, sample_rate=SAMPLE_RATE):
        import fluidsynth  # pyfluidsynth; needs the system libfluidsynth

        self._setup(fluidsynth.Synth(samplerate=float(sample_rate)), soundfont)

    def all_off(self):
        for ch in range(16):
            self.engine.cc(ch, 123, 0)
        self.active.clear()

    def render(self, frames: int) -> np.ndarray:
        samples = np.asarray(self.engine.get_samples(frames), dtype=np.float32) / 32768.0
        return samples.reshape(frames, 2)


def make_synth(kind: str = "auto", soundfont=None, sample_rate=SAMPLE_RATE):
    """The requested synth, or for 'auto' the best one that loads here."""
    font = find_soundfont(soundfont)
    order = ["fluidsynth", "tinysoundfont", "numpy"] if kind == "auto" else [kind]
    errors = []
    for name in order:
        try:
            if name == "numpy":
                return NumpySynth(sample_rate)
            if font is None:
                raise SynthError("no SoundFont found")
            if name == "fluidsynth":
                return FluidSynthSynth(font, sample_rate)
            if name == "tinysoundfont":
                return TinySoundFontSynth(font, sample_rate)
            raise SynthError(f"unknown synth {name!r}")
        except (ImportError, OSError, SynthError, Exception) as exc:  # noqa: BLE001 - try the next one
            errors.append(f"{name}: {exc}")
    raise SynthError("no synthesizer could start (" + "; ".join(errors) + ")")
