"""`melodylstm evaluate FOLDER --continuation`: does the model continue a piece the way it goes on?

Each held-out piece is cut after P bars of the tokenizer's bar grid. The model continues the
primer for B bars; its answer, a trivial baseline (the primer's last B bars played again) and the
piece's real next B bars are described by the same features a musician would check:

  in_key               share of notes in the primer's key (theory.phrase_key)
  polyphony            notes sounding at each onset, averaged over onsets (1.0 = a melody)
  mean_pitch           register: average MIDI pitch
  pitch_range          highest minus lowest pitch, in semitones
  notes_per_beat       density: notes per quarter note of the continued span
  note_length_overlap  rhythm: shared area of the note-length histograms (stats.LENGTH_CLASSES)
                       of the answer and of the real continuation (1 = the same, 0 = disjoint)
  inter_onset_overlap  the same for the time between successive onsets
  silent_share         share of the span with no note sounding (holes)
  motif                share of the top line's 3-note interval patterns also heard in the primer

Per piece, each answer's distance to the real continuation is |answer - real| (1 - overlap for
the two overlaps), averaged over the samples; the repeat baseline's distance likewise. The
report gives the medians over pieces and the share of pieces where the model is at least as
close as the repeat baseline, and the averages over pieces next to them. The headline is the
model's bits per note of the real continuation given the primer (causal: the LSTM state carried
through the primer, no control computed from the continuation).

The cut is exact on the grid: the primer keeps the notes starting before bar P (notes held over
the bar line end at it), the real continuation the notes starting in bars P..P+B-1 (cut at the
end of bar P+B-1), and the model's answer is clipped at the same bar line.
"""
from __future__ import annotations

import hashlib
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, Song, read_midi_bytes, read_midi_tracks
from .. import theory
from ..theory import in_key_rate, key_name
from .features import inter_onset_histogram, note_length_histogram

FEATURES = ("in_key", "polyphony", "mean_pitch", "pitch_range", "notes_per_beat",
            "note_length_overlap", "inter_onset_overlap", "silent_share", "motif")
OVERLAPS = ("note_length_overlap", "inter_onset_overlap")  # compared with the real histograms
LABELS = {"in_key": "in-key rate", "polyphony": "notes sounding together", "mean_pitch": "mean pitch",
          "pitch_range": "pitch range", "notes_per_beat": "notes per beat",
          "note_length_overlap": "note-length overlap", "inter_onset_overlap": "inter-onset overlap",
          "silent_share": "silent time", "motif": "primer motifs"}
NAN = float("nan")
# An answer that plays this share of its notes from the phrase again is a copy of it (candidates.py)
COPY = 0.9


# ---------------------------------------------------------------- cutting

@dataclass
class Cut:
    primer: Song  # notes starting before `cut`, none sounding past it; the piece's tempo and metre
    real: np.ndarray  # notes starting in [cut, end), none sounding past `end`
    cut: int  # step of bar line P
    end: int  # step of bar line P + B


def bar_count(song: Song) -> int:
    """Bars (of the song's bar grid) up to the end of its last note."""
    return song.tempo_map.bar_at_or_after(song.end)


def clip_durations(notes: np.ndarray, end: int, tok=None) -> np.ndarray:
    """Shorten notes that sound past `end`; with a tokenizer, round the cut lengths down to one
    it can write, so that no note crosses `end` after tokenization."""
    notes = notes.copy()
    notes[:, DURATION] = np.minimum(notes[:, DURATION], end - notes[:, ONSET])
    if tok is not None and len(notes):
        notes[:, DURATION] = tok.duration_floor[np.minimum(notes[:, DURATION], len(tok.duration_floor) - 1)]
    return notes


def cut_piece(song: Song, primer_bars: int, bars: int, tok=None) -> Cut:
    """Split a song at bar line `primer_bars`; the real continuation is the next `bars` bars."""
    grid = song.tempo_map
    cut, end = grid.bar_start(primer_bars), grid.bar_start(primer_bars + bars)
    onsets = song.notes[:, ONSET]
    primer = clip_durations(song.notes[onsets < cut], cut, tok)
    real = clip_durations(song.notes[(onsets >= cut) & (onsets < end)], end, tok)
    return Cut(Song(primer, song.resolution, list(song.tempos), list(song.time_signatures), dict(song.names)),
               real, cut, end)


