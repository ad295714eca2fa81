"""Quality per CPU-minute: `melodylstm train` with its defaults against a plain PyTorch loop (the
peer) and a Kneser-Ney 5-gram, on each corpus's held-out files, for fixed time budgets.

    python benchmarks/quality.py                       # 1, 5 and 10 minutes on every corpus found
    python benchmarks/quality.py --minutes 1 --corpus chorales=datasets/bach_chorales
    python benchmarks/quality.py --peer-from earlier.json   # re-measure melodylstm only

Corpora: the bundled chorales and tunes, and ../shared/midi/nottingham and ../shared/midi/pop909
when present. Every figure is bits per note on the same held-out files (melodylstm's content-hash
validation split), so the three models are compared on the same music whatever their tokens.
The peer is what a user would write in 40 lines: MidiTok TSD tokens, nn.LSTM 2x256, AdamW at a
constant 2e-3, random windows of 128 tokens, no augmentation. Runs one thing at a time: a timed
run must have the machine to itself.
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

import numpy as np

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

def melodylstm_bits(folder: Path, minutes: float, workdir: Path, threads: int = 0, extra=()) -> dict:
    out = workdir / "run"
    cmd = [sys.executable, "-m", "melodylstm", "-q", "train", str(folder), "-o", str(out), "--max-time", str(minutes), *extra]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    wall = time.perf_counter() - started
    ev = subprocess.run([sys.executable, "-m", "melodylstm", "-q", "evaluate", str(folder), "-c", str(out),
                         "--split", "val", "--json"], check=True, capture_output=True, text=True)
    report = json.loads(ev.stdout)
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    switched = [r["step"] for r in steps if "regularised" in r]
    return {"bits_per_note": report["lstm"]["bits_per_note"], "ngram_bits_per_note": (report.get("ngram") or {}).get("bits_per_note"),
            "steps": max(r.get("step", 0) for r in steps), "wall_s": round(wall, 1),
            "regularised_at": switched[0] if switched else None}


# ---------------------------------------------------------------- the peer: a plain loop

def tsd_tokens(files):
    import miditok
    import symusic

    tok = miditok.TSD(miditok.TokenizerConfig(use_programs=True, num_velocities=32))
    seqs = []
    for f in files:
        ids = tok.encode(symusic.Score(f.path)).ids
        seqs.append(np.array([tok["BOS_None"]] + list(ids) + [tok["EOS_None"]], dtype=np.int64))
    return seqs, len(tok)


def peer_bits(train, val, minutes: float, seed: int = 0, threads: int = 0) -> dict:
    """The 40-line loop a user would write; bits/note on the validation files, state carried."""
    import torch
    from torch import nn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    train_seqs, vocab = tsd_tokens(train)
    val_seqs, _ = tsd_tokens(val)
    stream = torch.from_numpy(np.concatenate(train_seqs))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.head = nn.Embedding(vocab, 128), nn.LSTM(128, 256, 2, batch_first=True, dropout=0.2), nn.Linear(256, vocab)

        def forward(self, x, state=None):
            y, state = self.lstm(self.emb(x), state)
            return self.head(y), state

    net = Net()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    deadline, steps, g = time.perf_counter() + minutes * 60, 0, torch.Generator().manual_seed(seed)
    while time.perf_counter() < deadline:
        starts = torch.randint(0, len(stream) - 129, (32,), generator=g)
        batch = stream[starts[:, None] + torch.arange(129)]
        logits, _ = net(batch[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        steps += 1
    net.eval()
    nats = 0.0
    with torch.no_grad():
        for seq in val_seqs:
            x = torch.from_numpy(seq)[None]
            logits, _ = net(x[:, :-1])
            nats += float(nn.functional.cross_entropy(logits[0], x[0, 1:], reduction="sum"))
    notes = sum(r.notes for r in val)
    return {"bits_per_note": nats / LN2 / notes, "steps": steps}


# ---------------------------------------------------------------- the table

def run(corpora: dict, minutes_list, out_json: Path | None, threads: int = 0, peer_rows=()) -> list:
    """peer_rows: rows of an earlier run whose peer figures are reused (the peer is not re-trained)."""
    earlier = {(r["corpus"], r["minutes"]): r for r in peer_rows}
    rows = []
    for name, folder in corpora.items():
        train, val = split_files(folder)
        for minutes in minutes_list:
            with tempfile.TemporaryDirectory() as tmp:
                ours = melodylstm_bits(folder, minutes, Path(tmp), threads)
            old = earlier.get((name, minutes))
            peer = ({"bits_per_note": old["peer"], "steps": old["peer_steps"]} if old
                    else peer_bits(train, val, minutes, threads=threads))
            row = {"corpus": name, "train_files": len(train), "val_files": len(val),
                   "train_tokens": int(sum(len(r.tokens) for r in train)), "minutes": minutes,
                   "melodylstm": ours["bits_per_note"], "melodylstm_steps": ours["steps"],
                   "regularised_at": ours["regularised_at"], "peer_from_earlier_run": bool(old),
                   "peer": peer["bits_per_note"], "peer_steps": peer["steps"], "ngram5": ours["ngram_bits_per_note"]}
            row["vs_peer"] = 1 - row["melodylstm"] / row["peer"]
            row["vs_ngram"] = 1 - row["melodylstm"] / row["ngram5"] if row["ngram5"] else None
            rows.append(row)
            print(format_row(row), flush=True)
            if out_json:
                out_json.write_text(json.dumps(rows, indent=2))
    return rows


def format_row(r) -> str:
    """Differences as 'melodylstm is X% below': negative is better."""
    ngram = f"{r['ngram5']:.2f}" if r["ngram5"] else "-"
    vs_ngram = f"{-r['vs_ngram']:+.0%}" if r["vs_ngram"] is not None else "-"
    steps = f"{r['melodylstm_steps']:,}" + (f" (regularised from {r['regularised_at']:,})" if r.get("regularised_at") else "")
    return (f"| {r['corpus']} ({r['train_files']}/{r['val_files']} files) | {r['minutes']:g} | **{r['melodylstm']:.2f}** "
            f"| {steps} | {r['peer']:.2f} | {ngram} | {-r['vs_peer']:+.0%} | {vs_ngram} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10])
    parser.add_argument("--corpus", action="append", help="NAME=FOLDER (repeatable; default: every corpus found)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per run (0: PyTorch's default)")
    parser.add_argument("--peer-from", type=Path, help="reuse the peer figures of an earlier --json (same corpora, minutes)")
    args = parser.parse_args()
    corpora = dict(c.split("=", 1) for c in args.corpus) if args.corpus else default_corpora()
    corpora = {k: Path(v) for k, v in corpora.items()}
    print(f"machine: {os.cpu_count()} cores, {args.threads or 'default'} thread(s) per run; "
          "bits/note on held-out files (lower is better)")
    print("| corpus (train/val files) | minutes | melodylstm train | its steps | plain loop (peer) | 5-gram | vs peer | vs 5-gram |")
    print("|---|---|---|---|---|---|---|---|")
    peer_rows = json.loads(args.peer_from.read_text()) if args.peer_from else ()
    run(corpora, args.minutes, args.json, args.threads, peer_rows)


if __name__ == "__main__":
    main()
