"""Rebuild datasets/bach_chorales/ from the Bach chorales in the music21 package's corpus.

    pip install music21 && python datasets/build_bach_chorales.py

Deterministic: the same music21 version writes byte-identical files.
"""
from __future__ import annotations

import hashlib
import sys
from multiprocessing import Pool
from pathlib import Path

OUT = Path(__file__).resolve().parent / "bach_chorales"
DEFAULT_BPM = 80  # the encodings carry no tempo; a calm chorale tempo


def convert(path: str):
    """(file name, MIDI bytes) or (file name, reason it was skipped)."""
    from music21 import corpus, midi, tempo

    name = Path(path).name.split(".mxl")[0].split(".xml")[0].split(".krn")[0] + ".mid"
    try:
        score = corpus.parse(path)
        if len(score.parts) < 2:
            return name, "fewer than two voices"
        if not score.recurse().getElementsByClass(tempo.MetronomeMark):
            score.parts[0].insert(0, tempo.MetronomeMark(number=DEFAULT_BPM))
        return name, midi.translate.streamToMidiFile(score).writestr()
    except Exception as exc:  # noqa: BLE001 - a chorale that fails to convert is skipped, with its reason
        return name, f"conversion failed ({type(exc).__name__})"


def main() -> None:
    from music21 import corpus

    paths = sorted(str(p) for p in corpus.getComposer("bach", fileExtensions=("mxl", "xml", "krn")))
    OUT.mkdir(exist_ok=True)
    seen, written, skipped = {}, 0, []
    with Pool() as pool:
        for name, result in pool.map(convert, paths, chunksize=4):
            if isinstance(result, str):
                skipped.append(f"{name}: {result}")
                continue
            digest = hashlib.sha256(result).hexdigest()
            if name in seen.values():  # the same chorale in two encodings: keep the first
                skipped.append(f"{name}: second encoding of the same chorale")
                continue
            if digest in seen:  # the corpus holds a few chorales twice
                skipped.append(f"{name}: duplicate of {seen[digest]}")
                continue
            seen[digest] = name
            (OUT / name).write_bytes(result)
            written += 1
    print(f"wrote {written} files to {OUT}, skipped {len(skipped)}")
    for line in skipped:
        print("  skipped", line, file=sys.stderr)


if __name__ == "__main__":
    main()
