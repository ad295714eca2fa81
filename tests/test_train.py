import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from melodylstm.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from melodylstm.config import ModelConfig
from melodylstm.model import MelodyLSTM
from melodylstm.tokenizer import Tokenizer
from melodylstm.train import Run, TrainConfig

from helpers import cli as run_cli

TOK = Tokenizer()
TINY = ["--layers", "1", "--hidden", "32", "--embedding", "16", "--batch-size", "4", "--seq-len", "32", "-j", "1"]


def cli(*args, **kw):
    return run_cli("-q", *args, timeout=600, **kw)


def losses(run_dir):
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]  # a re-run step overwrites the killed run's entry
    return out


def make_run(corpus, out, cache, resume=False, **kw):
    cfg = TrainConfig(out=str(out), batch_size=8, seq_len=48, lr=1e-2, warmup=5, log_every=1, **kw)
    return Run(corpus, TOK, ModelConfig(len(TOK), 16, 48, 1, 0.0), cfg, data_options={"cache_dir": cache, "jobs": 1},
               log=lambda m: None, progress=False, resume=str(out) if resume else None)


def test_training_reduces_loss(tiny_corpus, tmp_path):
    run = make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=80, patience=0)
    assert run.train() == "done"
    curve = losses(tmp_path / "run")
    first, last = np.mean([curve[s] for s in range(1, 6)]), np.mean([curve[s] for s in range(76, 81)])
    assert last < first - 1.0, (first, last)
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000
    ckpt = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert ckpt.meta["val_nll"] is not None and ckpt.tokenizer.vocab == TOK.vocab


def test_existing_run_is_not_overwritten_without_resume(tiny_corpus, tmp_path):
    make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=3).train()
    with pytest.raises(ValueError, match="--resume"):
        make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=3)