def repeat_baseline(primer: Song, primer_bars: int, bars: int, tok=None) -> np.ndarray:
    """The trivial answer: the primer's last `bars` bars played again (the whole primer, in a
    loop, when it is shorter), each bar moved onto the bar it fills, clipped at the end."""
    grid = primer.tempo_map
    loop = min(bars, primer_bars)
    end = grid.bar_start(primer_bars + bars)
    out = []
    for target in range(primer_bars, primer_bars + bars):
        source = primer_bars - loop + (target - primer_bars) % loop
        lo, hi = grid.bar_start(source), grid.bar_start(source + 1)
        part = primer.notes[(primer.notes[:, ONSET] >= lo) & (primer.notes[:, ONSET] < hi)].astype(np.int64)
        part[:, ONSET] += grid.bar_start(target) - lo
        out.append(part[part[:, ONSET] < grid.bar_start(target + 1)])
    notes = np.concatenate(out) if out else np.zeros((0, 5), dtype=np.int64)
    return clip_durations(notes, end, tok)


# ---------------------------------------------------------------- features

def polyphony_at_onsets(notes: np.ndarray) -> float:
    """Mean number of notes sounding at each distinct onset time (held notes included)."""
    if len(notes) == 0:
        return NAN
    times = np.unique(notes[:, ONSET])
    starts, ends = notes[:, ONSET], notes[:, ONSET] + notes[:, DURATION]
    sounding = ((starts[None, :] <= times[:, None]) & (ends[None, :] > times[:, None])).sum(axis=1)
    return float(sounding.mean())


def histogram_overlap(p: np.ndarray, q: np.ndarray) -> float:
    """Shared area of two histograms, each normalized (1 = same shape); NaN when both are empty."""
    sp, sq = float(np.sum(p)), float(np.sum(q))
    if sp == 0 and sq == 0:
        return NAN
    if sp == 0 or sq == 0:
        return 0.0
    return min(1.0, float(np.minimum(np.asarray(p) / sp, np.asarray(q) / sq).sum()))  # 1 + rounding -> 1


def silent_share(notes: np.ndarray, start: int, steps: int) -> float:
    """Share of the steps of [start, start + steps) with no note sounding."""
    if steps <= 0:
        return NAN
    sounding = np.zeros(steps + 1, dtype=np.int64)
    lo = np.clip(notes[:, ONSET] - start, 0, steps)
    hi = np.clip(notes[:, ONSET] + notes[:, DURATION] - start, 0, steps)
    np.add.at(sounding, lo, 1)
    np.add.at(sounding, hi, -1)
    return float((np.cumsum(sounding)[:steps] == 0).mean())


def interval_patterns(notes: np.ndarray, n: int = 2) -> list:
    """The top line's successive pitch intervals, as n-interval patterns (n + 1 notes): the
    shapes a listener recognises as a motif, in any transposition."""
    if len(notes) == 0:
        return []
    order = np.lexsort((-notes[:, PITCH], notes[:, ONSET]))
    onsets, pitches = notes[order, ONSET], notes[order, PITCH]
    top = pitches[np.r_[True, onsets[1:] != onsets[:-1]]]  # the highest note at each onset
    steps = np.diff(top)
    return [tuple(steps[i:i + n]) for i in range(len(steps) - n + 1)]


def shared_notes(onsets: np.ndarray, pitches: np.ndarray, reference: np.ndarray) -> float:
    """Share of the notes (onsets, pitches) that `reference` plays too, same pitch at the same step."""
    there = set(zip(reference[:, ONSET].tolist(), reference[:, PITCH].tolist()))
    return float(np.mean([(o, p) in there for o, p in zip(np.asarray(onsets).tolist(), np.asarray(pitches).tolist())]))


def replay_share(real: np.ndarray, repeat: np.ndarray) -> float:
    """Share of the real continuation's notes that the repeat baseline plays too: 1.0 where the
    piece plays its primer again (a written-out repeat of a strain)."""
    return shared_notes(real[:, ONSET], real[:, PITCH], repeat) if len(real) else NAN


def motif_share(notes: np.ndarray, primer_patterns: set) -> float:
    """Share of the notes' interval patterns that the primer has too (NaN without patterns)."""
    patterns = interval_patterns(notes)
    return float(np.mean([p in primer_patterns for p in patterns])) if patterns else NAN


