"""The key of a primer: does a piece's opening name the key the piece is written in?

    python benchmarks/primer_key.py                  # every corpus found, first 4 bars
    python benchmarks/primer_key.py --bars 2

The truth is each piece's labelled key. The chorales: the key signature and mode music21's scores
carry into their MIDI files. A label is not always the piece's key: a modal chorale is written
with a key signature one flat short (G Dorian labelled D minor), a G minor chorale labelled
B-flat major. So a second chorale row keeps the pieces whose label agrees with music21's own
analysis of the whole four-voice score. The Nottingham tunes: their ABC headers. Aird's airs
(every 4th tune of the books in music21's corpus; never tuned on): the ABC key field, which
names the mode (K:E Minor, K:A Dorian): Dorian, Phrygian and Aeolian airs count as minor,
Mixolydian and Lydian as major; the airs in a church mode are also shown apart, with the share
whose held key has the mode's notes (A Mixolydian: D major's), since a mode's tonic names no
major or minor key. Files without a label are left out.

For the first N bars and for the whole piece, the share of pieces whose estimate is that key,
with the Krumhansl-Kessler profiles (theory.KEY_PROFILES, the running key the model is told),
the melody profiles of Temperley-Kostka-Payne alone, and theory.phrase_key (those profiles and
the tonic triad around the first note: `--key auto` and the continuation figures). The last
column is the key `continue` holds (theory.phrase_key_index with sure=True: none when the best
key leads the next by less than theory.KEY_LEAD): agreement where it holds one / share held.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import sys
from pathlib import Path

import mido
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melodylstm import theory  # noqa: E402
from melodylstm.data import is_validation  # noqa: E402
from melodylstm.midi import ONSET, Song, read_midi, read_midi_tracks  # noqa: E402

SHARED = ROOT.parent / "shared" / "midi"
MINOR_MODES = ("m", "min", "minor", "dor", "dorian", "phr", "phrygian", "aeo", "aeolian")
MAJOR_MODES = ("", "maj", "major", "mix", "mixolydian", "lyd", "lydian", "ion", "ionian")
# Semitones from the major key with the same notes up to the mode's tonic (A Mixolydian: D major's notes)
CHURCH_MODES = {"dor": 2, "phr": 4, "lyd": 5, "mix": 7, "aeo": 9}


def labelled_key(path: Path) -> int | None:
    """Key index of the file's first key signature (mido names it 'Bb' or 'Gm'), None without one."""
    for track in mido.MidiFile(str(path)).tracks:
        for msg in track:
            if msg.type == "key_signature":
                name = msg.key[:-1] + ":minor" if msg.key.endswith("m") else msg.key + ":major"
                return theory.key_index(*theory.parse_key(name))
    return None


def abc_key(field: str) -> tuple[int, int | None] | None:
    """(key index, tonic of the major key with its notes where the field names a church mode, else
    None) of an ABC key field ('D', 'E Minor', 'A Dorian'); None for one without a tonic."""
    m = re.match(r"\s*([A-G][b#]?)\s*([A-Za-z]*)", field.split("%")[0])
    mode = m.group(2).lower() if m else None
    if mode not in MINOR_MODES + MAJOR_MODES:
        return None
    tonic, _ = theory.parse_key(m.group(1))
    church = CHURCH_MODES.get(mode[:3]) if mode not in ("m", "min", "minor") else None
    return (theory.key_index(tonic, "minor" if mode in MINOR_MODES else "major"),
            None if church is None else (tonic - church) % 12)


def notes_of(index: int) -> int:
    """Tonic of the major key with the same notes as key `index` (a minor key's relative major)."""
    tonic, mode = theory.key_of_index(index)
    return (tonic + (3 if mode == "minor" else 0)) % 12


def one_line(path: Path, name: str, resolution: int = 12) -> Song | None:
    for track, song in read_midi_tracks(path, resolution):
        if name in track.lower() and len(song.notes):
            return song
    return None


def labelled(items) -> list:
    """(song, labelled key, None) of (path, track name or None for every note) pairs with a label."""
    out = []
    for path, part in items:
        truth = labelled_key(path)
        song = read_midi(path, 12) if part is None else one_line(path, part)
        if truth is not None and song is not None and len(song.notes):
            out.append((song, truth, None))
    return out


def whole_score_agrees(path: Path, truth: int) -> bool:
    """Does music21's analysis of the chorale's whole score name its labelled key?"""
    from music21 import corpus

    found = corpus.parse("bach/" + path.stem).analyze("key")
    return theory.key_index(*theory.parse_key(f"{found.tonic.name.replace('-', 'b')}:{found.mode}")) == truth