def test_kill_9_at_random_moments_then_resume_matches_an_uninterrupted_run(tiny_corpus, tmp_path):
    import random

    args = ["train", str(tiny_corpus), *TINY, "--max-steps", "60", "--save-interval", "0", "--log-every", "1",
            "--cache-dir", str(tmp_path / "c")]
    ref = cli(*args, "-o", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    metrics = tmp_path / "killed" / "metrics.jsonl"
    rng = random.Random(7)
    for attempt in range(3):
        resume = ["--resume"] if attempt else []
        proc = subprocess.Popen([sys.executable, "-m", "melodylstm", "-q", *args, "-o", str(tmp_path / "killed"), *resume],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lines_before = len(metrics.read_text().splitlines()) if metrics.exists() else 0
        target = lines_before + rng.randint(1, 8)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            saved = (tmp_path / "killed" / "last.safetensors").exists()
            if saved and metrics.exists() and len(metrics.read_text().splitlines()) >= target:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # whatever the moment, the run folder holds a loadable checkpoint
        step = load_checkpoint(tmp_path / "killed" / "last.safetensors", with_train_state=True).train_state["step"]
        assert 0 < step < 60
    resumed = cli(*args, "-o", str(tmp_path / "killed"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = losses(tmp_path / "ref"), losses(tmp_path / "killed")
    assert sorted(a) == sorted(b)
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5
    assert records(tmp_path / "ref", "val_nll").keys() == records(tmp_path / "killed", "val_nll").keys()
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "ref" / "metrics.jsonl").read_text().splitlines())  # no step twice
    final_a = load_checkpoint(tmp_path / "ref" / "last.safetensors").weights
    final_b = load_checkpoint(tmp_path / "killed" / "last.safetensors").weights
    assert all(np.allclose(final_a[k], final_b[k], atol=1e-5) for k in final_a)


def test_bf16_autocast_runs_on_cpu(tiny_corpus, tmp_path):
    run = make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=4, precision="bf16")
    run.train()
    assert all(np.isfinite(v) for v in losses(tmp_path / "run").values())


def test_ddp_with_two_gloo_processes_keeps_ranks_in_sync(tiny_corpus, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "melodylstm", "-q", "train", str(tiny_corpus), *TINY, "--max-steps", "6", "--device", "cpu",
           "-o", str(tmp_path / "ddp"), "--cache-dir", str(tmp_path / "c")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    sync = [r for r in records if "ranks_in_sync" in r]
    assert sync and sync[-1]["ranks"] == 2 and sync[-1]["ranks_in_sync"] is True
    assert load_checkpoint(tmp_path / "ddp" / "last.safetensors").model_config.hidden == 32


# ---------------------------------------------------------------- checkpoints from strangers

class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("name", ["evil.safetensors", "evil.pt"])
def test_pickle_checkpoint_is_refused_and_runs_no_code(tmp_path, name):
    sentinel = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(Evil(sentinel)))
    torch.save({"x": Evil(sentinel)}, tmp_path / "evil2.pt")
    for candidate in (path, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="not a readable melodylstm checkpoint"):
            load_checkpoint(candidate)
    result = cli("generate", "-c", str(path), "-o", str(tmp_path / "x.mid"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not sentinel.exists() and not (tmp_path / "x.mid").exists()


def small_checkpoint(path, **meta):
    model = MelodyLSTM(ModelConfig(len(TOK), 8, 16, 1, 0.0))
    save_checkpoint(path, model, TOK, meta=meta)
    return model


def tamper(path, out, edit):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        metadata = fh.metadata()
    tensors = load_file(str(path))
    edit(tensors, metadata)
    save_file(tensors, str(out), metadata=metadata)


def test_bad_checkpoints_are_refused_with_clear_messages(tmp_path):
    good = tmp_path / "good.safetensors"
    small_checkpoint(good)
    assert load_checkpoint(good).model_config.hidden == 16

    def nan(t, m):
        t["model.head.bias"][0] = np.nan

    def shape(t, m):
        t["model.head.bias"] = np.zeros(3, dtype=np.float32)

    def vocab(t, m):
        tok = json.loads(m["tokenizer"])
        tok["vocab"][5] = "SOMETHING_ELSE"
        m["tokenizer"] = json.dumps(tok)

    def version(t, m):
        m["format_version"] = "99"

    for edit, message in [(nan, "NaN"), (shape, "shape"), (vocab, "vocabulary does not match"), (version, "not supported")]:
        bad = tmp_path / f"{edit.__name__}.safetensors"
        tamper(good, bad, edit)
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(bad)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    small_checkpoint(path, note="first")
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        Path(a[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        small_checkpoint(path, note="second")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.safetensors"]


# ---------------------------------------------------------------- budget and schedule

class FakeClock:
    """Advances `tick` seconds per reading (training reads it once at start and once per step);
    at reading `ctrl_c_at` it does what Ctrl-C does: asks `run` to stop after the step."""

    def __init__(self, tick=0.5, start=1000.0, run=None, ctrl_c_at=None):
        self.now, self.tick, self.calls, self.run, self.ctrl_c_at = start, tick, 0, run, ctrl_c_at

    def __call__(self):
        self.calls += 1
        if self.calls == self.ctrl_c_at:
            self.run.stop_requested = True
        self.now += self.tick
        return self.now


def records(run_dir, key):
    return {r["step"]: r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if key in r}


def test_step_budget_ends_the_schedule_and_spreads_validations(tiny_corpus, tmp_path):
    run = make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=40, patience=0, evals=4)
    assert run.train(clock=FakeClock()) == "done" and run.step == 40
    lrs = records(tmp_path / "run", "lr")
    assert lrs[1]["lr"] < lrs[5]["lr"]  # warm-up (5 steps)
    assert lrs[40]["lr"] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 39 / 40))), rel=1e-6)
    assert sorted(records(tmp_path / "run", "val_nll")) == [10, 20, 30, 40]


def test_time_budget_ends_the_schedule_with_a_fake_clock(tiny_corpus, tmp_path):
    # each step reads the clock once (0.5 s), so a 12-second budget is 24 steps, however fast the machine
    run = make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_time=12.0, patience=0, evals=3)
    assert run.train(clock=FakeClock(tick=0.5)) == "done"
    assert run.step == 24 and run.elapsed == pytest.approx(12.0)
    lrs = records(tmp_path / "run", "lr")
    # the last step's rate comes from the progress before it (23 of 24 half-seconds): the decay ends with the budget
    assert lrs[24]["lr"] == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 23 / 24))), rel=1e-6)
    # whichever binds first: here the steps
    run = make_run(tiny_corpus, tmp_path / "run2", tmp_path / "cache", max_time=12.0, max_steps=8, patience=0)
    assert run.train(clock=FakeClock(tick=0.5)) == "done" and run.step == 8


