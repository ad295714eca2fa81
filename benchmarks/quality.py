"""Quality per CPU-minute: `melodylstm train` with its defaults against two peers (a plain PyTorch
LSTM loop and a small GPT, `peers.py`) and a Kneser-Ney 5-gram, on each corpus's held-out files,
for fixed time budgets.

    python benchmarks/quality.py                       # 1, 5 and 10 minutes on every corpus found
    python benchmarks/quality.py --minutes 1 --corpus chorales=datasets/bach_chorales
    python benchmarks/quality.py --peer-from earlier.json   # re-measure melodylstm only

Corpora: the bundled chorales and tunes, and ../shared/midi/nottingham and ../shared/midi/pop909
when present. Every figure is bits per note on the same held-out files (a content-hash split),
so the four models are compared on the same music whatever their tokens, and every figure is
causal (no model is told anything computed from the notes it predicts). No model sees the
held-out files before it is scored: melodylstm trains on copies of the training files and picks
its best checkpoint on its own split of those, like the GPT peer.
The LSTM peer ("peer" in the JSON) is what a user would write in 40 lines: MidiTok TSD tokens,
nn.LSTM 2x256, AdamW at a constant 2e-3, random windows of 128 tokens, no augmentation. The GPT
peer ("gpt") is a small Transformer on the same tokens, the better of two sizes each trained for
the same minutes (chosen on 5% of the training files, never on the held-out ones). Runs one thing
at a time: a timed run must have the machine to itself.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from peers import gpt_bits, lstm_loop_bits, tsd_tokens  # noqa: F401 (tsd_tokens: kept importable from here)

ROOT = Path(__file__).resolve().parent.parent
LN2 = math.log(2)


def default_corpora() -> dict:
    found = {"chorales": ROOT / "datasets" / "bach_chorales", "tunes": ROOT / "datasets" / "tunes",
             "nottingham": ROOT.parent / "shared" / "midi" / "nottingham",
             "pop909": ROOT.parent / "shared" / "midi" / "pop909"}
    return {name: path for name, path in found.items() if path.is_dir() and any(path.rglob("*.mid"))}


def split_files(folder: Path):
    """(train results, val results) with melodylstm's tokens and note counts: the split every model uses."""
    from melodylstm.data import default_cache_dir, find_midi_files, split_results, tokenize_files
    from melodylstm.tokenizer import Tokenizer

    results = tokenize_files(find_midi_files(folder)[0], Tokenizer(), str(default_cache_dir()))
    used = sorted((r for r in results if not r.reason), key=lambda r: r.content_hash)
    return split_results(used, 0.1)


# ---------------------------------------------------------------- melodylstm train, defaults

