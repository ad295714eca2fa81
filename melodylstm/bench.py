"""`melodylstm bench`: speed figures measured side by side in one run, as ratios to baselines.

1. tokenization notes/s: melodylstm vs MidiTok TSD on the same files; cache read speed-up
2. training tokens/s: `melodylstm train`'s loop vs a bare nn.LSTM loop with the same shapes
3. sampling tokens/s at batch 1 and 16: our sampler vs plain nn.LSTM stepping vs window re-feeding
4. CLI latency: `melodylstm --help` and an 8-bar `continue` with the default model
5. sampling under load: batched sampling as the machine is and with one more busy process
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .data import BUNDLED_DATASETS

BUNDLED_CORPUS = BUNDLED_DATASETS / "bach_chorales"


def machine() -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return f"{cpu_model()}, {os.cpu_count()} cores, {device}, torch {torch.__version__}"


def cpu_model() -> str:
    """The CPU's name: ratios against PyTorch differ a lot between CPU makers (MKL on AMD)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------- 1. tokenization

def bench_tokenize(files) -> dict:
    from .controls import controls_for
    from .data import load_corpus, one_blas_thread, tokenize_files
    from .midi import read_midi
    from .tokenizer import Tokenizer

    tok = Tokenizer()
    notes = sum(len(tok.normalize(read_midi(f, 12))[0].notes) for f in files)

    def ours():  # what `melodylstm data` computes per file: tokens and every control
        for f in files:
            tokens, kept, _ = tok.tokenize(read_midi(f, 12))
            if len(kept.notes):
                controls_for(kept, tokens, tok)

    def tokens_only():
        for f in files:
            tok.tokenize(read_midi(f, 12))

    try:
        import miditok
        import symusic

        cfg = miditok.TokenizerConfig(use_programs=True, num_velocities=32, beat_res={(0, 4): 12, (4, 12): 4})
        tsd = miditok.TSD(cfg)

        def theirs():
            for f in files:
                tsd.encode(symusic.Score(str(f)))
    except ImportError:
        theirs = None
    # taken in turns, fastest of each: on a shared machine the load moves between the rounds,
    # and in turns each side sees the same spread of it
    runs = {"ours": ours, "plain": tokens_only, **({"theirs": theirs} if theirs else {})}
    seconds = {name: float("inf") for name in runs}
    with one_blas_thread():  # as `melodylstm data` runs them
        for _ in range(5):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                seconds[name] = min(seconds[name], time.perf_counter() - start)
    ours_s, plain_s = seconds["ours"], seconds["plain"]
    result = {"files": len(files), "notes": notes, "melodylstm_notes_per_s": notes / ours_s,
              "tokens_only_notes_per_s": notes / plain_s}
    if theirs is not None:
        theirs_s = seconds["theirs"]
        result["miditok_tsd_notes_per_s"] = notes / theirs_s
        result["speedup_vs_miditok"] = theirs_s / ours_s
        result["tokens_only_speedup_vs_miditok"] = theirs_s / plain_s
    else:
        result["miditok_tsd_notes_per_s"] = None
        result["note"] = "MidiTok not installed (pip install miditok) - comparison skipped"
    # the whole `melodylstm data` job, one process: first run (empty cache) against a repeat run
    folder = Path(files[0]).parent
    cache = tempfile.mkdtemp(prefix="melodylstm-bench-cache-")
    try:
        cold = best_of(lambda: (shutil.rmtree(cache, ignore_errors=True), load_corpus(folder, tok, cache, jobs=1)), 3)
        warm = best_of(lambda: load_corpus(folder, tok, cache, jobs=1))
        shutil.rmtree(Path(cache) / "corpora", ignore_errors=True)  # keep per-file entries only
        per_file = best_of(lambda: tokenize_files(files, tok, cache, jobs=1))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result.update({"uncached_s": cold, "cached_s": warm, "cache_speedup": cold / warm,
                   "per_file_cache_s": per_file})
    return result


# ---------------------------------------------------------------- 2. training