def test_early_stopping_counts_validations(tiny_corpus, tmp_path):
    run = make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=100, evals=10, patience=2)
    for group in run.optimizer.param_groups:
        group["weight_decay"] = 0.0
    run.cfg.lr = 0.0  # nothing learns: validation never improves after the first
    assert run.train(clock=FakeClock()) == "early-stopped"
    # only validations in the second half of the budget count (the learning rate is high before)
    assert sorted(records(tmp_path / "run", "val_nll")) == [10, 20, 30, 40, 50, 60] and run.step == 60


def scripted_validation(run, values):
    """Make `run` see these validation losses in turn (then the last one forever); the weights
    each validation saw are kept, to check which ones training goes back to."""
    seen, queue = [], list(values)

    def validate():
        seen.append({k: v.detach().clone() for k, v in run.model.state_dict().items()})
        return queue.pop(0) if len(queue) > 1 else queue[0]

    run.validate = validate
    return seen


def regularising_run(tiny_corpus, out, cache, epochs):
    cfg = TrainConfig(out=str(out), batch_size=2, seq_len=16, lr=1e-2, warmup=5, log_every=1,
                      epochs=epochs, evals=20, patience=3)
    return Run(tiny_corpus, TOK, {"embedding": 16, "hidden": 32, "layers": 2}, cfg, progress=False, log=lambda m: None,
               data_options={"cache_dir": cache, "jobs": 1})


def test_a_run_that_stops_improving_regularises_once_then_stops(tiny_corpus, tmp_path):
    run = regularising_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", epochs=16)  # 0.8 passes per validation
    assert run.recipe.dropout == 0 and not run.cfg.transpose and run.may_regularise  # a few passes: none planned
    assert "regularise instead" in run.describe_plan() and "counted after 3 passes" in run.describe_plan()
    # best at the 2nd validation; the 3rd (2.4 passes) is not judged; two more without improvement
    # (regularise_patience) switch it on at the 5th: back to the 2nd's weights; it never beats the
    # best again, and from the 10th (half the budget) patience (3) counts: it stops at the 12th
    seen = scripted_validation(run, [3.0, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9])
    restored = []
    run.regularise = (lambda original: lambda: (original(), restored.append(
        {k: v.detach().clone() for k, v in run.model.state_dict().items()})))(run.regularise)
    assert run.train(clock=FakeClock()) == "early-stopped"
    validated = sorted(records(tmp_path / "run", "val_nll"))
    assert len(validated) == 12 and run.step == validated[11] < run.budget.steps
    assert sorted(records(tmp_path / "run", "regularised")) == [validated[4]]
    assert all(torch.equal(restored[0][k], seen[1][k]) for k in seen[1])  # the best weights, not the latest
    assert not all(torch.equal(seen[4][k], seen[1][k]) for k in seen[1])
    assert run.model.drop.p == 0.2 and run.model.lstm.dropout == 0.2 and run.sampler.transpose == 5
    # the checkpoints carry the switch, so --resume keeps it and does not switch twice
    last = load_checkpoint(tmp_path / "run" / "last.safetensors", with_train_state=True)
    assert last.model_config.dropout == 0.2 and last.train_state["train_config"]["transpose"] == 5
    assert last.train_state["may_regularise"] is False
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert best.meta["val_nll"] == 2.0 and best.meta["step"] == validated[1]


def test_a_run_of_fewer_than_three_passes_neither_switches_nor_stops(tiny_corpus, tmp_path):
    """Before the third pass a worse validation is the noise of training, not memorising."""
    run = regularising_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", epochs=2.9)
    scripted_validation(run, [2.0, 2.5, 2.6, 2.7, 2.8, 2.9])
    assert run.train(clock=FakeClock()) == "done" and run.step == run.budget.steps
    assert len(records(tmp_path / "run", "val_nll")) >= 19 and not records(tmp_path / "run", "regularised")


