"""A run stopped anywhere (a signal, kill -9) and resumed does what the uninterrupted run does; the
plan is a function of the corpus, the budget and the device, not of the load; progress suits a log."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from melodylstm.checkpoint import load_checkpoint
from melodylstm.recipe import CorpusSummary, Plan, TrainConfig, resolve_plan
from melodylstm.steptime import StepTimer
from melodylstm.tokenizer import Tokenizer
from melodylstm.train import Run

from test_train import TINY, FakeClock, losses, records

TOK = Tokenizer()


# ---------------------------------------------------------------- validations after a resume

def scripted_run(corpus, out, cache, resume=False):
    """A run whose validation losses are a function of the step (best at 15, then worse; 0.18
    passes a step, so judged from step 20 on): it regularises at 25 and stops early at 35,
    whatever interrupts it."""
    cfg = TrainConfig(out=str(out), max_steps=40, evals=8, patience=2, batch_size=8, seq_len=48, lr=1e-2, warmup=5,
                      log_every=1)
    run = Run(corpus, TOK, {"embedding": 16, "hidden": 32, "layers": 1}, cfg, resume=str(out) if resume else None,
              data_options={"cache_dir": cache, "jobs": 1}, log=lambda m: None, progress=False)
    run.validate = lambda: {5: 3.0, 10: 2.5, 15: 2.0}.get(run.step, 2.0 + run.step / 100)
    return run


def test_stopped_at_any_step_and_resumed_it_validates_switches_and_stops_as_the_uninterrupted_run(tiny_corpus, tmp_path):
    cache = tmp_path / "cache"
    ref = scripted_run(tiny_corpus, tmp_path / "ref", cache)
    assert ref.may_regularise and ref.train(clock=FakeClock()) == "early-stopped"
    assert sorted(records(tmp_path / "ref", "val_nll")) == [5, 10, 15, 20, 25, 30, 35]
    assert sorted(records(tmp_path / "ref", "regularised")) == [25]
    # stops just before, at and after validations (14 and 23 gave 15 and 25 up: two validations
    # "too close together"), and at the switch itself
    run, stops = scripted_run(tiny_corpus, tmp_path / "cut", cache), [3, 14, 20, 23, 25, 33]
    for n, stop in enumerate(stops):
        if n:
            run = scripted_run(tiny_corpus, tmp_path / "cut", cache, resume=True)
        assert run.train(clock=FakeClock(run=run, ctrl_c_at=stop - run.step + 1)) == "interrupted" and run.step == stop
    run = scripted_run(tiny_corpus, tmp_path / "cut", cache, resume=True)
    assert run.train(clock=FakeClock()) == "early-stopped" and run.step == ref.step == 35
    for key in ("val_nll", "regularised"):
        assert records(tmp_path / "ref", key) == records(tmp_path / "cut", key), key
    a, b = records(tmp_path / "ref", "lr"), records(tmp_path / "cut", "lr")
    assert sorted(a) == sorted(b) == list(range(1, 36))
    assert all(a[s]["lr"] == pytest.approx(b[s]["lr"], rel=1e-9) and a[s]["loss"] == pytest.approx(b[s]["loss"], abs=1e-5)
               for s in a)
    for name in ("best", "last"):
        a, b = (load_checkpoint(d / f"{name}.safetensors") for d in (tmp_path / "ref", tmp_path / "cut"))
        assert a.meta["step"] == b.meta["step"] and a.model_config == b.model_config
        assert all(np.allclose(a.weights[k], b.weights[k], atol=1e-5) for k in a.weights)


# ---------------------------------------------------------------- signals, with real processes

ARGS = [*TINY, "--max-steps", "60", "--log-every", "1", "--evals", "10"]


def train_cmd(corpus, out, cache, *extra):
    return [sys.executable, "-m", "melodylstm", "-q", "train", str(corpus), *ARGS, "-o", str(out),
            "--cache-dir", str(cache), *extra]


def stop_with(sig, corpus, out, cache) -> int:
    """Start a run, send `sig` once it has taken a few steps; the step its checkpoint holds."""
    proc = subprocess.Popen(train_cmd(corpus, out, cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(losses(out) if (out / "metrics.jsonl").exists() else ()) < 3:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert f"stopped by {sig.name}, saved at step" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1  # -q: that line alone
    saved = load_checkpoint(out / "last.safetensors", with_train_state=True).train_state["step"]
    assert 3 <= saved < 60 and saved == max(losses(out))  # the step it was in finished, and was saved
    return saved


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=lambda s: s.name)
def test_ctrl_c_and_a_closing_terminal_end_the_step_save_and_say_so(tiny_corpus, tmp_path, sig):
    stop_with(sig, tiny_corpus, tmp_path / "run", tmp_path / "c")


def test_sigterm_ends_the_step_saves_and_resume_repeats_the_uninterrupted_run(tiny_corpus, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "c"
    ref = subprocess.run(train_cmd(tiny_corpus, tmp_path / "ref", cache), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    stop_with(signal.SIGTERM, tiny_corpus, out, cache)
    stale = out / ".last.safetensors.k9x1abcd.tmp"  # what kill -9 during a checkpoint write leaves
    stale.write_bytes(b"partial")
    resumed = subprocess.run(train_cmd(tiny_corpus, out, cache, "--resume"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert not stale.exists()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in lines if "loss" in r]) == 60  # no step twice
    a, b = losses(tmp_path / "ref"), losses(out)
    assert sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) < 1e-5
    assert records(tmp_path / "ref", "val_nll").keys() == records(out, "val_nll").keys()


def test_a_second_signal_leaves_at_once_and_the_last_whole_checkpoint_stands(tiny_corpus, tmp_path):
    import os

    from test_train import make_run

    run = make_run(tiny_corpus, tmp_path / "run", tmp_path / "cache", max_steps=40, evals=4, patience=0)

    def clock(fake=FakeClock()):
        if fake.calls == 14:  # right after step 14, before its bookkeeping: two SIGTERMs
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return fake()

    assert run.train(clock=clock) == "interrupted" and run.stopped_at_once and run.stop_signal == signal.SIGTERM
    assert load_checkpoint(tmp_path / "run" / "last.safetensors", with_train_state=True).train_state["step"] == 10
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handlers are gone with it


def test_before_the_first_step_sigterm_and_sighup_stop_as_ctrl_c_does():
    import os

    from melodylstm.train import stop_signals_interrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        before = signal.getsignal(sig)
        with pytest.raises(KeyboardInterrupt):  # the CLI turns it into one line and exit 1
            with stop_signals_interrupt():
                os.kill(os.getpid(), sig)
                time.sleep(1)
        assert signal.getsignal(sig) == before


# ---------------------------------------------------------------- the plan

CORPUS = CorpusSummary(train_tokens=60_000, vocab=300, style_files=(("folk", 12),))


def device_speed(size):  # a fake device: 20 G multiply-adds per second, forward and backward
    return 3 * size.step_cost(300) / 2e10


def busy_probe(speed):
    """A step timer's probe on a busy machine: two probes in three are five times slower."""
    calls = []

    def probe(size):
        calls.append(size.name)
        return speed(size) * (1 if len(calls) % 3 == 0 else 5)
    return probe