def bench_train(corpus, layers, hidden, embedding, batch, seq_len, steps) -> dict:
    import torch
    import torch.nn.functional as F

    from .config import ModelConfig
    from .tokenizer import Tokenizer
    from .train import Run, TrainConfig

    tok = Tokenizer()
    vocab = len(tok)
    tokens = batch * seq_len

    # bare loop: synthetic tokens, same shapes, same optimizer
    torch.manual_seed(0)
    emb = torch.nn.Embedding(vocab, embedding)
    lstm = torch.nn.LSTM(embedding, hidden, layers, batch_first=True, dropout=0.2 if layers > 1 else 0)
    head = torch.nn.Linear(hidden, vocab)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq_len + 1))

    def bare_step():
        out, _ = lstm(emb(x[:, :-1]))
        loss = F.cross_entropy(head(out).reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()

    bare_step()
    bare_s = best_of(bare_step, steps)  # fastest step: robust to other work on the machine

    def ours(controls: bool) -> float:
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(out=out, max_steps=steps + 2, batch_size=batch, seq_len=seq_len, log_every=1, evals=1,
                              patience=0, save_interval=1e9, device="cpu" if not torch.cuda.is_available() else "auto")
            # without controls: the plain token model; with: key, chord, density, position, lookback inputs too
            model = ({"embedding": embedding, "hidden": hidden, "layers": layers, "dropout": 0.2} if controls
                     else ModelConfig(vocab, embedding, hidden, layers, 0.2))
            run = Run(corpus, tok, model, cfg, log=lambda m: None, progress=False, data_options={"jobs": 1})
            run.train()
            records = [r for r in run.history if "loss" in r and r["step"] > 2]  # skip warm-up steps
            return float(max(r["tokens_per_s"] for r in records))  # fastest step, as for the bare loop

    plain, controlled = ours(False), ours(True)
    bare = tokens / bare_s
    return {"shape": f"{layers}x{hidden} (emb {embedding}), batch {batch}, seq {seq_len}",
            "bare_tokens_per_s": bare, "melodylstm_tokens_per_s": plain, "ratio": plain / bare,
            "controls_tokens_per_s": controlled, "controls_ratio": controlled / plain}


def bench_memory(corpus, copies=(1, 8), steps=5) -> dict:
    """Peak RSS of a short training run on the corpus and on N copies of it: the token store
    is memory-mapped, so memory should not grow with the corpus."""

    files = sorted(Path(corpus).rglob("*.mid"))
    out = {}
    for n in copies:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(n):
                folder = Path(tmp) / "corpus" / f"copy{i}"
                folder.mkdir(parents=True)
                for f in files:
                    # a different byte per copy gives each its own content hash, so nothing is deduplicated
                    (folder / f.name).write_bytes(f.read_bytes() + bytes([i]))
            code = ("import resource, sys; from melodylstm.cli import cli; "
                    "sys.argv=['melodylstm','-q','train',sys.argv[1],'-o',sys.argv[2],'--max-steps',sys.argv[3],"
                    "'-j','1','--cache-dir',sys.argv[4]]\n"
                    "try:\n    cli()\nexcept SystemExit:\n    pass\n"
                    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
            result = subprocess.run([sys.executable, "-c", code, str(Path(tmp) / "corpus"), str(Path(tmp) / "run"),
                                     str(steps), str(Path(tmp) / "cache")], capture_output=True, text=True, check=True)
            out[n] = int(result.stdout.strip().splitlines()[-1]) / 1024  # MB
    tokens = len(files)
    return {"copies": list(copies), "peak_rss_mb": [out[n] for n in copies], "files_per_copy": tokens}


# ---------------------------------------------------------------- 3. sampling

def _plain_model(vocab, layers, hidden, embedding):
    import torch

    torch.manual_seed(0)
    return (torch.nn.Embedding(vocab, embedding), torch.nn.LSTM(embedding, hidden, layers, batch_first=True),
            torch.nn.Linear(hidden, vocab))


def plain_stepping_rate(vocab, layers, hidden, embedding, n, batch=1) -> float:
    """The common loop: embedding -> LSTM on one token with (h, c) -> linear -> softmax -> multinomial."""
    import torch

    emb, lstm, head = _plain_model(vocab, layers, hidden, embedding)
    with torch.inference_mode():
        tok = torch.ones(batch, 1, dtype=torch.long)
        state = None
        start = time.perf_counter()
        for _ in range(n):
            out, state = lstm(emb(tok), state)
            probs = torch.softmax(head(out[:, -1]), dim=-1)
            tok = torch.multinomial(probs, 1)
        return n * batch / (time.perf_counter() - start)


def refeed_rate(vocab, layers, hidden, embedding, n, window=256) -> float:
    """The tutorial loop: re-run the last `window` tokens from zero state for every new token."""
    import torch

    emb, lstm, head = _plain_model(vocab, layers, hidden, embedding)
    with torch.inference_mode():
        seq = torch.randint(1, vocab, (1, window))
        start = time.perf_counter()
        for _ in range(n):
            out, _ = lstm(emb(seq[:, -window:]))
            nxt = torch.multinomial(torch.softmax(head(out[:, -1]), dim=-1), 1)
            seq = torch.cat([seq[:, 1:], nxt], dim=1)
        return n / (time.perf_counter() - start)


def random_fast_lstm(layers, hidden, embedding, batch, controls=False):
    """Our numpy sampler network with a freshly initialised model's weights, ready for `batch` rows
    (with `controls`: key, chord, density, position, lookback and two styles as inputs too)."""
    import torch

    from .config import CONTROL_DIMS, ModelConfig
    from .controls import model_controls
    from .model import MelodyLSTM
    from .sampling import FastLSTM
    from .tokenizer import Tokenizer

    torch.manual_seed(0)
    styles = ("a", "b") if controls else ()
    config = ModelConfig(len(Tokenizer()), embedding, hidden, layers, 0.0,
                         controls=model_controls(12, styles, CONTROL_DIMS, controls), styles=styles)
    net = FastLSTM({k: v.numpy() for k, v in MelodyLSTM(config).state_dict().items()}, config)
    net.config = config
    net.reset(batch)
    return net


def sampler_rate(layers, hidden, embedding, n, batch=1, controls=False) -> float:
    from .controls import ControlPlan, parse_progression
    from .midi import TempoMap
    from .sampling import Sampler, start_state
    from .tokenizer import Tokenizer

    tok = Tokenizer()
    net = random_fast_lstm(layers, hidden, embedding, batch, controls)
    grid = TempoMap(resolution=12)
    state = start_state(tok, batch, grid)
    plan = ControlPlan(net.config, 12, grid, key=0, style=0, density=2,
                       progression=[[c] for c in parse_progression("C F G C")]) if controls else None
    sampler = Sampler(net, tok, temperature=1.0, plan=plan)
    never = np.zeros(batch, dtype=bool)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    sampler.run(batch, state, lambda s, t, k: never, rng, n)
    return n * batch / (time.perf_counter() - start)


def matmul_ceiling(layers, hidden, embedding, n, batch=16) -> float:
    """Tokens/s if a step did nothing but its matrix products (no gates, masks or sampling): the
    most any fp32 sampler can reach at this batch size on this machine."""
    net = random_fast_lstm(layers, hidden, embedding, batch)
    H = hidden
    gates, logits = np.empty((batch, 4 * H), np.float32), np.empty((batch, net.vocab), np.float32)

    def products():
        np.matmul(net.xh[0][:, H:], net.w[0], out=gates)
        for k in range(1, layers):
            np.matmul(net.xh[k], net.w[k], out=gates)
        np.matmul(net.xh[-1][:, H:], net.w_out, out=logits)

    products()
    start = time.perf_counter()
    for _ in range(n):
        products()
    return n * batch / (time.perf_counter() - start)


def peak_gemm_flops() -> float:
    """FLOP/s of a large fp32 matrix product (512 rows, the best case for BLAS) on this machine."""
    rng = np.random.default_rng(0)
    a, b = rng.random((512, 1024), dtype=np.float32), rng.random((1024, 2048), dtype=np.float32)
    out = np.empty((512, 2048), dtype=np.float32)
    seconds = best_of(lambda: np.matmul(a, b, out=out), repeats=10)
    return 2 * 512 * 1024 * 2048 / seconds


def flops_per_token(net) -> int:
    """Multiply-adds x 2 of one sampling step per row: the matrices a FastLSTM step multiplies
    (the first layer's input projection is a table lookup, so it does not count)."""
    return 2 * (sum(w.size for w in net.w) + net.w_out.size)


def bench_sampling(n=2000) -> list[dict]:
    from .tokenizer import Tokenizer

    vocab = len(Tokenizer())
    peak = peak_gemm_flops()
    rows = []
    for layers, hidden, embedding in ((2, 256, 128), (3, 512, 256)):
        plain = plain_stepping_rate(vocab, layers, hidden, embedding, n // 2)
        refeed = refeed_rate(vocab, layers, hidden, embedding, max(20, n // 40))
        ours1 = sampler_rate(layers, hidden, embedding, n)
        controls1 = sampler_rate(layers, hidden, embedding, n, controls=True)
        ours16 = sampler_rate(layers, hidden, embedding, n // 4, batch=16)
        ceiling16 = matmul_ceiling(layers, hidden, embedding, n // 4)
        rows.append({"model": f"{layers}x{hidden}", "plain_stepping": plain, "window_refeed": refeed,
                     "melodylstm_batch1": ours1, "melodylstm_batch16": ours16, "controls_batch1": controls1,
                     "controls_vs_plain_batch1": controls1 / ours1, "batch16_matmul_ceiling": ceiling16,
                     "peak_gemm_gflops": peak / 1e9,
                     "peak_bound": peak / flops_per_token(random_fast_lstm(layers, hidden, embedding, 1)),
                     "speedup_vs_plain": ours1 / plain, "batch16_vs_batch1": ours16 / ours1})
    return rows


def busy_process():
    """Another program keeping one core busy (what a shared machine has beside us)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def bench_under_load(layers=2, hidden=256, embedding=128, batch=32, n=3000, repeats=3) -> dict:
    """Batched sampling (16 variations with key guidance: 32 rows, the default model's shape),
    tokens/s on the machine as it is and with one more busy process, both in this run: with the
    sampler's thread policy (one BLAS thread, generate.one_blas_thread) and with every BLAS
    thread (the policy before), plus `generate -n 16 --bars 16` end to end."""
    from threadpoolctl import threadpool_limits

    steps = max(20, n // batch)

    def rate(threads):
        with threadpool_limits(threads, user_api="blas"):
            return sampler_rate(layers, hidden, embedding, steps, batch=batch, controls=True)

    threads = os.cpu_count() or 2
    idle, loaded = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "melodylstm", "-q", "generate", "-o", tmp + "/", "-n", "16", "--style", "tune",
               "--bars", "16", "--seed", "5"]

        def measure(into):  # fastest of the rounds: the machine's own load moves between them
            into["ours"] = max(into.get("ours", 0.0), rate(1))
            into["all_threads"] = max(into.get("all_threads", 0.0), rate(threads))
            start = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=True)
            into["cli_s"] = min(into.get("cli_s", float("inf")), time.perf_counter() - start)

        for _ in range(repeats):  # in turns, so both cases see the same spread of other work
            measure(idle)
            busy = busy_process()
            try:
                time.sleep(0.3)
                measure(loaded)
            finally:
                busy.kill()
                busy.wait()
    return {"model": f"{layers}x{hidden}", "rows": batch, "idle": idle, "loaded": loaded,
            "ours_slowdown": idle["ours"] / loaded["ours"], "all_threads_slowdown": idle["all_threads"] / loaded["all_threads"],
            "cli_slowdown": loaded["cli_s"] / idle["cli_s"], "load_before": os.getloadavg()[0]}


# ---------------------------------------------------------------- 4. CLI latency

def bench_cli(primer) -> dict:
    exe = [sys.executable, "-m", "melodylstm"]
    with tempfile.TemporaryDirectory() as tmp:
        help_s = best_of(lambda: subprocess.run(exe + ["--help"], capture_output=True, check=True))
        cont = exe + ["-q", "continue", str(primer), "-o", os.path.join(tmp, "out.mid"), "--bars", "8", "--seed", "1"]
        continue_s = best_of(lambda: subprocess.run(cont, capture_output=True, check=True))
    return {"help_s": help_s, "continue_8_bars_s": continue_s}


# ---------------------------------------------------------------- report

def run_all(corpus=None, quick=False) -> dict:
    corpus = Path(corpus) if corpus else BUNDLED_CORPUS
    from .data import find_midi_files

    files, _ = find_midi_files(corpus)
    if not files:
        raise ValueError(f"no MIDI files in {corpus}")
    results = {"machine": machine(), "corpus": str(corpus)}
    results["tokenize"] = bench_tokenize(files)
    steps = 4 if quick else 12
    results["train"] = [bench_train(corpus, 2, 256, 128, 32, 256, steps)]
    if not quick:
        results["train"].append(bench_train(corpus, 3, 512, 256, 64, 256, 4))
    results["memory"] = bench_memory(corpus, (1, 2) if quick else (1, 8))
    results["sampling"] = bench_sampling(600 if quick else 3000)
    results["load"] = bench_under_load(n=1000 if quick else 3000, repeats=2 if quick else 3)
    results["cli"] = bench_cli(files[0])
    return results


def format_results(r: dict) -> str:
    t = r["tokenize"]
    lines = [f"machine: {r['machine']}", "",
             "| tokenization | notes/s |", "|---|---|",
             f"| melodylstm (tokens and every control) | {t['melodylstm_notes_per_s']:,.0f} |"]
    if t.get("miditok_tsd_notes_per_s"):
        lines.append(f"| MidiTok TSD | {t['miditok_tsd_notes_per_s']:,.0f} |")
        lines.append(f"| **speed-up** | **{t['speedup_vs_miditok']:.1f}x** |")
        lines.append(f"| speed-up, tokens without controls | {t['tokens_only_speedup_vs_miditok']:.1f}x |")
    else:
        lines.append(f"| MidiTok TSD | {t.get('note')} |")
    lines.append(f"| `data` repeat run, cached ({t['files']} files) | **{t['cache_speedup']:.0f}x** faster "
                 f"({t['uncached_s']:.2f} s -> {t['cached_s'] * 1000:.1f} ms) |")
    lines.append(f"| per-file cache only (a changed folder) | {t['uncached_s'] / t['per_file_cache_s']:.0f}x "
                 f"({t['per_file_cache_s'] * 1000:.0f} ms) |")
    lines += ["", "| training | bare nn.LSTM loop tok/s | melodylstm train tok/s | ratio | with controls tok/s | ratio |",
              "|---|---|---|---|---|---|"]
    for row in r["train"]:
        lines.append(f"| {row['shape']} | {row['bare_tokens_per_s']:,.0f} | {row['melodylstm_tokens_per_s']:,.0f} "
                     f"| **{row['ratio']:.0%}** | {row['controls_tokens_per_s']:,.0f} | **{row['controls_ratio']:.0%}** |")
    m = r["memory"]
    lines += ["", "| training peak RSS | " + " | ".join(f"corpus x{n}" for n in m["copies"]) + " |",
              "|---|" + "---|" * len(m["copies"]),
              "| MB | " + " | ".join(f"{v:,.0f}" for v in m["peak_rss_mb"]) + " |"]
    lines += ["", "| sampling tok/s | plain stepping (b=1) | window re-feed (b=1) | melodylstm b=1 | "
              "b=1 with controls | melodylstm b=16 (aggregate) | b=16 ceiling: matrix products only | "
              "bound: products at peak fp32 rate |", "|---|---|---|---|---|---|---|---|"]
    for row in r["sampling"]:
        lines.append(f"| {row['model']} | {row['plain_stepping']:,.0f} | {row['window_refeed']:,.0f} | "
                     f"**{row['melodylstm_batch1']:,.0f}** ({row['speedup_vs_plain']:.1f}x) | "
                     f"{row['controls_batch1']:,.0f} ({row['controls_vs_plain_batch1']:.0%}) | "
                     f"**{row['melodylstm_batch16']:,.0f}** ({row['batch16_vs_batch1']:.1f}x b=1) | "
                     f"{row['batch16_matmul_ceiling']:,.0f} ({row['batch16_matmul_ceiling'] / row['melodylstm_batch1']:.1f}x b=1) | "
                     f"{row['peak_bound']:,.0f} ({row['peak_bound'] / row['melodylstm_batch1']:.1f}x b=1) |")
    if r["sampling"]:
        lines.append(f"\npeak fp32 rate: {r['sampling'][0]['peak_gemm_gflops']:.0f} GFLOP/s (a 512-row matrix product)")
    if r.get("load"):
        d = r["load"]
        i, o = d["idle"], d["loaded"]
        lines += ["", f"| sampling under load ({d['model']}, {d['rows']} rows) | as it is | one more busy process | slowdown |",
                  "|---|---|---|---|",
                  f"| melodylstm tok/s (one BLAS thread) | {i['ours']:,.0f} | {o['ours']:,.0f} | **{d['ours_slowdown']:.2f}x** |",
                  f"| every BLAS thread (the policy before) tok/s | {i['all_threads']:,.0f} | {o['all_threads']:,.0f} | "
                  f"{d['all_threads_slowdown']:.2f}x |",
                  f"| `generate -n 16 --bars 16` s | {i['cli_s']:.2f} | {o['cli_s']:.2f} | **{d['cli_slowdown']:.2f}x** |"]
    c = r["cli"]
    lines += ["", "| CLI, process start included | seconds |", "|---|---|",
              f"| melodylstm --help | {c['help_s']:.2f} |", f"| continue --bars 8 of the first chorale, four voices (default model) | {c['continue_8_bars_s']:.2f} |"]
    return "\n".join(lines)