def test_regularisation_set_by_hand_is_left_alone(tiny_corpus, tmp_path):
    for options, kw in (({"dropout": 0.0}, {}), ({}, {"transpose": 0})):
        cfg = TrainConfig(out=str(tmp_path / f"run{len(kw)}"), batch_size=2, seq_len=16, epochs=12, evals=10,
                          patience=2, **kw)  # 1.2 passes a validation: judged from the 5th (half the budget)
        run = Run(tiny_corpus, TOK, {"embedding": 16, "hidden": 32, "layers": 1, **options}, cfg, progress=False,
                  log=lambda m: None, data_options={"cache_dir": tmp_path / "cache", "jobs": 1})
        scripted_validation(run, [3.0, 3.0])
        assert not run.may_regularise and run.train(clock=FakeClock()) == "early-stopped"
        assert len(records(cfg.out, "val_nll")) == 6 and not records(cfg.out, "regularised")


def test_resume_mid_schedule_gives_the_same_schedule(tiny_corpus, tmp_path):
    ref = make_run(tiny_corpus, tmp_path / "ref", tmp_path / "cache", max_time=10.0, patience=0, evals=2)
    ref.train(clock=FakeClock())
    cut = make_run(tiny_corpus, tmp_path / "cut", tmp_path / "cache", max_time=10.0, patience=0, evals=2)
    assert cut.train(clock=FakeClock(run=cut, ctrl_c_at=9)) == "interrupted" and cut.step == 8
    resumed = make_run(tiny_corpus, tmp_path / "cut", tmp_path / "cache", max_time=999.0, max_steps=3, resume=True)
    assert resumed.budget == ref.budget  # the saved budget wins over new arguments
    assert resumed.train(clock=FakeClock(start=5.0)) == "done"
    a, b = records(tmp_path / "ref", "lr"), records(tmp_path / "cut", "lr")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert all(a[s]["lr"] == pytest.approx(b[s]["lr"], rel=1e-9) and a[s]["loss"] == pytest.approx(b[s]["loss"], abs=1e-5)
               for s in a)