def note_features(notes: np.ndarray, resolution: int, key: tuple[int, str], steps: int, start: int = 0,
                  primer_patterns: set | None = None) -> dict:
    """Features of the pitched notes of the span [start, start + steps); histograms kept for the
    overlaps; the motif share against `primer_patterns`."""
    notes = notes[notes[:, PROGRAM] != DRUMS]
    pitches = notes[:, PITCH]
    return {"in_key": in_key_rate(notes, key),
            "polyphony": polyphony_at_onsets(notes),
            "mean_pitch": float(pitches.mean()) if len(notes) else NAN,
            "pitch_range": float(pitches.max() - pitches.min()) if len(notes) else NAN,
            "notes_per_beat": len(notes) / (steps / resolution),
            "silent_share": silent_share(notes, start, steps),
            "motif": motif_share(notes, primer_patterns) if primer_patterns is not None else NAN,
            "notes": len(notes),
            "note_length_hist": note_length_histogram(notes, resolution),
            "inter_onset_hist": inter_onset_histogram(notes, resolution)}


def against(real: dict, answer: dict) -> dict:
    """An answer's scalar features, with its histograms replaced by their overlap with the real ones."""
    out = {k: answer[k] for k in FEATURES if k not in OVERLAPS}
    out["note_length_overlap"] = histogram_overlap(answer["note_length_hist"], real["note_length_hist"])
    out["inter_onset_overlap"] = histogram_overlap(answer["inter_onset_hist"], real["inter_onset_hist"])
    out["notes"] = answer["notes"]
    return out


def distance(name: str, answer: dict, real: dict) -> float:
    """How far one answer's feature is from the real continuation's (0 = the same)."""
    if name in OVERLAPS:
        return 1.0 - answer[name] if answer[name] is not None and math.isfinite(answer[name]) else NAN
    a, r = answer[name], real[name]
    return abs(a - r) if a is not None and r is not None else NAN


# ---------------------------------------------------------------- likelihood

def continuation_nll(model, tok, primer: Song, real: np.ndarray, style: int | None = None) -> tuple[float, int]:
    """(nats, tokens) of the real continuation's tokens given the primer (`continuation_losses`)."""
    losses = continuation_losses(model, tok, primer, real, style)
    return float(losses.sum()), len(losses)


def continuation_losses(model, tok, primer: Song, real: np.ndarray, style: int | None = None) -> np.ndarray:
    """NLL in nats of each of the real continuation's tokens given the primer: one LSTM pass
    over primer + continuation, keeping only the tokens after the primer's (the closing EOS,
    which only marks where the cut was, is not counted). A model with causal controls is told
    them as training did (each read from the notes before its token) and `style`; an older model
    what `continue` would tell it: the primer's key and density, its chords only within the
    primer."""
    import torch
    import torch.nn.functional as F

    prefix = tok.encode_normalized(primer)[:-1]
    joint = tok.encode_normalized(Song(np.concatenate([primer.notes, real]), primer.resolution,
                                       primer.tempos, primer.time_signatures))
    if not np.array_equal(joint[:len(prefix)], prefix):
        raise RuntimeError("the primer's tokens are not a prefix of the whole piece's")
    first, last = len(prefix), len(joint) - 1  # targets joint[first:last]
    if last <= first:
        return np.zeros(0)
    tokens = torch.from_numpy(joint[:last].astype(np.int64))
    controls = None
    if model.config.controls:
        from .. import controls as ctl
        from .likelihood import model_controls

        song = Song(np.concatenate([primer.notes, real]), primer.resolution, primer.tempos, primer.time_signatures)
        file_controls = ctl.controls_for(song, joint, tok, model.config.causal_controls).astype(np.int64)
        if not model.config.causal_controls:  # an older model: what `continue` tells it, all from the primer
            primer_part = ctl.controls_for(primer, tok.encode_normalized(primer), tok, False)
            file_controls[:first] = primer_part[:first]
            file_controls[:, ctl.KEY] = primer_part[0, ctl.KEY]
            file_controls[first:, ctl.CHORD] = theory.CHORD_UNKNOWN
            file_controls[first:, ctl.DENSITY] = primer_part[-1, ctl.DENSITY]
        controls = torch.from_numpy(model_controls(model.config, file_controls, style, hide=())[:last - 1])[None]
    with torch.inference_mode():
        logits, _ = model(tokens[None, :-1], controls=controls)  # logits[k] predicts tokens[k + 1]
        losses = F.cross_entropy(logits[0].float(), tokens[1:], reduction="none")
    return losses[first - 1:].numpy()


