"""Music theory: pitch, key and chord names, scales, key estimation and the in-key rate.

Keys are numbered 0..23 (tonics 0..11 major, then minor) with KEY_UNKNOWN after them; chords
12 roots x the QUALITIES, then NO_CHORD and CHORD_UNKNOWN. The controls use these numbers as
model inputs, so changing them changes what a checkpoint reads.
"""
from __future__ import annotations

import numpy as np

from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM

# ---------------------------------------------------------------- pitch names

PITCH_CLASS_NAMES = ["C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"]
LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}


def pitch_name(pitch: int) -> str:
    """60 -> 'C4'."""
    return f"{PITCH_CLASS_NAMES[pitch % 12]}{pitch // 12 - 1}"


def parse_pitch(text: str) -> int:
    """'60', 'C4', 'F#3', 'Bb5' -> MIDI number (C4 = 60)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        value = int(text)
    else:
        name = text[0].lower()
        if name not in LETTERS:
            raise ValueError(f"not a pitch: {text!r} (use a number 0-127 or a name like C4, F#3, Bb5)")
        rest, value = text[1:], LETTERS[name]
        while rest[:1] in ("#", "b") and not rest[:1].isdigit():
            value += 1 if rest[0] == "#" else -1
            rest = rest[1:]
        if not rest.lstrip("-").isdigit():
            raise ValueError(f"not a pitch: {text!r} (missing octave, e.g. C4)")
        value += 12 * (int(rest) + 1)
    if not 0 <= value <= 127:
        raise ValueError(f"pitch {text!r} is outside MIDI's 0-127")
    return value


def parse_pitch_range(text: str) -> tuple[int, int]:
    parts = text.split("-") if text.count("-") == 1 else None
    if not parts:
        raise ValueError(f"--pitch-range must look like LOW-HIGH (e.g. 48-84 or C3-C6), not {text!r}")
    low, high = parse_pitch(parts[0]), parse_pitch(parts[1])
    if low > high:
        raise ValueError(f"--pitch-range {text}: LOW is above HIGH")
    return low, high


# ---------------------------------------------------------------- scales and keys

SCALES = {
    "major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10],
    "harmonic-minor": [0, 2, 3, 5, 7, 8, 11], "melodic-minor": [0, 2, 3, 5, 7, 9, 11],
    "dorian": [0, 2, 3, 5, 7, 9, 10], "phrygian": [0, 1, 3, 5, 7, 8, 10], "lydian": [0, 2, 4, 6, 7, 9, 11],
    "mixolydian": [0, 2, 4, 5, 7, 9, 10], "locrian": [0, 1, 3, 5, 6, 8, 10],
    "major-pentatonic": [0, 2, 4, 7, 9], "minor-pentatonic": [0, 3, 5, 7, 10], "blues": [0, 3, 5, 6, 7, 10],
}
MODES = ("major", "minor")  # the scales a key number can name
KEY_UNKNOWN = 24
N_KEYS = 25


def parse_key(text: str) -> tuple[int, str]:
    """'D:minor', 'F#', 'Bb:dorian' -> (tonic pitch class, scale name)."""
    tonic_text, colon, scale = text.partition(":")
    scale = (scale if colon else "major").strip().lower().replace("_", "-").replace(" ", "-")  # "C:" names no scale
    tonic_text = tonic_text.strip()
    if not tonic_text or tonic_text[0].lower() not in LETTERS or scale not in SCALES:
        raise ValueError(f"unknown key {text!r}: use TONIC[:SCALE], e.g. D:minor, F#, Bb:dorian "
                         f"(scales: {', '.join(SCALES)})")
    tonic = LETTERS[tonic_text[0].lower()]
    for ch in tonic_text[1:]:
        if ch not in "#b":
            raise ValueError(f"unknown key {text!r}")
        tonic += 1 if ch == "#" else -1
    return tonic % 12, scale


def key_name(tonic: int, scale: str) -> str:
    return f"{PITCH_CLASS_NAMES[tonic]}:{scale}"


def key_index(tonic: int, mode: str) -> int:
    return tonic % 12 + (12 if mode == "minor" else 0)


def key_of_index(index: int) -> tuple[int, str]:
    return index % 12, MODES[index // 12]


def key_label(index: int) -> str:
    if index == KEY_UNKNOWN:
        return "unknown"
    return key_name(*key_of_index(index))


def in_key_rate(notes: np.ndarray, key: tuple[int, str]) -> float:
    """Share of pitched notes whose pitch class is in the key's scale (NaN without any)."""
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    if len(pitched) == 0:
        return float("nan")
    tonic, scale = key
    return float(np.isin((pitched[:, PITCH] - tonic) % 12, SCALES[scale]).mean())


