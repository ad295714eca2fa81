"""Does `--key` land in the asked key, in every key and style, and does key guidance leave each
style's texture alone?

    python benchmarks/keys.py                      # default model, 24 keys x styles x 4 seeds
    python benchmarks/keys.py -c checkpoints/run --seeds 2

For each style and each of the 24 major/minor keys, `generate --key K --bars 16` with seeds
1..N; a piece counts as in the asked key when the Krumhansl-Schmuckler estimate of its notes is
that key. Texture: notes sounding together at each onset, averaged per piece, for each style
with the key told plainly (guidance 0) and at each documented guidance strength.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melodylstm import theory  # noqa: E402
from melodylstm.metrics.continuations import polyphony_at_onsets  # noqa: E402
from melodylstm.generate import Generator  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--checkpoint", default=None)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--bars", type=int, default=16)
    args = ap.parse_args(argv)
    gen = Generator.load(args.checkpoint)
    keys = [theory.key_label(i) for i in range(24)]
    print("| style | pieces in the asked key | misses (asked -> heard) |\n|---|---|---|")
    for style in gen.styles or [None]:
        hits, misses = 0, []
        for key in keys:
            songs = gen.generate(bars=args.bars, num=args.seeds, seed=1, key=key, style=style)
            for song in songs:
                heard = theory.key_label(theory.estimate_key_index(song.notes))
                hits += heard == key
                if heard != key:
                    misses.append(f"{key}->{heard}")
        total = len(keys) * args.seeds
        print(f"| {style} | {hits}/{total} ({hits / total:.0%}) | {', '.join(misses[:8]) or '-'} |", flush=True)
    print("\n| style | notes together, key told (0) | at 3 (the default for --key) | at 5 | at 10 |\n|---|---|---|---|---|")
    for style in gen.styles or [None]:
        cells = []
        for strength in (0.0, 3.0, 5.0, 10.0):
            songs = gen.generate(bars=args.bars, num=6, seed=1, key="Eb:major", style=style, key_strength=strength)
            cells.append(f"{np.mean([polyphony_at_onsets(s.notes) for s in songs]):.2f}")
        print(f"| {style} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
