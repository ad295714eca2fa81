"""Does `--key` land in the asked key, in every key and style, and does key guidance leave each
style's texture alone?

    python benchmarks/keys.py                      # default model, 24 keys x styles x 4 seeds
    python benchmarks/keys.py -c checkpoints/run --seeds 2

For each style and each of the 24 major/minor keys, `generate --key K --bars 16` with seeds
1..N; a piece counts as in the asked key when the Krumhansl-Schmuckler estimate of its notes is
that key, and the share of its notes on the asked tonic (a drone shows there). Texture: notes
sounding together at each onset, averaged per piece, for each style with the key told plainly
(guidance 0) and at each documented guidance strength. Holes: without --key, the share of the
time of 24 pieces per style with no note sounding.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from melodylstm import theory  # noqa: E402
from melodylstm.metrics.continuations import polyphony_at_onsets, silent_share  # noqa: E402
from melodylstm.generate import Generator  # noqa: E402
from melodylstm.midi import ONSET, PITCH  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--checkpoint", default=None)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--bars", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1, help="the first of the --seeds seeds")
    args = ap.parse_args(argv)
    gen = Generator.load(args.checkpoint)
    keys = [theory.key_label(i) for i in range(24)]
    print("| style | pieces in the asked key | notes on the asked tonic (median) | misses (asked -> heard) |\n"
          "|---|---|---|---|")
    for style in gen.styles or [None]:
        hits, misses, tonic = 0, [], []
        for index, key in enumerate(keys):
            songs = gen.generate(bars=args.bars, num=args.seeds, seed=args.seed, key=key, style=style)
            for song in songs:
                heard = theory.key_label(theory.estimate_key_index(song.notes))
                hits += heard == key
                tonic.append(np.mean(song.notes[:, PITCH] % 12 == index % 12))
                if heard != key:
                    misses.append(f"{key}->{heard}")
        total = len(keys) * args.seeds
        print(f"| {style} | {hits}/{total} ({hits / total:.0%}) | {np.median(tonic):.2f} | {', '.join(misses[:8]) or '-'} |",
              flush=True)
    print("\n| style | notes together, key told (0) | at 3 (the default for --key) | at 5 | at 10 |\n|---|---|---|---|---|")
    for style in gen.styles or [None]:
        cells = []
        for strength in (0.0, 3.0, 5.0, 10.0):
            songs = gen.generate(bars=args.bars, num=6, seed=1, key="Eb:major", style=style, key_strength=strength)
            cells.append(f"{np.mean([polyphony_at_onsets(s.notes) for s in songs]):.2f}")
        print(f"| {style} | " + " | ".join(cells) + " |", flush=True)
    print("\n| style | no --key, seeds 1-24: time with no note sounding, from the first note (mean / worst) |\n"
          "|---|---|")
    for style in gen.styles or [None]:
        silent = [silent_time(gen.generate(bars=args.bars, num=1, seed=seed, style=style)[0], args.bars)
                  for seed in range(1, 25)]
        print(f"| {style} | {np.mean(silent):.1%} / {np.max(silent):.1%} |", flush=True)


def silent_time(song, bars: int) -> float:
    """Share of the time from the first note to the end of `bars` bars with no note sounding."""
    if len(song.notes) == 0:
        return 1.0
    first = int(song.notes[:, ONSET].min())
    return silent_share(song.notes, first, song.tempo_map.bar_start(bars) - first)


if __name__ == "__main__":
    main()