def copy_files(results, folder: Path) -> Path:
    """Copies of the files of `results` in one folder (names made unique by their hash)."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        shutil.copyfile(r.path, folder / f"{r.content_hash[:12]}-{Path(r.path).name}")
    return folder


def melodylstm_bits(train, val, minutes: float, workdir: Path, threads: int = 0, extra=()) -> dict:
    """`melodylstm train` on copies of the training files only (it picks its best checkpoint on
    its own validation split of those, as the peers do), `evaluate` on copies of the held-out
    files, which no choice in training has seen."""
    out = workdir / "run"
    train_dir, val_dir = copy_files(train, workdir / "train"), copy_files(val, workdir / "held-out")
    # with a thread budget, ingest keeps to it too: two processes would slow the lane beside it
    cmd = [sys.executable, "-m", "melodylstm", "-q", "train", str(train_dir), "-o", str(out), "--max-time", str(minutes),
           *(("-j", str(threads)) if threads else ()), *extra]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - started
    ev = subprocess.run([sys.executable, "-m", "melodylstm", "-q", "evaluate", str(val_dir), "-c", str(out),
                         "--json"], check=True, capture_output=True, text=True)
    report = json.loads(ev.stdout)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    switched = [r["step"] for r in steps if "regularised" in r]
    return {"bits_per_note": report["lstm"]["bits_per_note"], "ngram_bits_per_note": (report.get("ngram") or {}).get("bits_per_note"),
            "steps": max(r.get("step", 0) for r in steps), "wall_s": round(wall, 1),
            "regularised_at": switched[0] if switched else None}


# ---------------------------------------------------------------- the table

def run(corpora: dict, minutes_list, out_json: Path | None, threads: int = 0, peer_rows=(), seed: int = 0) -> list:
    """peer_rows: rows of an earlier run whose peer figures are reused (a peer the earlier run has
    no figure for is trained)."""
    earlier = {(r["corpus"], r["minutes"]): r for r in peer_rows}
    rows = []
    for name, folder in corpora.items():
        train, val = split_files(folder)
        for minutes in minutes_list:
            with tempfile.TemporaryDirectory() as tmp:
                ours = melodylstm_bits(train, val, minutes, Path(tmp), threads, extra=("--seed", str(seed)))
            old = earlier.get((name, minutes), {})
            peer = ({"bits_per_note": old["peer"], "steps": old["peer_steps"]} if "peer" in old
                    else lstm_loop_bits(train, val, minutes, seed=seed, threads=threads))
            gpt = ({"bits_per_note": old["gpt"], "steps": old["gpt_steps"], "size": old["gpt_size"], "tried": old.get("gpt_tried")}
                   if "gpt" in old else gpt_bits(train, val, minutes, seed=seed, threads=threads))
            row = {"corpus": name, "train_files": len(train), "val_files": len(val),
                   "train_tokens": int(sum(len(r.tokens) for r in train)), "minutes": minutes,
                   "melodylstm": ours["bits_per_note"], "melodylstm_steps": ours["steps"],
                   "regularised_at": ours["regularised_at"], "peer_from_earlier_run": "peer" in old,
                   "peer": peer["bits_per_note"], "peer_steps": peer["steps"],
                   "gpt_from_earlier_run": "gpt" in old, "gpt": float(gpt["bits_per_note"]), "gpt_steps": gpt["steps"],
                   "gpt_size": gpt["size"], "gpt_tried": gpt["tried"], "ngram5": ours["ngram_bits_per_note"]}
            row["vs_peer"] = 1 - row["melodylstm"] / row["peer"]
            row["vs_gpt"] = 1 - row["melodylstm"] / row["gpt"]
            row["vs_ngram"] = 1 - row["melodylstm"] / row["ngram5"] if row["ngram5"] else None
            rows.append(row)
            print(format_row(row), flush=True)
            if out_json:
                out_json.write_text(json.dumps(rows, indent=2, default=float))
    return rows


def format_row(r) -> str:
    """Differences as 'melodylstm is X% below': negative is better."""
    ngram = f"{r['ngram5']:.2f}" if r["ngram5"] else "-"
    vs_ngram = f"{-r['vs_ngram']:+.0%}" if r["vs_ngram"] is not None else "-"
    steps = f"{r['melodylstm_steps']:,}" + (f" (regularised from {r['regularised_at']:,})" if r.get("regularised_at") else "")
    return (f"| {r['corpus']} ({r['train_files']}/{r['val_files']} files) | {r['minutes']:g} | **{r['melodylstm']:.2f}** "
            f"| {steps} | {r['peer']:.2f} | {r['gpt']:.2f} ({r['gpt_size']}) | {ngram} | {-r['vs_peer']:+.0%} "
            f"| {-r['vs_gpt']:+.0%} | {vs_ngram} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    parser.add_argument("--corpus", action="append", help="NAME=FOLDER (repeatable; default: every corpus found)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: PyTorch's default)")
    parser.add_argument("--peer-from", type=Path, help="reuse the peers' figures of an earlier --json (same corpora, minutes); "
                        "a peer it lacks (the GPT, in a JSON from before it) is trained")
    parser.add_argument("--seed", type=int, default=0, help="every model's seed (the spread between seeds: benchmarks/README.md)")
    args = parser.parse_args()
    corpora = dict(c.split("=", 1) for c in args.corpus) if args.corpus else default_corpora()
    corpora = {k: Path(v) for k, v in corpora.items()}
    print(f"machine: {os.cpu_count()} cores, {args.threads or 'default'} thread(s) per run; "
          "bits/note on held-out files (lower is better)")
    print("| corpus (train/val files) | minutes | melodylstm train | its steps | plain loop (peer) | small GPT (size) "
          "| 5-gram | vs peer | vs GPT | vs 5-gram |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    peer_rows = json.loads(args.peer_from.read_text()) if args.peer_from else ()
    run(corpora, args.minutes, args.json, args.threads, peer_rows, args.seed)


if __name__ == "__main__":
    main()