# ---------------------------------------------------------------- key estimation

# Krumhansl-Kessler key profiles
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Temperley-Kostka-Payne profiles (Temperley 2007): the key of a melody. Krumhansl-Kessler's
# probe-tone ratings fit harmony; on a tune's first 4 bars they name the piece's labelled key
# (its key signature and mode) for 43% of the held-out chorale sopranos and 60% of the
# Nottingham melodies, these for 65% and 92% (benchmarks/README.md, "The primer's key").
MELODY_MAJOR_PROFILE = np.array([0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400])
MELODY_MINOR_PROFILE = np.array([0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330])


def rotated_profiles(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """The 24 rotated profiles, major tonics 0..11 then minor: row i is key index i."""
    return np.array([np.roll(p, t) for p in (major, minor) for t in range(12)])


def centred(profiles: np.ndarray) -> np.ndarray:
    """Rows with mean 0 and norm 1: one matrix product then gives all 24 correlations."""
    c = profiles - profiles.mean(axis=1, keepdims=True)
    return c / np.sqrt((c ** 2).sum(axis=1, keepdims=True))


KEY_PROFILES = rotated_profiles(MAJOR_PROFILE, MINOR_PROFILE)
MELODY_PROFILES = rotated_profiles(MELODY_MAJOR_PROFILE, MELODY_MINOR_PROFILE)


def key_histogram(notes: np.ndarray) -> np.ndarray:
    """Duration-weighted pitch-class histogram of the pitched notes (drums excluded)."""
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    if len(pitched) == 0:
        raise ValueError("no pitched notes to estimate a key from")
    return np.bincount(pitched[:, PITCH] % 12, weights=pitched[:, DURATION], minlength=12)


def key_correlations(hist: np.ndarray, profiles: np.ndarray) -> np.ndarray | None:
    """The histogram's correlation with each of the 24 profiles; None for a flat histogram."""
    h = hist - hist.mean()
    norm = np.sqrt((h * h).sum())
    if not norm > 0 or not np.isfinite(norm):
        return None
    return centred(profiles) @ (h / norm)


def best_key(hist: np.ndarray, profiles: np.ndarray = KEY_PROFILES) -> int:
    """Index (0..23) of the profile best correlated with `hist`; 0 (C major) when no correlation
    is defined (a flat histogram).

    All 24 correlations come from one matrix product; keys within 1e-9 of the best are then
    re-scored with np.corrcoef in key order, so the answer (ties and rounding included) is the
    one 24 np.corrcoef calls give."""
    r = key_correlations(hist, profiles)
    if r is None:
        return 0  # corrcoef is nan for every key: the first key stays
    near = np.flatnonzero(r >= r.max() - 1e-9)
    if len(near) == 1:
        return int(near[0])
    best, best_index = -2.0, 0
    for i in near.tolist():
        value = np.corrcoef(hist, profiles[i])[0, 1]
        if np.isfinite(value) and value > best:
            best, best_index = value, i
    return best_index


def estimate_key(notes: np.ndarray, profiles: np.ndarray = KEY_PROFILES) -> tuple[int, str]:
    """Krumhansl-Schmuckler: correlate the duration-weighted pitch-class histogram with the
    24 rotated major/minor profiles and take the best."""
    return key_of_index(best_key(key_histogram(notes), profiles))


def estimate_key_index(notes: np.ndarray, profiles: np.ndarray = KEY_PROFILES) -> int:
    try:
        return key_index(*estimate_key(notes, profiles))
    except ValueError:
        return KEY_UNKNOWN


# A phrase mostly opens on a tone of its key's tonic triad (a tune starts on its tonic chord): the
# keys whose triad holds the phrase's first note (its lowest, under a chord) gain this much
# correlation. First 4 bars named in their labelled key (benchmarks/primer_key.py): chorale
# sopranos 65% -> 69%, four-voice chorales 72% -> 76%, Nottingham melodies 92% -> 93%; 0.2 or 0.3
# no better on the melodies, the last note (a phrase may end on the dominant) worse
OPENING_TONE_BONUS = 0.1


def phrase_key_scores(notes: np.ndarray) -> np.ndarray:
    """Each of the 24 keys' fit to a phrase: the melody profiles' correlation, which names a
    tune's key from its first bars far more often, plus the tonic triad around its first note."""
    r = key_correlations(key_histogram(notes), MELODY_PROFILES)
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    first = pitched[pitched[:, ONSET] == pitched[:, ONSET].min(), PITCH].min() % 12
    return (np.zeros(24) if r is None else r) + OPENING_TONE_BONUS * TONIC_TRIADS[:, first]


def phrase_key(notes: np.ndarray) -> tuple[int, str]:
    """The key of a phrase a user plays or a primer (`--key auto`, the continuation figures)."""
    return key_of_index(phrase_key_choice(notes)[0])


# A 4-bar melody often fits a second key (a fifth away, its relative) nearly as well as its own.
# When the best key leads the next by less than this, `continue` holds no key: the network reads
# the phrase itself and no guidance pushes towards a guess. First 4 bars (benchmarks/primer_key.py,
# agreement where a key is held / share held): chorale sopranos whose label and whole score agree
# 84% / all -> 90% / 81%, Nottingham melodies 93% -> 96% / 91% (the two it was chosen on)
KEY_LEAD = 0.05


def phrase_key_choice(notes: np.ndarray) -> tuple[int, int, float]:
    """(best key index, next best, the best's lead over it) of a phrase with pitched notes."""
    r = phrase_key_scores(notes)
    best = int(np.argmax(r))
    second = int(np.argmax(np.where(np.arange(24) == best, -np.inf, r)))
    return best, second, float(r[best] - r[second])


def phrase_keys(notes: np.ndarray) -> tuple[int, int, int]:
    """(best key index, the key `continue` holds: the best, or KEY_UNKNOWN when it leads the next
    by less than KEY_LEAD, the next best); all KEY_UNKNOWN for a phrase without pitched notes."""
    try:
        best, second, lead = phrase_key_choice(notes)
    except ValueError:
        return KEY_UNKNOWN, KEY_UNKNOWN, KEY_UNKNOWN
    return best, (best if lead >= KEY_LEAD else KEY_UNKNOWN), second


def phrase_key_index(notes: np.ndarray, sure: bool = False) -> int:
    """phrase_key as a key index (with `sure`, the key held); KEY_UNKNOWN without pitched notes."""
    best, held, _ = phrase_keys(notes)
    return held if sure else best


def running_keys(notes: np.ndarray, n_beats: int, resolution: int, min_notes: int = 8) -> np.ndarray:
    """Key index per beat from the notes that start before that beat (Krumhansl-Schmuckler on
    the duration-weighted pitch classes heard so far); unknown until `min_notes` have started."""
    pitched = notes[notes[:, PROGRAM] != DRUMS]
    out = np.full(n_beats, KEY_UNKNOWN, dtype=np.int64)
    if len(pitched) == 0 or n_beats == 0:
        return out
    beat = np.minimum(pitched[:, ONSET] // resolution, n_beats - 1).astype(np.int64)
    hist = np.zeros((n_beats, 12))
    np.add.at(hist, (beat, pitched[:, PITCH] % 12), pitched[:, DURATION])
    count = np.bincount(beat, minlength=n_beats)
    # before beat b: the sum over beats < b
    heard = np.vstack([np.zeros((1, 12)), np.cumsum(hist, axis=0)[:-1]])
    heard_count = np.concatenate([[0], np.cumsum(count)[:-1]])
    z = (KEY_PROFILES - KEY_PROFILES.mean(1, keepdims=True)) / KEY_PROFILES.std(1, keepdims=True)
    h = heard - heard.mean(1, keepdims=True)
    sd = h.std(1, keepdims=True)
    scores = np.divide(h, sd, out=np.zeros_like(h), where=sd > 0) @ z.T
    known = (heard_count >= min_notes) & (sd[:, 0] > 0)
    out[known] = scores[known].argmax(1)
    return out


# ---------------------------------------------------------------- chords

QUALITIES = {"": (0, 4, 7), "m": (0, 3, 7), "dim": (0, 3, 6), "aug": (0, 4, 8),
             "7": (0, 4, 7, 10), "maj7": (0, 4, 7, 11), "m7": (0, 3, 7, 10)}
QUALITY_NAMES = list(QUALITIES)


def tonic_triad(key: int) -> tuple:
    """Pitch classes of a key index's tonic triad: root, third, fifth."""
    return tuple((key % 12 + i) % 12 for i in QUALITIES["m" if key >= 12 else ""])


# (24 keys, 12 pitch classes): True where the class is in the key's tonic triad (phrase_key)
TONIC_TRIADS = np.array([np.isin(np.arange(12), tonic_triad(k)) for k in range(24)])
NO_CHORD = 12 * len(QUALITIES)
CHORD_UNKNOWN = NO_CHORD + 1
N_CHORDS = NO_CHORD + 2
QUALITY_ALIASES = {"": "", "maj": "", "M": "", "m": "m", "min": "m", "-": "m", "dim": "dim", "o": "dim",
                   "aug": "aug", "+": "aug", "7": "7", "dom7": "7", "maj7": "maj7", "M7": "maj7", "m7": "m7",
                   "min7": "m7", "-7": "m7"}


def chord_index(root: int, quality: str) -> int:
    return (root % 12) * len(QUALITIES) + QUALITY_NAMES.index(quality)


def chord_pitch_classes(index: int) -> tuple[int, ...]:
    if index >= NO_CHORD:
        return ()
    root, q = divmod(index, len(QUALITIES))
    return tuple((root + i) % 12 for i in QUALITIES[QUALITY_NAMES[q]])


def progression_key(bars) -> int:
    """The key a chord progression implies (bars of chord indices): Krumhansl-Schmuckler on its
    chord tones, each chord counted once; KEY_UNKNOWN for one without a chord."""
    hist = np.zeros(12)
    for bar in bars:
        for chord in bar:
            hist[list(chord_pitch_classes(chord))] += 1
    return best_key(hist) if hist.any() else KEY_UNKNOWN


def chord_label(index: int) -> str:
    if index == NO_CHORD:
        return "N.C."
    if index == CHORD_UNKNOWN:
        return "?"
    root, q = divmod(index, len(QUALITIES))
    return PITCH_CLASS_NAMES[root] + QUALITY_NAMES[q]


def parse_chord(text: str) -> int:
    """'C', 'Dm7', 'F#dim', 'Bbmaj7', 'G7', 'N.C.' -> chord index."""
    t = text.strip()
    if t.upper().replace(".", "") in ("N", "NC"):
        return NO_CHORD
    accepted = "a root C..B with # or b, then one of: major (nothing), m, dim, aug, 7, maj7, m7; or N.C."
    shown = repr(t if len(t) <= 24 else t[:24] + "...")  # the message stays one short line
    if not t or t[0].upper() not in "CDEFGAB":
        raise ValueError(f"unparseable chord {shown}: use {accepted}")
    root = LETTERS[t[0].lower()]
    rest = t[1:]
    while rest[:1] in ("#", "b"):  # no quality name starts with b, so b is always a flat
        root += 1 if rest[0] == "#" else -1
        rest = rest[1:]
    if rest not in QUALITY_ALIASES:
        raise ValueError(f"unparseable chord {shown}: use {accepted}")
    return chord_index(root, QUALITY_ALIASES[rest])
