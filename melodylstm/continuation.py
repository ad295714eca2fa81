"""`melodylstm evaluate FOLDER --continuation`: does the model continue a piece the way it goes on?

Each held-out piece is cut after P bars of the tokenizer's bar grid. The model continues the
primer for B bars; its answer, a trivial baseline (the primer's last B bars played again) and the
piece's real next B bars are described by the same features a musician would check:

  in_key               share of notes in the primer's key (Krumhansl-Schmuckler estimate_key)
  polyphony            notes sounding at each onset, averaged over onsets (1.0 = a melody)
  mean_pitch           register: average MIDI pitch
  pitch_range          highest minus lowest pitch, in semitones
  notes_per_beat       density: notes per quarter note of the continued span
  note_length_overlap  rhythm: shared area of the note-length histograms (stats.LENGTH_CLASSES)
                       of the answer and of the real continuation (1 = the same, 0 = disjoint)
  inter_onset_overlap  the same for the time between successive onsets

The figures are averaged over samples, then over pieces. Next to them: the absolute difference of
the model's and the baseline's averages to the real average (`diff`), and the average over
pieces of each piece's own absolute difference (`error`). The model's bits per note of the real
continuation given the primer (LSTM state carried through the primer) measure the same thing from
the likelihood side.

The cut is exact on the grid: the primer keeps the notes starting before bar P (notes held over
the bar line end at it), the real continuation the notes starting in bars P..P+B-1 (cut at the
end of bar P+B-1), and the model's answer is clipped at the same bar line.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .midi import DRUMS, DURATION, ONSET, PITCH, PROGRAM, Song, read_midi_bytes, read_midi_tracks
from .sampling import SCALES, estimate_key, key_name
from .stats import inter_onset_histogram, note_length_histogram

FEATURES = ("in_key", "polyphony", "mean_pitch", "pitch_range", "notes_per_beat",
            "note_length_overlap", "inter_onset_overlap")
LABELS = {"in_key": "in-key rate", "polyphony": "notes sounding together", "mean_pitch": "mean pitch",
          "pitch_range": "pitch range", "notes_per_beat": "notes per beat",
          "note_length_overlap": "note-length overlap", "inter_onset_overlap": "inter-onset overlap"}
NAN = float("nan")


# ---------------------------------------------------------------- cutting

@dataclass
class Cut:
    primer: Song  # notes starting before `cut`, none sounding past it; the piece's tempo and metre
    real: np.ndarray  # notes starting in [cut, end), none sounding past `end`
    cut: int  # step of bar line P
    end: int  # step of bar line P + B


def bar_count(song: Song) -> int:
    """Bars (of the song's bar grid) up to the end of its last note."""
    return song.bar_grid().index_at_or_after(song.end)


def clip_durations(notes: np.ndarray, end: int, tok=None) -> np.ndarray:
    """Shorten notes that sound past `end`; with a tokenizer, round the cut lengths down to one
    it can write, so that no note crosses `end` after tokenization."""
    notes = notes.copy()
    notes[:, DURATION] = np.minimum(notes[:, DURATION], end - notes[:, ONSET])
    if tok is not None and len(notes):
        notes[:, DURATION] = tok.duration_floor[notes[:, DURATION]]
    return notes


def cut_piece(song: Song, primer_bars: int, bars: int, tok=None) -> Cut:
    """Split a song at bar line `primer_bars`; the real continuation is the next `bars` bars."""
    grid = song.bar_grid()
    cut, end = grid.start(primer_bars), grid.start(primer_bars + bars)
    onsets = song.notes[:, ONSET]
    primer = clip_durations(song.notes[onsets < cut], cut, tok)
    real = clip_durations(song.notes[(onsets >= cut) & (onsets < end)], end, tok)
    return Cut(Song(primer, song.resolution, list(song.tempos), list(song.time_signatures), dict(song.names)),
               real, cut, end)


def repeat_baseline(primer: Song, primer_bars: int, bars: int, tok=None) -> np.ndarray:
    """The trivial answer: the primer's last `bars` bars played again (the whole primer, in a
    loop, when it is shorter), each bar moved onto the bar it fills, clipped at the end."""
    grid = primer.bar_grid()
    loop = min(bars, primer_bars)
    end = grid.start(primer_bars + bars)
    out = []
    for target in range(primer_bars, primer_bars + bars):
        source = primer_bars - loop + (target - primer_bars) % loop
        lo, hi = grid.start(source), grid.start(source + 1)
        part = primer.notes[(primer.notes[:, ONSET] >= lo) & (primer.notes[:, ONSET] < hi)].astype(np.int64)
        part[:, ONSET] += grid.start(target) - lo
        out.append(part[part[:, ONSET] < grid.start(target + 1)])
    notes = np.concatenate(out) if out else np.zeros((0, 5), dtype=np.int64)
    return clip_durations(notes, end, tok)


# ---------------------------------------------------------------- features

def in_key_rate(notes: np.ndarray, key: tuple[int, str]) -> float:
    if len(notes) == 0:
        return NAN
    tonic, scale = key
    return float(np.isin((notes[:, PITCH] - tonic) % 12, SCALES[scale]).mean())


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


def note_features(notes: np.ndarray, resolution: int, key: tuple[int, str], steps: int) -> dict:
    """Features of the pitched notes of a span `steps` long; histograms kept for the overlaps."""
    notes = notes[notes[:, PROGRAM] != DRUMS]
    pitches = notes[:, PITCH]
    return {"in_key": in_key_rate(notes, key),
            "polyphony": polyphony_at_onsets(notes),
            "mean_pitch": float(pitches.mean()) if len(notes) else NAN,
            "pitch_range": float(pitches.max() - pitches.min()) if len(notes) else NAN,
            "notes_per_beat": len(notes) / (steps / resolution),
            "notes": len(notes),
            "note_length_hist": note_length_histogram(notes, resolution),
            "inter_onset_hist": inter_onset_histogram(notes, resolution)}


def against(real: dict, answer: dict) -> dict:
    """An answer's scalar features, with its histograms replaced by their overlap with the real ones."""
    out = {k: answer[k] for k in FEATURES[:5]}
    out["note_length_overlap"] = histogram_overlap(answer["note_length_hist"], real["note_length_hist"])
    out["inter_onset_overlap"] = histogram_overlap(answer["inter_onset_hist"], real["inter_onset_hist"])
    out["notes"] = answer["notes"]
    return out


# ---------------------------------------------------------------- likelihood

def continuation_nll(model, tok, primer: Song, real: np.ndarray, style: int | None = None) -> tuple[float, int]:
    """(nats, tokens) of the real continuation's tokens given the primer (`continuation_losses`)."""
    losses = continuation_losses(model, tok, primer, real, style)
    return float(losses.sum()), len(losses)


def continuation_losses(model, tok, primer: Song, real: np.ndarray, style: int | None = None) -> np.ndarray:
    """NLL in nats of each of the real continuation's tokens given the primer: one LSTM pass
    over primer + continuation, keeping only the tokens after the primer's (the closing EOS,
    which only marks where the cut was, is not counted). A model with controls is told what
    `continue` would tell it, all causal: the primer's key and density, its chords only within
    the primer, `style`."""
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
        from . import controls as ctl
        from .evaluate import model_controls

        song = Song(np.concatenate([primer.notes, real]), primer.resolution, primer.tempos, primer.time_signatures)
        file_controls = ctl.controls_for(song, joint, tok).astype(np.int64)
        primer_part = ctl.controls_for(primer, tok.encode_normalized(primer), tok)
        # causal: within the primer, its own controls; after the cut, the primer's key and last
        # density (what `continue` tells) and no chord
        file_controls[:first] = primer_part[:first]
        file_controls[:, ctl.KEY] = primer_part[0, ctl.KEY]
        file_controls[first:, ctl.CHORD] = ctl.CHORD_UNKNOWN
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

    from .config import CONTINUE_TEMPERATURE
    from .data import find_midi_files, is_validation
    from .evaluate import checkpoint_val_fraction
    from .generate import Generator
    from .midi import MidiError

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
    return primer_bars + bars - primer.bar_grid().index_at_or_after(primer.end)


def score_piece(gen, model, cut: Cut, primer_bars: int, bars: int, samples: int, seed: int, temperature: float,
                path: str = "", key_strength: float | None = None) -> dict:
    """Features of the model's answers, the repeat baseline and the real continuation for one cut."""
    primer, res = cut.primer, cut.primer.resolution
    key = estimate_key(primer.notes)
    span = cut.end - cut.cut
    answers = gen.continue_(primer, bars=bars_to_generate(primer, primer_bars, bars), seed=seed,
                            temperature=temperature, num=samples, key_strength=key_strength)
    real = note_features(cut.real, res, key, span)
    model_rows, early = [], 0
    for answer in answers:
        notes = answer.notes.notes
        early += int((notes[:, ONSET] < cut.cut).sum())  # added to the primer's last bar: not compared
        notes = clip_durations(notes[(notes[:, ONSET] >= cut.cut) & (notes[:, ONSET] < cut.end)], cut.end, gen.tok)
        model_rows.append(against(real, note_features(notes, res, key, span)))
    repeat = against(real, note_features(repeat_baseline(primer, primer_bars, bars, gen.tok), res, key, span))
    chosen = (gen.last_controls or {}).get("style")
    nats, tokens = continuation_nll(model, gen.tok, primer, cut.real, gen.styles.index(chosen) if chosen in gen.styles else None)
    primer_features = note_features(primer.notes, res, key, cut.cut)
    return {"path": path, "key": key_name(*key), "primer_polyphony": primer_features["polyphony"],
            "model": model_rows, "model_notes_before_cut": early, "repeat": repeat, "real": against(real, real),
            "nats": nats, "tokens": tokens, "real_notes": len(cut.real)}


def _mean(values) -> float:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else NAN


def summarize(records: list[dict]) -> dict:
    """Averages over samples, then pieces; differences to the real average; per-piece errors."""
    features = {}
    for name in FEATURES:
        real = [r["real"][name] for r in records]
        model = [_mean(s[name] for s in r["model"]) for r in records]
        repeat = [r["repeat"][name] for r in records]
        model_error = [_mean(abs(s[name] - r["real"][name]) for s in r["model"]) for r in records]
        repeat_error = [abs(r["repeat"][name] - r["real"][name]) for r in records]
        row = {"real": _mean(real), "model": _mean(model), "repeat": _mean(repeat)}
        row["model_diff"] = abs(row["model"] - row["real"])
        row["repeat_diff"] = abs(row["repeat"] - row["real"])
        row["model_error"] = _mean(model_error)
        row["repeat_error"] = _mean(repeat_error)
        features[name] = row
    nats = sum(r["nats"] for r in records)
    notes = sum(r["real_notes"] for r in records)
    tokens = sum(r["tokens"] for r in records)
    likelihood = {"bits_per_note": nats / math.log(2) / notes, "nats_per_token": nats / tokens if tokens else NAN,
                  "notes": notes, "tokens": tokens}
    empty = sum(s["notes"] == 0 for r in records for s in r["model"])
    early = sum(r["model_notes_before_cut"] for r in records)
    return {"features": features, "real_continuation_likelihood": likelihood, "empty_answers": empty,
            "model_notes_before_cut": early, "goals": goals(features, records)}


def goals(features: dict, records: list[dict]) -> dict:
    """The figures issue #14 asks the continuations to meet (value, target, ok)."""
    f = features
    mono = [r for r in records if r["primer_polyphony"] <= 1.0 + 1e-9]
    mono_poly = _mean(_mean(s["polyphony"] for s in r["model"]) for r in mono)
    density = f["notes_per_beat"]["model_diff"] / f["notes_per_beat"]["real"] if f["notes_per_beat"]["real"] else NAN

    def goal(value, target, ok):
        return {"value": value, "target": target, "ok": None if not math.isfinite(value) else bool(ok)}

    return {
        "monophonic_polyphony": {**goal(mono_poly, "<= 1.05", mono_poly <= 1.05),
                                 "pieces": len(mono)},
        "in_key_diff": goal(f["in_key"]["model_diff"], "<= 0.03", f["in_key"]["model_diff"] <= 0.03),
        "mean_pitch_diff": goal(f["mean_pitch"]["model_diff"], "<= 3 semitones", f["mean_pitch"]["model_diff"] <= 3),
        "density_relative_diff": goal(density, "<= 0.20", density <= 0.2),
        "note_length_overlap": goal(f["note_length_overlap"]["model"], ">= 0.7", f["note_length_overlap"]["model"] >= 0.7),
        "in_key_vs_repeat": {**goal(f["in_key"]["model_diff"], "<= the repeat baseline's diff",
                                    f["in_key"]["model_diff"] <= f["in_key"]["repeat_diff"]),
                             "repeat": f["in_key"]["repeat_diff"]},
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

    fmts = {"in_key": ".3f", "polyphony": ".2f", "mean_pitch": ".1f", "pitch_range": ".1f",
            "notes_per_beat": ".2f", "note_length_overlap": ".2f", "inter_onset_overlap": ".2f"}
    r = report
    head = (f"{r['pieces']} pieces{' (track ' + repr(r['track']) + ')' if r['track'] else ''}: {r['primer_bars']} bars "
            f"of primer, {r['bars']} bars continued, {r['samples']} sample(s) each at temperature {r['temperature']:g}, "
            f"seed {r['seed']} ({r['too_short']} too short, {len(r['skipped'])} skipped)")
    lines = [head, "",
             f"{'feature':<24}{'real':>8}{'model':>8}{'repeat':>8}   {'|model-real|':>12}{'|repeat-real|':>14}"
             f"   {'per piece: model':>16}{'repeat':>8}"]
    for name in FEATURES:
        f, fmt = r["features"][name], fmts[name]
        lines.append(f"{LABELS[name]:<24}{num(f['real'], fmt):>8}{num(f['model'], fmt):>8}{num(f['repeat'], fmt):>8}   "
                     f"{num(f['model_diff'], fmt):>12}{num(f['repeat_diff'], fmt):>14}   "
                     f"{num(f['model_error'], fmt):>16}{num(f['repeat_error'], fmt):>8}")
    lk = r["real_continuation_likelihood"]
    lines += ["",
              "overlaps: shared area of the answer's and the real continuation's normalized histograms (1 = same);",
              "per piece: average over pieces of |value - that piece's real value|; notes per beat: per quarter note",
              f"bits/note of the real continuation given the primer: {num(lk['bits_per_note'], '.3f')} "
              f"({lk['notes']:,} notes, {lk['tokens']:,} tokens)"]
    if r["empty_answers"] or r["model_notes_before_cut"]:
        lines.append(f"{r['empty_answers']} answer(s) without a note; {r['model_notes_before_cut']} note(s) the model "
                     "added before the cut (not compared)")
    lines += ["", "goals"]
    names = {"monophonic_polyphony": "notes sounding together (model)",
             "in_key_diff": "in-key |model-real|", "mean_pitch_diff": "mean pitch |model-real|",
             "density_relative_diff": "notes per beat |model-real| / real",
             "note_length_overlap": "note-length overlap (model)", "in_key_vs_repeat": "in-key |model-real|"}
    for key, g in r["goals"].items():
        extra = f", {g['pieces']} monophonic primers" if key == "monophonic_polyphony" else \
            f" vs repeat {num(g['repeat'], '.3f')}" if key == "in_key_vs_repeat" else ""
        verdict = {True: "ok", False: "missed", None: "n/a"}[g["ok"]]
        target = "<= repeat" if key == "in_key_vs_repeat" else g["target"]
        lines.append(f"  {names[key] + extra:<52}{num(g['value'], '.3f'):>8}  {target:<16}{verdict}")
    return "\n".join(lines)