def aird_airs(work: Path, every: int = 4) -> list:
    """(song, key of its ABC field, abc_key's tonic of a church mode's notes) for every `every`-th air of Aird's books (music21 writes the MIDI)."""
    from music21 import corpus

    work.mkdir(parents=True, exist_ok=True)
    books = sorted(str(p) for p in corpus.getPaths() if "/airdsAirs/" in str(p) and "/test" not in str(p))
    tunes = [(book, int(x), k) for book in books for x, k in re.findall(
        r"^X:\s*(\d+)[^X]*?^K:(.*)$", Path(book).read_text(encoding="latin-1"), re.M)]
    out = []
    for book, x, field in tunes[::every]:
        truth, target = abc_key(field), work / f"{Path(book).stem}-{x:04d}.mid"
        if truth is None:
            continue
        if not target.exists():
            try:
                corpus.parse(book, number=x).write("midi", fp=str(target))
            except Exception as exc:  # an air music21 cannot convert: skip it, say so
                print(f"skipped {Path(book).name} X:{x}: {exc}", file=sys.stderr)
                continue
        song = read_midi(target, 12)
        if len(song.notes):
            out.append((song, *truth))
    return out


def corpora(work: Path) -> dict:
    """name -> list of (song, its labelled key)."""
    chorales = sorted((ROOT / "datasets" / "bach_chorales").glob("*.mid"))
    held_out = [p for p in chorales if is_validation(hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest(), 0.1)]
    found = {"chorale sopranos (held out)": labelled((p, "soprano") for p in held_out)}
    try:
        agreed = [p for p in held_out if labelled_key(p) is not None and whole_score_agrees(p, labelled_key(p))]
        found["  ... label and whole score agree"] = labelled((p, "soprano") for p in agreed)
        airs = aird_airs(work / "aird-airs")
        found["Aird's airs (ABC key and mode)"] = airs
        found["  ... in a major or minor key"] = [a for a in airs if a[2] is None]
        found["  ... in a church mode (Dorian, Mixolydian, ...)"] = [a for a in airs if a[2] is not None]
    except ImportError:
        print("music21 is not installed: no whole-score check of the chorales, no Aird's airs", file=sys.stderr)
    found["chorales, four voices"] = labelled((p, None) for p in chorales)
    if (SHARED / "nottingham").is_dir():
        tunes = sorted((SHARED / "nottingham").glob("*.mid"))
        found["Nottingham melodies"] = labelled((p, "melody") for p in tunes)
        found["Nottingham with chords"] = labelled((p, None) for p in tunes)
    return found


def key_of(notes: np.ndarray, profiles) -> int:
    """Key index by these profiles alone, or by theory.phrase_key (None)."""
    if profiles is None:
        return theory.phrase_key_index(notes)
    return theory.estimate_key_index(notes, profiles)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/melodylstm-key-sets"), help="where Aird's airs are written")
    args = ap.parse_args(argv)
    profiles = {"Krumhansl-Kessler": theory.KEY_PROFILES, "Temperley-Kostka-Payne": theory.MELODY_PROFILES,
                "phrase_key (TKP, the opening tone)": None}
    print(f"| pieces | labelled | {' | '.join(f'{n}: first {args.bars} bars / whole' for n in profiles)} "
          f"| held by `continue`, first {args.bars} bars: agree / held |")
    print("|---|---|" + "---|" * (len(profiles) + 1))
    for name, items in corpora(args.work).items():
        hits = {n: [[], []] for n in profiles}
        held, same_notes = [], []
        for song, truth, church in items:
            opening = song.notes[song.notes[:, ONSET] < song.tempo_map.bar_start(args.bars)]
            if len(opening) < 3:
                continue
            for n, rows in profiles.items():
                hits[n][0].append(key_of(opening, rows) == truth)
                hits[n][1].append(key_of(song.notes, rows) == truth)
            key = theory.phrase_key_index(opening, sure=True)
            held.append(None if key == theory.KEY_UNKNOWN else key == truth)
            if church is not None and key != theory.KEY_UNKNOWN:
                same_notes.append((notes_of(key) == church, key == truth or notes_of(key) == church))
        count = len(held)
        cells = " | ".join(f"{np.mean(a):.0%} / {np.mean(b):.0%}" for a, b in hits.values())
        kept = [h for h in held if h is not None]
        print(f"| {name} | {count} | {cells} | {np.mean(kept):.0%} / {len(kept) / count:.0%} |", flush=True)
        if same_notes and len(same_notes) == len(kept):  # a church mode's tonic is no major or minor key's
            notes, either = np.mean(same_notes, axis=0)
            print(f"| {name[:6]}held key with the mode's notes (A Mixolydian: D major; either: its tonic or its notes) "
                  f"| {count} | " + "- | " * len(profiles) + f"{notes:.0%} (either: {either:.0%}) / "
                  f"{len(kept) / count:.0%} |", flush=True)


if __name__ == "__main__":
    main()