# ---------------------------------------------------------------- one folder

def read_piece(path, data: bytes, resolution: int, track: str | None) -> Song:
    song = read_midi_bytes(data, resolution, str(path))
    if not track:
        return song
    parts = [part.notes for name, part in read_midi_tracks(path, resolution) if track.lower() in name.lower()]
    if not parts:
        raise ValueError(f"no track named like {track!r}")
    return Song(np.concatenate(parts), resolution, song.tempos, song.time_signatures, song.names)


def evaluate_continuation(checkpoint, folder, split: str = "all", primer_bars: int = 4, bars: int = 4,
                          pieces: int | None = None, samples: int = 1, seed: int = 0, temperature: float | None = None,
                          track: str | None = None, progress: bool = False, key_strength: float | None = None) -> dict:
    """Continue every usable piece of FOLDER after `primer_bars` bars and compare with its real
    next `bars` bars (see the module docstring). split as in evaluate_folder."""
    from tqdm import tqdm

    from ..config import CONTINUE_TEMPERATURE
    from ..data import find_midi_files, is_validation
    from .likelihood import checkpoint_val_fraction
    from ..generate import Generator
    from ..midi import MidiError

    if primer_bars < 1 or bars < 1 or samples < 1 or (pieces is not None and pieces < 1):
        raise ValueError("--primer-bars, --bars, --samples and --pieces must be at least 1")
    temperature = CONTINUE_TEMPERATURE if temperature is None else temperature
    tok = checkpoint.tokenizer
    res = tok.config.resolution
    val_fraction = checkpoint_val_fraction(checkpoint)
    files, skipped = find_midi_files(folder)
    skipped = list(skipped)
    short = 0
    chosen = []  # (path, normalized song)
    for path in files:
        if pieces is not None and len(chosen) >= pieces:
            break
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            skipped.append({"path": str(path), "reason": f"cannot read ({exc.strerror or exc})"})
            continue
        if split != "all" and is_validation(hashlib.blake2b(data, digest_size=16).hexdigest(), val_fraction) != (split == "val"):
            continue
        try:
            song, _ = tok.normalize(read_piece(path, data, res, track))
        except (MidiError, ValueError) as exc:
            skipped.append({"path": str(path), "reason": str(exc)})
            continue
        if bar_count(song) < primer_bars + bars:
            short += 1
            continue
        chosen.append((str(path), song))

    gen = Generator(checkpoint)
    model = checkpoint.build_model().eval()
    records = []
    for index, (path, song) in enumerate(tqdm(chosen, disable=not progress, unit="piece", leave=False)):
        cut = cut_piece(song, primer_bars, bars, tok)
        if len(cut.primer.notes) == 0 or len(cut.real) == 0:
            skipped.append({"path": path, "reason": f"no notes in the {'primer' if len(cut.real) else 'continuation'}"})
            continue
        records.append(score_piece(gen, model, cut, primer_bars, bars, samples, seed + index, temperature, path,
                                   key_strength))
    if not records:
        raise ValueError(f"no piece in {folder} ({split} split) has {primer_bars + bars} bars with notes "
                         f"({short} shorter, {len(skipped)} skipped)")
    report = {"folder": str(folder), "split": split, "primer_bars": primer_bars, "bars": bars, "samples": samples,
              "temperature": temperature, "key_strength": key_strength, "seed": seed, "track": track, "pieces": len(records),
              "too_short": short, "skipped": skipped}
    report.update(summarize(records))
    report["per_piece"] = records
    return clean_json(report)


def bars_to_generate(primer: Song, primer_bars: int, bars: int) -> int:
    """`continue_` counts its bars from the bar line at or after the primer's end, which is before
    bar line P when the primer's last bars are silent: ask for as many as reach bar line P + B."""
    return primer_bars + bars - primer.tempo_map.bar_at_or_after(primer.end)