def test_recipe_follows_the_corpus_size():
    from melodylstm.recipe import default_steps, recipe_for

    small, medium, large = (recipe_for(n) for n in (60_000, 1_500_000, 20_000_000))
    assert (small.size, medium.size, large.size) == ("small", "medium", "large")
    assert small.hidden <= medium.hidden <= large.hidden and small.dropout >= large.dropout
    per_step = 32 * 128
    steps = [default_steps(n, per_step) for n in (60_000, 1_500_000, 20_000_000)]
    assert steps[0] < steps[1] < steps[2]
    assert all(str(n // 1000) in r.reason.replace(",", "") for n, r in ((60_000, small), (20_000_000, large)))


def test_recipe_fits_the_model_to_the_time_budget():
    from melodylstm.recipe import MIN_STEPS, SIZES, recipe_for

    def seconds_per_step(size):  # a fake device: 100 G multiply-adds per second, forward and backward
        return 3 * size.step_cost(300) / 1e11

    costs = [seconds_per_step(s) for s in SIZES]
    assert costs == sorted(costs)  # the ladder goes from cheap to costly
    # a big corpus and one minute: only the cheapest model gets enough steps
    minute, day = recipe_for(20_000_000, 60, seconds_per_step), recipe_for(20_000_000, 86_400, seconds_per_step)
    assert (minute.size, day.size) == ("tiny", "large")
    assert minute.expected_steps == int(60 / costs[0]) and day.expected_steps >= MIN_STEPS
    # the chosen size is the biggest that still gets MIN_STEPS, never above what the corpus allows
    hour = recipe_for(20_000_000, 3600, seconds_per_step)
    bigger = SIZES[[s.name for s in SIZES].index(hour.size) + 1]
    assert hour.expected_steps >= MIN_STEPS > 3600 / seconds_per_step(bigger)
    assert recipe_for(60_000, 86_400, seconds_per_step).size == "small"
    # few passes over the music: no dropout, no transposition; many: both
    assert (minute.dropout, minute.transpose_share) == (0.0, 0.0)
    long_small = recipe_for(60_000, 3600, seconds_per_step)
    assert long_small.dropout > 0 and long_small.transpose_share > 0 and "passes" in long_small.reason


def test_step_timer_measures_cheap_sizes_and_extrapolates_costly_ones():
    from melodylstm.recipe import SIZES
    from melodylstm.train import StepTimer

    timer = StepTimer(len(TOK), (), torch.device("cpu"), budget_seconds=30.0)
    tiny, large = timer(SIZES[0]), timer(SIZES[-1])
    assert 0 < tiny < 1.0 and timer.reference[0] is SIZES[0]  # measured
    assert large == pytest.approx(tiny * SIZES[-1].step_cost(len(TOK)) / SIZES[0].step_cost(len(TOK)))  # extrapolated


def test_cli_prints_the_recipe_and_the_budget(tiny_corpus, tmp_path):
    result = run_cli("train", str(tiny_corpus), "-o", str(tmp_path / "r"), "--max-steps", "4", "-j", "1",
                     "--cache-dir", str(tmp_path / "c"))
    assert result.returncode == 0, result.stderr
    assert "recipe: small model" in result.stderr and "budget: 4 steps" in result.stderr
    assert "controls: key, chord, density, position, back1, back2, back4, back8, gap1, gap2, gap4, gap8, style" in result.stderr  # tiny_corpus has a subfolder
    assert "velocities +-10 bins on 50%" in result.stderr
    assert "embedding 128, tied to the output" in result.stderr  # the recipe ties the weights
    made = run_cli("generate", "-c", str(tmp_path / "r"), "-o", str(tmp_path / "g.mid"), "--bars", "2")
    assert made.returncode == 0 and (tmp_path / "g.mid").exists(), made.stderr  # a tied model with controls samples
    untied = run_cli("train", str(tiny_corpus), "-o", str(tmp_path / "u"), "--max-steps", "2", "-j", "1", "--untied-weights",
                     "--cache-dir", str(tmp_path / "c"))
    assert untied.returncode == 0 and "tied to the output" not in untied.stderr, untied.stderr


def test_a_run_planned_before_the_velocity_shift_resumes_without_it():
    from dataclasses import asdict

    from melodylstm.recipe import TrainConfig

    assert TrainConfig(out="r").velocity_shift == 10
    assert TrainConfig.from_dict(asdict(TrainConfig(out="r"))).velocity_shift == 10
    old = {k: v for k, v in asdict(TrainConfig(out="r")).items() if not k.startswith("velocity")}
    assert TrainConfig.from_dict(old).velocity_shift == 0


def test_fine_tuning_keeps_the_checkpoints_styles_and_what_it_knew_of_them(tmp_path):
    """--init-from on a folder whose subfolders are not the checkpoint's styles: a note names them,
    the model keeps its styles, and a style the new music lacks keeps its texture and keys (a
    fine-tuned default lost the tune style's one voice, so its tunes could come out as chords)."""
    from helpers import scale_song
    from melodylstm.midi import write_midi

    base_corpus, new_corpus = tmp_path / "base", tmp_path / "new" / "songs"
    for style in ("choir", "line"):
        (base_corpus / style).mkdir(parents=True)
        for i in range(6):
            write_midi(scale_song(i + (0 if style == "choir" else 50)), base_corpus / style / f"s{i}.mid")
    new_corpus.mkdir(parents=True)
    for i in range(6):
        write_midi(scale_song(100 + i), new_corpus / f"n{i}.mid")
    common = ["--max-steps", "2", "-j", "1", "--cache-dir", str(tmp_path / "c")]
    assert run_cli("train", str(base_corpus), "-o", str(tmp_path / "b"), *common).returncode == 0
    base = load_checkpoint(tmp_path / "b" / "best.safetensors")
    result = run_cli("train", str(new_corpus.parent), "-o", str(tmp_path / "f"), "--init-from",
                     str(tmp_path / "b" / "best.safetensors"), *common)
    assert result.returncode == 0, result.stderr
    assert "note: songs (6 files): not a style of the checkpoint (choir, line)" in result.stderr
    tuned = load_checkpoint(tmp_path / "f" / "best.safetensors")
    assert tuned.model_config.styles == base.model_config.styles == ("choir", "line")
    for table in ("style_voices", "key_prior"):
        for style in ("choir", "line"):
            assert tuned.meta[table][style] == base.meta[table][style], (table, style)
        assert "" in tuned.meta[table]  # the new music, which has no style


def test_a_damaged_metadata_table_counts_as_none():
    from types import SimpleNamespace

    from melodylstm.checkpoint import meta_table

    assert meta_table(SimpleNamespace(meta={"style_voices": ["chorale", 4]}), "style_voices") == {}
    assert meta_table(SimpleNamespace(meta={}), "key_prior") == {}
    assert meta_table(SimpleNamespace(meta={"style_rests": {"tune": 12}}), "style_rests") == {"tune": 12}
