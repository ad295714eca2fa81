"""The key of a primer: does a piece's opening name the key the piece is written in?

    python benchmarks/primer_key.py                  # every corpus found, first 4 bars
    python benchmarks/primer_key.py --bars 2

The truth is each file's labelled key: the key signature and mode its MIDI file carries (the
chorales from music21's scores, the Nottingham tunes from their ABC headers); files without one
are left out. For the first N bars and for the whole piece, the share of pieces whose estimate
is that key, with the Krumhansl-Kessler profiles (theory.KEY_PROFILES, the running key the model
is told), the melody profiles of Temperley-Kostka-Payne alone, and theory.phrase_key (those
profiles and the tonic triad around the first note: what `continue`, `--key auto` and the
continuation figures use). The melody sets hold one line of each piece:
the chorale sopranos of the default model's validation split (the set the choice was made on)
and the Nottingham melodies without their chords.
"""
from __future__ import annotations

import argparse
import hashlib
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


def labelled_key(path: Path) -> int | None:
    """Key index of the file's first key signature (mido names it 'Bb' or 'Gm'), None without one."""
    for track in mido.MidiFile(str(path)).tracks:
        for msg in track:
            if msg.type == "key_signature":
                name = msg.key[:-1] + ":minor" if msg.key.endswith("m") else msg.key + ":major"
                return theory.key_index(*theory.parse_key(name))
    return None


def one_line(path: Path, name: str, resolution: int = 12) -> Song | None:
    for track, song in read_midi_tracks(path, resolution):
        if name in track.lower() and len(song.notes):
            return song
    return None


def corpora() -> dict:
    """name -> list of (path, the part of it scored: None for every note, or a track name)."""
    chorales = sorted((ROOT / "datasets" / "bach_chorales").glob("*.mid"))
    held_out = [p for p in chorales if is_validation(hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest(), 0.1)]
    found = {"chorale sopranos (held out)": [(p, "soprano") for p in held_out],
             "chorales, four voices": [(p, None) for p in chorales]}
    if (SHARED / "nottingham").is_dir():
        tunes = sorted((SHARED / "nottingham").glob("*.mid"))
        found["Nottingham melodies"] = [(p, "melody") for p in tunes]
        found["Nottingham with chords"] = [(p, None) for p in tunes]
    return found


def key_of(notes: np.ndarray, profiles) -> int:
    """Key index by these profiles alone, or by theory.phrase_key (None)."""
    if profiles is None:
        return theory.phrase_key_index(notes)
    return theory.estimate_key_index(notes, profiles)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bars", type=int, default=4)
    args = ap.parse_args(argv)
    profiles = {"Krumhansl-Kessler": theory.KEY_PROFILES, "Temperley-Kostka-Payne": theory.MELODY_PROFILES,
                "phrase_key (TKP, the opening tone)": None}
    print(f"| pieces | labelled | {' | '.join(f'{n}: first {args.bars} bars / whole' for n in profiles)} |")
    print("|---|---|" + "---|" * len(profiles))
    for name, items in corpora().items():
        hits = {n: [[], []] for n in profiles}
        for path, part in items:
            truth = labelled_key(path)
            song = read_midi(path, 12) if part is None else one_line(path, part)
            if truth is None or song is None or len(song.notes) == 0:
                continue
            opening = song.notes[song.notes[:, ONSET] < song.tempo_map.bar_start(args.bars)]
            if len(opening) < 3:
                continue
            for n, rows in profiles.items():
                hits[n][0].append(key_of(opening, rows) == truth)
                hits[n][1].append(key_of(song.notes, rows) == truth)
        count = len(next(iter(hits.values()))[0])
        cells = " | ".join(f"{np.mean(a):.0%} / {np.mean(b):.0%}" for a, b in hits.values())
        print(f"| {name} | {count} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