def score_piece(gen, model, cut: Cut, primer_bars: int, bars: int, samples: int, seed: int, temperature: float,
                path: str = "", key_strength: float | None = None) -> dict:
    """Features of the model's answers, the repeat baseline and the real continuation for one cut."""
    from ..generate import primer_key  # a primer without pitched notes fails as --key auto does

    primer, res = cut.primer, cut.primer.resolution
    key = primer_key(primer.notes)
    span = cut.end - cut.cut
    answers = gen.continue_(primer, bars=bars_to_generate(primer, primer_bars, bars), seed=seed,
                            temperature=temperature, num=samples, key_strength=key_strength)
    patterns = set(interval_patterns(primer.notes[primer.notes[:, PROGRAM] != DRUMS]))

    def features(notes):
        return note_features(notes, res, key, span, cut.cut, patterns)

    real = features(cut.real)
    model_rows, early = [], 0
    for answer in answers:
        notes = answer.notes.notes
        early += int((notes[:, ONSET] < cut.cut).sum())  # a primer whose last bars are silent: not compared
        notes = clip_durations(notes[(notes[:, ONSET] >= cut.cut) & (notes[:, ONSET] < cut.end)], cut.end, gen.tok)
        model_rows.append(against(real, features(notes)))
    again = repeat_baseline(primer, primer_bars, bars, gen.tok)
    repeat = against(real, features(again))
    chosen = (gen.last_controls or {}).get("style")
    nats, tokens = continuation_nll(model, gen.tok, primer, cut.real, gen.styles.index(chosen) if chosen in gen.styles else None)
    primer_features = note_features(primer.notes, res, key, cut.cut)
    pitched = primer.notes[primer.notes[:, PROGRAM] != DRUMS]
    first = int(pitched[:, ONSET].min()) if len(pitched) else cut.cut
    return {"path": path, "key": key_name(*key), "primer_polyphony": primer_features["polyphony"],
            "model": model_rows, "model_notes_before_cut": early, "repeat": repeat, "real": against(real, real),
            "nats": nats, "tokens": tokens, "real_notes": len(cut.real), "real_replays": replay_share(cut.real, again),
            "primer_rest": silent_share(pitched, first, cut.cut - first)}


def _mean(values) -> float:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else NAN


def _median(values) -> float:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else NAN


def piece_distances(record: dict, name: str) -> tuple[float, float]:
    """(model, repeat) distance to the real continuation of one piece, the model's averaged over
    its samples."""
    real = record["real"]
    return _mean(distance(name, s, real) for s in record["model"]), distance(name, record["repeat"], real)


