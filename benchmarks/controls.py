"""Do the controls work? The goals of the controls issue, measured on a model and a held-out corpus.

    python benchmarks/controls.py                                  # the bundled model, chorales
    python benchmarks/controls.py --style tune --reference datasets/tunes

Prints a markdown table (and --json). Each figure is next to the same figure for the held-out
pieces of the corpus (the model's validation split):
* tonality: scale consistency and its overlap area, every `stats` feature's overlap (32 pieces of
  16 bars at the default temperature), bar repetition;
* in-key rate: share of notes in the piece's own estimated key, without --key;
* key control: with --key X for 8 keys, how often the key estimated from the piece is X;
* chord control: share of notes sounding at strong beats (1 and 3) that belong to the requested
  chord, with --chords, and without (the same progression laid over unconditioned pieces);
* register: |mean pitch of bars 13-16 - mean pitch of bars 1-4|;
* likelihood: nats/token on the held-out pieces with all controls, each one hidden, and none.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melodylstm import controls as ctl  # noqa: E402
from melodylstm.metrics import features as stats  # noqa: E402
from melodylstm import theory  # noqa: E402
from melodylstm.config import DEFAULT_TEMPERATURE  # noqa: E402
from melodylstm.midi import DRUMS, ONSET, PITCH, PROGRAM, Song, write_midi  # noqa: E402

KEYS = ["C:major", "G:major", "D:minor", "A:minor", "F:major", "Bb:major", "E:minor", "Eb:major"]
PROGRESSIONS = ["C F G C", "Dm7 G7 Cmaj7 Cmaj7"]
BAR = 48  # steps in a 4/4 bar at 12 steps per quarter


def pitched(notes):
    return notes[notes[:, PROGRAM] != DRUMS]


def own_key_rate(notes) -> float:
    notes = pitched(notes)
    return theory.in_key_rate(notes, theory.estimate_key(notes)) if len(notes) else float("nan")


def register_drift(notes, bars: int = 16) -> float:
    notes = pitched(notes)
    first = notes[notes[:, ONSET] < 4 * BAR]
    last = notes[(notes[:, ONSET] >= (bars - 4) * BAR) & (notes[:, ONSET] < bars * BAR)]
    if len(first) == 0 or len(last) == 0:
        return float("nan")
    return abs(float(last[:, PITCH].mean() - first[:, PITCH].mean()))


def progression_beats(text: str, bars: int) -> np.ndarray:
    chords = ctl.parse_progression(text)
    return np.array([chords[b % len(chords)] for b in range(bars) for _ in range(4)])


def reference_pieces(folder: Path, split_fraction: float, bars: int = 16):
    """Held-out pieces of the corpus (content-hash validation split), cut to their first 16 bars."""
    from melodylstm.data import find_midi_files, is_validation
    from melodylstm.midi import read_midi
    import hashlib

    out = []
    for path in find_midi_files(folder)[0]:
        data = Path(path).read_bytes()
        if not is_validation(hashlib.blake2b(data, digest_size=16).hexdigest(), split_fraction):
            continue
        song = read_midi(path, 12)
        notes = song.notes[song.notes[:, ONSET] < bars * BAR]
        if len(pitched(notes)) >= 8:
            out.append((path, song, notes))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--checkpoint")
    parser.add_argument("--reference", type=Path, default=ROOT / "datasets" / "bach_chorales")
    parser.add_argument("--style", help="style to generate in (default: the reference folder's, if the model knows it)")
    parser.add_argument("--pieces", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from melodylstm.metrics.likelihood import evaluate_folder
    from melodylstm.generate import Generator

    gen = Generator.load(args.checkpoint)
    style = args.style
    if style is None and gen.styles:
        style = next((s for s in gen.styles if s in str(args.reference)), gen.styles[0])
    T = DEFAULT_TEMPERATURE
    out = {"checkpoint": args.checkpoint or "bundled", "style": style, "reference": str(args.reference)}
    ref = reference_pieces(args.reference, 0.1)

    # 1. free generation: tonality, in-key rate, register, stats overlap
    songs = gen.generate(bars=16, num=args.pieces, seed=1, temperature=T, style=style)
    with tempfile.TemporaryDirectory() as tmp:
        for i, song in enumerate(songs):
            write_midi(song, Path(tmp) / f"g{i}.mid")
        ref_dir = Path(tmp) / "ref"
        ref_dir.mkdir()
        for i, (_, song, notes) in enumerate(ref):
            write_midi(Song(notes, 12, song.tempos, song.time_signatures), ref_dir / f"r{i}.mid")
        rep = stats.report(tmp, ref_dir)
    feats = rep["features"]
    out["stats_overlap"] = {k: round(v["overlap_area"], 3) for k, v in feats.items()}
    out["scale_consistency"] = {"generated": feats["scale_consistency"]["generated_mean"],
                                "reference": feats["scale_consistency"]["reference_mean"]}
    out["bar_repetition"] = {"generated": feats["bar_repetition"]["generated_mean"],
                             "reference": feats["bar_repetition"]["reference_mean"]}
    out["in_key_rate"] = {"generated": float(np.nanmean([own_key_rate(s.notes) for s in songs])),
                          "reference": float(np.nanmean([own_key_rate(n) for _, _, n in ref]))}
    out["register_drift"] = {"generated": float(np.nanmean([register_drift(s.notes) for s in songs])),
                             "reference": float(np.nanmean([register_drift(n) for _, _, n in ref]))}

    # 2. key control: 8 keys x pieces/8 each, no hard mask
    per_key = max(1, args.pieces // len(KEYS))
    hits = []
    for i, key in enumerate(KEYS):
        for song in gen.generate(bars=16, num=per_key, seed=100 + i, temperature=T, style=style, key=key):
            notes = pitched(song.notes)
            hits.append(len(notes) > 0 and theory.key_label(theory.key_index(*theory.estimate_key(notes))) == key)
    out["key_control"] = {"pieces": len(hits), "estimated_key_is_requested": float(np.mean(hits))}

    # 3. chord control
    chord = {}
    for text in PROGRESSIONS:
        told = gen.generate(bars=8, num=8, seed=7, temperature=T, style=style, chords=text)
        free = gen.generate(bars=8, num=8, seed=7, temperature=T, style=style)
        beats = progression_beats(text, 8)
        chord[text] = {"with_chords": float(np.nanmean([ctl.chord_tone_rate(s.notes, beats, 12) for s in told])),
                       "without": float(np.nanmean([ctl.chord_tone_rate(s.notes, beats, 12) for s in free]))}
    corpus_rates = []
    for _, song, notes in ref:
        est = ctl.estimate_chords(notes, 16 * 4, 12)
        corpus_rates.append(ctl.chord_tone_rate(notes, est, 12))
    chord["corpus_against_its_estimated_chords"] = float(np.nanmean(corpus_rates))
    out["chord_control"] = chord

    # 4. likelihood (causal), then with each control hidden: how much the model leans on it
    ckpt = gen.checkpoint
    if ckpt.model_config.controls:
        r = evaluate_folder(ckpt, args.reference, "val", style=style, baseline_train=None)
        lik = {"causal, as evaluate gives them": round(r["lstm"]["nats_per_token"], 4)}
        if r.get("ngram"):
            lik["5-gram"] = round(r["ngram"]["nats_per_token"], 4)
        for name in ckpt.model_config.control_names:
            r = evaluate_folder(ckpt, args.reference, "val", style=style, hide=[name])
            lik[f"{name} hidden"] = round(r["lstm"]["nats_per_token"], 4)
        out["likelihood_nats_per_token"] = lik
    print(format_markdown(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


def format_markdown(o: dict) -> str:
    lines = [f"model: {o['checkpoint']}, style {o['style']}; reference: held-out pieces of {o['reference']}", "",
             "| figure | generated | corpus (held out) |", "|---|---|---|"]
    sc, ik, rd, br = o["scale_consistency"], o["in_key_rate"], o["register_drift"], o["bar_repetition"]
    lines += [f"| scale consistency (overlap {o['stats_overlap']['scale_consistency']:.2f}) | {sc['generated']:.3f} | {sc['reference']:.3f} |",
              f"| in-key rate, no --key | {ik['generated']:.3f} | {ik['reference']:.3f} |",
              f"| register drift, bars 13-16 vs 1-4 (semitones) | {rd['generated']:.2f} | {rd['reference']:.2f} |",
              f"| bar repetition (overlap {o['stats_overlap']['bar_repetition']:.2f}) | {br['generated']:.3f} | {br['reference']:.3f} |",
              f"| --key X gives a piece in X ({o['key_control']['pieces']} pieces, 8 keys) | "
              f"{o['key_control']['estimated_key_is_requested']:.0%} | |"]
    for text, v in o["chord_control"].items():
        if isinstance(v, dict):
            lines.append(f"| chord tones at strong beats, --chords \"{text}\" (without: {v['without']:.2f}) | "
                         f"{v['with_chords']:.2f} | |")
    lines.append(f"| chord tones at strong beats, corpus vs its estimated chords | | "
                 f"{o['chord_control']['corpus_against_its_estimated_chords']:.2f} |")
    lines += ["", "| stats feature | overlap area |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in o["stats_overlap"].items()]
    if "likelihood_nats_per_token" in o:
        lines += ["", "| controls at evaluation | nats/token |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in o["likelihood_nats_per_token"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
