"""Continuations on held-out melody sets unlike the bundled tunes: per piece, how close the
model's answer is to the real continuation, next to repeating the primer.

    python benchmarks/continuation.py                 # build the sets, default model, 4 + 4 bars
    python benchmarks/continuation.py --sets chorale-soprano --pieces 20 -c checkpoints/run
    python benchmarks/continuation.py --ceiling       # no model: the real music against itself

The sets (built into --work, never committed, never trained on by the default model):
  chorale-soprano     the soprano line of the held-out chorales (the default model's own
                      validation split of datasets/bach_chorales) as a one-voice melody
  palestrina-cantus   the top voice of Palestrina's masses in music21's corpus: slow,
                      hymn-like lines in whole and half notes
  nottingham-melody   the Nottingham folk melodies without their chords (../shared/midi,
                      when present)
  monteverdi-canto    the top voice of Monteverdi's madrigals in music21's corpus (added
                      after the other three were measured: never looked at while tuning)
  essen-folksong      German folk songs of the Essen collection in music21's corpus (ABC):
                      the slow folk songs the issue's first table was measured on
  aird-airs           Aird's Selection of Airs (1782-1803) in music21's corpus (ABC): the
                      18th-century airs of that table (both added in session 16, after every
                      lever was chosen: never tuned on)
Tune on chorale-soprano; the others are reported, not tuned on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melodylstm.metrics.continuations import replays_line, rests_line  # noqa: E402
from melodylstm.midi import Song, crop_to_bar, read_midi, read_midi_tracks, write_midi  # noqa: E402

RES = 12


def from_first_bar(song: Song) -> Song:
    """The song from the bar line before its first note (a voice that enters late starts at once)."""
    return crop_to_bar(song)[0]


def one_track(path: Path, name: str) -> Song | None:
    for track, song in read_midi_tracks(path, RES):
        if name.lower() in track.lower() and len(song.notes):
            return from_first_bar(song)
    return None


def chorale_sopranos(out: Path, val_fraction: float = 0.1) -> int:
    from melodylstm.data import is_validation

    count = 0
    for path in sorted((ROOT / "datasets" / "bach_chorales").glob("*.mid")):
        digest = hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()
        song = one_track(path, "soprano") if is_validation(digest, val_fraction) else None
        if song is not None:
            write_midi(song, out / path.name)
            count += 1
    return count


def nottingham_melodies(out: Path) -> int:
    folder = ROOT.parent / "shared" / "midi" / "nottingham"
    count = 0
    for path in sorted(folder.glob("*.mid")) if folder.is_dir() else []:
        song = one_track(path, "melody")
        if song is not None:
            write_midi(song, out / path.name)
            count += 1
    return count


def write_line(stream, target: Path) -> None:
    """A music21 part or score as MIDI (music21 writes it), from the bar line before its first note."""
    stream.write("midi", fp=str(target))
    write_midi(from_first_bar(read_midi(target, RES)), target)


def write_sample(out: Path, items: list, pieces: int, stem, label, parse) -> int:
    """An evenly spaced sample of `pieces` of the items, each parsed by music21 and written as a
    line to out/stem(item).mid; an item music21 cannot convert is skipped, with a message."""
    count = 0
    for item in items[:: max(1, len(items) // pieces)][:pieces]:
        try:
            write_line(parse(item), out / f"{stem(item)}.mid")
            count += 1
        except Exception as exc:  # a corpus file music21 cannot convert: skip it, say so
            print(f"skipped {label(item)}: {exc}", file=sys.stderr)
    return count


def top_parts(out: Path, composer: str, pieces: int = 60) -> int:
    """The first (top) part of an evenly spaced sample of a composer's pieces in music21."""
    from music21 import corpus

    paths = sorted(str(p) for p in corpus.getComposer(composer) if not str(p).endswith(".rntxt"))  # not analyses
    return write_sample(out, paths, pieces, lambda p: Path(p).stem, lambda p: Path(p).name,
                        lambda p: corpus.parse(p).parts[0])


def palestrina_cantus(out: Path) -> int:
    return top_parts(out, "palestrina")


def monteverdi_canto(out: Path) -> int:
    return top_parts(out, "monteverdi")


def abc_tunes(out: Path, folder: str, pieces: int = 60) -> int:
    """An evenly spaced sample of the tunes in a music21 corpus folder of ABC books (one line each)."""
    import re

    from music21 import corpus

    books = sorted(str(p) for p in corpus.getPaths() if f"/{folder}/" in str(p) and "/test" not in str(p))
    tunes = [(book, int(x)) for book in books
             for x in re.findall(r"^X:\s*(\d+)", Path(book).read_text(encoding="latin-1"), re.M)]
    return write_sample(out, tunes, pieces, lambda t: f"{Path(t[0]).stem}-{t[1]:04d}",
                        lambda t: f"{Path(t[0]).name} X:{t[1]}", lambda t: corpus.parse(t[0], number=t[1]))


def essen_folksongs(out: Path) -> int:
    return abc_tunes(out, "essenFolksong")


def aird_airs(out: Path) -> int:
    return abc_tunes(out, "airdsAirs")