def summarize(records: list[dict]) -> dict:
    """Per feature: averages over samples, then pieces; per-piece distances to the real
    continuation (medians, and the share of pieces where the model is at least as close as the
    repeat baseline); the likelihood of the real continuations; the goals."""
    features = {}
    for name in FEATURES:
        features[name] = {"real": _mean(r["real"][name] for r in records),
                          "model": _mean(_mean(s[name] for s in r["model"]) for r in records),
                          "repeat": _mean(r["repeat"][name] for r in records), **distances(records, name)}
    nats = sum(r["nats"] for r in records)
    notes = sum(r["real_notes"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    likelihood = {"bits_per_note": nats / math.log(2) / notes, "nats_per_token": nats / tokens if tokens else NAN,
                  "notes": notes, "tokens": tokens}
    empty = sum(s["notes"] == 0 for r in records for s in r["model"])
    early = sum(r["model_notes_before_cut"] for r in records)
    return {"features": features, "real_continuation_likelihood": likelihood, "empty_answers": empty,
            "model_notes_before_cut": early, "goals": goals(features, records), "replays": replays(records),
            "rests": rests(records)}


def distances(records: list[dict], name: str) -> dict:
    """Per-piece distances of one feature to the real continuation: medians and means over pieces,
    and the share of pieces where the model is at least as close as the repeat baseline."""
    pairs = [piece_distances(r, name) for r in records]
    both = [(m, b) for m, b in pairs if math.isfinite(m) and b is not None and math.isfinite(b)]
    return {"model_distance": _median(m for m, _ in pairs), "repeat_distance": _median(b for _, b in pairs),
            "model_error": _mean(m for m, _ in pairs), "repeat_error": _mean(b for _, b in pairs),
            "model_as_close": float(np.mean([m <= b + 1e-9 for m, b in both])) if both else NAN}


def rests(records: list[dict]) -> dict:
    """Silent time apart for the pieces whose primer rests inside its phrase (after its first
    note) and the others: an answer should breathe where its phrase breathes, and not fall silent
    where it never did; a line that drops out though its phrase never rested (a voice falling
    silent while the others sing on) is what no answer to that phrase can foresee."""
    out, resting = {}, [(r.get("primer_rest") or 0) > 0 for r in records]
    for name, group in (("resting", [r for r, b in zip(records, resting) if b]),
                        ("unbroken", [r for r, b in zip(records, resting) if not b])):
        out[name] = {"pieces": len(group), "model": _mean(_mean(s["silent_share"] for s in r["model"]) for r in group),
                     "real": _mean(r["real"]["silent_share"] for r in group),
                     "model_resting": _mean(_mean(s["silent_share"] > 0 for s in r["model"]) for r in group),
                     "real_resting": _mean(r["real"]["silent_share"] > 0 for r in group)}
    return out


def replays(records: list[dict]) -> dict:
    """How many pieces go on by playing their primer again (a strain repeated: repeating the primer
    is then exact, and an answer that varies it cannot be as close), and the goal features'
    distances over the other pieces, where the next bars are new music."""
    others = [r for r in records if not r.get("real_replays", 0) >= COPY]
    return {"pieces": len(records) - len(others), "share": 1 - len(others) / len(records) if records else NAN,
            "others": {name: distances(others, name) for name in ("mean_pitch", "notes_per_beat", "note_length_overlap")}}


def goals(features: dict, records: list[dict]) -> dict:
    """What a continuation should reach (value, target, ok): close to the real continuation per
    piece, at least as often as repeating the primer; the primer's texture kept; no holes."""
    f = features
    mono = [r for r in records if r["primer_polyphony"] <= 1.0 + 1e-9]
    poly = [r for r in records if r["primer_polyphony"] > 1.0 + 1e-9]
    mono_poly = _mean(_mean(s["polyphony"] for s in r["model"]) for r in mono)
    texture = _median(piece_distances(r, "polyphony")[0] / r["real"]["polyphony"] for r in poly
                      if r["real"]["polyphony"])
    pitch, silent = f["mean_pitch"], f["silent_share"]

    def goal(value, target, ok):
        return {"value": value, "target": target, "ok": None if not math.isfinite(value) else bool(ok)}

    ratio = pitch["model_distance"] / pitch["repeat_distance"] if pitch["repeat_distance"] else NAN
    return {
        "pitch_distance": goal(pitch["model_distance"], "<= 2.5 semitones", pitch["model_distance"] <= 2.5),
        "pitch_distance_vs_repeat": goal(ratio, "<= 1.5x repeat's", ratio <= 1.5),
        "note_length_overlap": goal(1 - f["note_length_overlap"]["model_distance"], ">= 0.75",
                                    1 - f["note_length_overlap"]["model_distance"] >= 0.75),
        "as_close_pitch": goal(pitch["model_as_close"], ">= 40% of pieces", pitch["model_as_close"] >= 0.4),
        "as_close_density": goal(f["notes_per_beat"]["model_as_close"], ">= 40% of pieces",
                                 f["notes_per_beat"]["model_as_close"] >= 0.4),
        "as_close_lengths": goal(f["note_length_overlap"]["model_as_close"], ">= 40% of pieces",
                                 f["note_length_overlap"]["model_as_close"] >= 0.4),
        "monophonic_polyphony": {**goal(mono_poly, "<= 1.05", mono_poly <= 1.05), "pieces": len(mono)},
        "polyphonic_texture": {**goal(texture, "<= 10% off", texture <= 0.1), "pieces": len(poly)},
        "silent_share_diff": goal(abs(silent["model"] - silent["real"]), "<= 3 points",
                                  abs(silent["model"] - silent["real"]) <= 0.03),
    }


def clean_json(value):
    """NaN -> None (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ---------------------------------------------------------------- table

def format_continuation(report: dict) -> str:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    fmts = {"in_key": ".3f", "polyphony": ".2f", "mean_pitch": ".1f", "pitch_range": ".1f", "notes_per_beat": ".2f",
            "note_length_overlap": ".2f", "inter_onset_overlap": ".2f", "silent_share": ".3f", "motif": ".2f"}
    r = report
    lk = r["real_continuation_likelihood"]
    head = (f"{r['pieces']} pieces{' (track ' + repr(r['track']) + ')' if r['track'] else ''}: {r['primer_bars']} bars "
            f"of primer, {r['bars']} bars continued, {r['samples']} sample(s) each at temperature {r['temperature']:g}, "
            f"seed {r['seed']} ({r['too_short']} too short, {len(r['skipped'])} skipped)")
    lines = [head,
             f"bits/note of the real continuation given the primer (causal): {num(lk['bits_per_note'], '.3f')} "
             f"({lk['notes']:,} notes, {lk['tokens']:,} tokens)", "",
             f"{'feature':<24}{'real':>8}{'model':>8}{'repeat':>8}   {'median distance: model':>22}{'repeat':>8}"
             f"{'model as close':>16}"]
    for name in FEATURES:
        f, fmt = r["features"][name], fmts[name]
        share = "-" if f["model_as_close"] is None else f"{f['model_as_close']:.0%}"
        lines.append(f"{LABELS[name]:<24}{num(f['real'], fmt):>8}{num(f['model'], fmt):>8}{num(f['repeat'], fmt):>8}   "
                     f"{num(f['model_distance'], fmt):>22}{num(f['repeat_distance'], fmt):>8}{share:>16}")
    lines += ["",
              "real/model/repeat: averages over pieces; distance: per piece |answer - real| (1 - overlap for the",
              "overlaps), median over pieces; model as close: pieces where the model is at least as close as the",
              "repeat baseline (the primer's last bars played again)"]
    if r["empty_answers"] or r["model_notes_before_cut"]:
        lines.append(f"{r['empty_answers']} answer(s) without a note; {r['model_notes_before_cut']} note(s) the model "
                     "added before the cut (not compared)")
    lines += ["", textwrap.fill(replays_line(r), 100), textwrap.fill(rests_line(r), 100)]
    lines += ["", "goals"]
    names = {"pitch_distance": "mean pitch, median distance", "pitch_distance_vs_repeat": "  ... / the repeat's",
             "note_length_overlap": "note-length overlap, median", "as_close_pitch": "as close as repeat: mean pitch",
             "as_close_density": "as close as repeat: density", "as_close_lengths": "as close as repeat: note lengths",
             "monophonic_polyphony": "one-voice primers: notes together", "polyphonic_texture":
             "many-voice primers: texture off by", "silent_share_diff": "silent time |model - real|"}
    for key, g in r["goals"].items():
        extra = f" ({g['pieces']} pieces)" if "pieces" in g else ""
        verdict = {True: "ok", False: "missed", None: "n/a"}[g["ok"]]
        lines.append(f"  {names[key] + extra:<48}{num(g['value'], '.3f'):>8}  {g['target']:<20}{verdict}")
    return "\n".join(lines)


def replays_line(report: dict) -> str:
    """One sentence: the pieces that play their primer again, and the goal features on the others."""
    rep = report.get("replays")
    if not rep:
        return ""
    others = report["pieces"] - rep["pieces"]
    head = (f"{rep['pieces']} of {report['pieces']} pieces go on by playing their primer again (>= {COPY:.0%} of "
            f"the real notes)")
    if not others:
        return head
    f = rep["others"]

    def cell(name, label, fmt):
        d = f[name]
        close = "-" if d["model_as_close"] is None else f"{d['model_as_close']:.0%}"
        dist = "-" if d["model_distance"] is None else (f"{d['model_distance']:{fmt}} / {d['repeat_distance']:{fmt}}")
        return f"{label} {dist} (as close: {close})"
    return (f"{head}; on the other {others}, median distance model / repeat: "
            + "; ".join([cell("mean_pitch", "mean pitch", ".2f"), cell("notes_per_beat", "density", ".2f"),
                         cell("note_length_overlap", "note lengths", ".2f")]))


def rests_line(report: dict) -> str:
    """One sentence: silent time where the primer rests inside its phrase and where it does not."""
    rest = report.get("rests")
    if not rest:
        return ""

    def part(g, label):
        if not g["pieces"]:
            return f"{label}: no piece"
        return (f"{label} ({g['pieces']} pieces): model {g['model']:.3f}, real {g['real']:.3f} (pieces with a rest: "
                f"model {g['model_resting']:.0%}, real {g['real_resting']:.0%})")
    return ("silent time " + part(rest["resting"], "where the primer rests inside its phrase") + "; "
            + part(rest["unbroken"], "where it does not"))