def test_the_plan_is_pure_printable_and_round_trips():
    plan = resolve_plan(CORPUS, TrainConfig(out="x", max_steps=1000))
    text = plan.describe()
    assert text.startswith("recipe: small model: 60,000 training tokens") and "styles: folk (12 files)" in text
    assert "budget: 1,000 steps" in text and "regularise instead" in text and plan.may_regularise
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.describe() == text
    with pytest.raises(ValueError, match="not a training plan"):  # a damaged checkpoint: one line, no traceback
        Plan.from_dict({**plan.to_dict(), "recipe": 1})
    switched = plan.regularised(300)
    assert (switched.model.dropout, switched.train.transpose, switched.may_regularise) == (0.2, 5, False)
    assert "dropout 0.2" in switched.describe() and "regularised: validation stopped improving at step 300" in switched.describe()
    assert plan.model.dropout == 0.0  # the plan it came from is unchanged
    by_hand = resolve_plan(CORPUS, TrainConfig(out="x", max_steps=1000, transpose=0), {"hidden": 64})
    assert not by_hand.may_regularise and "(some values set by hand)" in by_hand.describe() and by_hand.model.hidden == 64


def test_the_plan_on_a_busy_device_is_the_plan_on_an_idle_one():
    options = TrainConfig(out="x", max_time=600)
    idle = StepTimer(300, (), "cpu", 600, probe=device_speed)
    busy = StepTimer(300, (), "cpu", 600, probe=busy_probe(device_speed))
    plans = [resolve_plan(CorpusSummary(20_000_000, 300), options, step_seconds=t) for t in (idle, busy)]
    assert plans[0] == plans[1] and plans[0].recipe.expected_steps > 0
    assert idle.known == busy.known
    measured = list(busy.probes)
    assert measured and all(len(busy.probes[n]) > len(idle.probes[n]) for n in measured)  # disagreeing probes: more
    assert "fastest of 6 probes" in busy.describe() and "(extrapolated)" in busy.describe()


def test_resume_prints_the_plan_the_model_holds(tiny_corpus, tmp_path, monkeypatch):
    import melodylstm.train as train

    monkeypatch.setattr(train, "StepTimer", lambda *a: StepTimer(*a, probe=device_speed))
    cfg = dict(max_time=20.0, evals=4, patience=0, log_every=1)
    make = lambda resume=False, **kw: Run(  # noqa: E731
        tiny_corpus, TOK, {"embedding": 16, "hidden": 32, "layers": 1}, TrainConfig(out=str(tmp_path / "r"), **{**cfg, **kw}),
        resume=str(tmp_path / "r") if resume else None, data_options={"cache_dir": tmp_path / "c", "jobs": 1},
        log=lambda m: None, progress=False)
    run = make()
    assert "step time: tiny" in run.describe_plan() and "fastest of 3 probes" in run.describe_plan()
    assert run.train(clock=FakeClock(tick=0.5, run=run, ctrl_c_at=4)) == "interrupted"
    assert json.loads((tmp_path / "r" / "plan.json").read_text()) == run.plan.to_dict()
    monkeypatch.setattr(train, "StepTimer", None)  # a resumed run measures nothing
    resumed = make(resume=True, max_time=999.0)
    assert resumed.describe_plan() == run.describe_plan() and resumed.model_config == run.model_config


# ---------------------------------------------------------------- progress in a log

def test_progress_in_a_log_is_a_line_per_30_seconds():
    import io

    from melodylstm.progress import TrainingProgress

    now, lines = [0.0], []
    report = TrainingProgress(True, lines.append, stream=io.StringIO(), clock=lambda: now[0])
    for step in range(1, 1201):  # 10 steps a second for two minutes
        now[0] = step / 10
        if step % 10 == 0:
            report.measured(2.5, 1000.0)
        report.update(step, step / 1200, now[0])
        if step == 450:
            report.validated()  # a validation line went out: the next progress line 30 s later
    report.close()
    assert len(lines) == 3 and lines[0].startswith("step 300 (25% of the budget, 0.5 min, about 1.5 min left): loss 2.500")
    assert lines[1].startswith("step 750 ")