BUILDERS = {"chorale-soprano": chorale_sopranos, "palestrina-cantus": palestrina_cantus,
            "nottingham-melody": nottingham_melodies, "monteverdi-canto": monteverdi_canto,
            "essen-folksong": essen_folksongs, "aird-airs": aird_airs}


def build(name: str, work: Path) -> Path | None:
    out = work / name
    if out.is_dir() and any(out.glob("*.mid")):
        return out
    out.mkdir(parents=True, exist_ok=True)
    n = BUILDERS[name](out)
    print(f"{name}: {n} pieces in {out}", file=sys.stderr)
    return out if n else None


ROWS = [("mean_pitch", "mean pitch (semitones)", ".2f"), ("pitch_range", "pitch range", ".1f"),
        ("in_key", "in-key rate", ".3f"), ("notes_per_beat", "notes per beat", ".2f"),
        ("note_length_overlap", "note lengths (1 - overlap)", ".2f"),
        ("inter_onset_overlap", "inter-onsets (1 - overlap)", ".2f"), ("polyphony", "notes sounding together", ".2f"),
        ("silent_share", "silent time", ".3f"), ("motif", "primer motifs", ".2f")]


def table(name: str, report: dict) -> str:
    lk = report["real_continuation_likelihood"]
    lines = [f"**{name}** ({report['pieces']} pieces; real continuation given the primer: "
             f"{lk['bits_per_note']:.2f} bits/note, causal)", "",
             "| feature | real | model | repeat | median distance: model / repeat | model as close |",
             "|---|---|---|---|---|---|"]
    for key, label, fmt in ROWS:
        f = report["features"][key]

        def v(x):
            return "-" if x is None else format(x, fmt)
        share = "-" if f["model_as_close"] is None else f"{f['model_as_close']:.0%}"
        lines.append(f"| {label} | {v(f['real'])} | {v(f['model'])} | {v(f['repeat'])} | "
                     f"{v(f['model_distance'])} / {v(f['repeat_distance'])} | {share} |")
    missed = [k for k, g in report["goals"].items() if g["ok"] is False]
    lines += ["", replays_line(report), "", rests_line(report)]
    lines += ["", "goals missed: " + (", ".join(missed) if missed else "none")]
    return "\n".join(lines)


def ceiling(folder: Path, primer_bars: int = 4, bars: int = 4) -> str:
    """No model: how alike two stretches of the same real melody are. Bars 5-8 (the real
    continuation) against bars 9-12, and the primer's last bars against bars 5-8 (the repeat
    baseline): what any answer can be expected to reach on the overlaps and silent time."""
    import numpy as np

    from melodylstm.metrics.continuations import against, cut_piece, note_features

    rows = []
    for path in sorted(folder.glob("*.mid")):
        song = read_midi(path, RES)
        parts = [cut_piece(song, start, bars) for start in (max(0, primer_bars - bars), primer_bars, primer_bars + bars)]
        if min(len(c.real) for c in parts) < 2:
            continue
        # the key enters only the in-key rate, which this table does not use
        f = [note_features(c.real, RES, (0, "major"), c.end - c.cut, c.cut) for c in parts]
        later, before = against(f[1], f[2]), against(f[1], f[0])
        rows.append([before["note_length_overlap"], later["note_length_overlap"], before["inter_onset_overlap"],
                     later["inter_onset_overlap"], f[0]["silent_share"], f[1]["silent_share"], f[2]["silent_share"]])
    m = np.nanmean(np.array(rows), axis=0)
    return (f"| {folder.name} | {len(rows)} | {m[0]:.2f} / {m[1]:.2f} | {m[2]:.2f} / {m[3]:.2f} | "
            f"{m[4]:.3f} / {m[5]:.3f} / {m[6]:.3f} |")


def main(argv=None) -> None:
    from melodylstm.checkpoint import load_checkpoint
    from melodylstm.metrics.continuations import evaluate_continuation

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--checkpoint", default=None, help="default: the bundled default model")
    ap.add_argument("--sets", default=",".join(BUILDERS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/melodylstm-melody-sets"))
    ap.add_argument("--pieces", type=int, default=60)
    ap.add_argument("--primer-bars", type=int, default=4)
    ap.add_argument("--bars", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=1, help="answers per piece (its distances averaged over them)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--ceiling", action="store_true", help="no model: each set's real bars against its other bars")
    args = ap.parse_args(argv)
    if args.ceiling:
        print("| set | pieces | note-length overlap with bars 5-8: bars 1-4 / 9-12 | inter-onsets, the same "
              "| silent time: bars 1-4 / 5-8 / 9-12 |\n|---|---|---|---|---|")
        for name in args.sets.split(","):
            folder = build(name, args.work)
            if folder is not None:
                print(ceiling(folder, args.primer_bars, args.bars), flush=True)
        return
    ckpt = load_checkpoint(args.checkpoint)  # None: the bundled default model
    results = {}
    for name in args.sets.split(","):
        folder = build(name, args.work)
        if folder is None:
            print(f"{name}: not available here, skipped", file=sys.stderr)
            continue
        report = evaluate_continuation(ckpt, folder, "all", args.primer_bars, args.bars, args.pieces, args.samples,
                                       seed=args.seed)
        results[name] = report
        print(table(name, report) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
