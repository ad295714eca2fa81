"""Command line: `melodylstm COMMAND`. Heavy modules (torch, symusic) are imported inside the
commands so that `melodylstm --help` stays instant."""
from __future__ import annotations

import json
import os

import click

from . import __version__
from .config import CONTINUE_TEMPERATURE, DEFAULT_TEMPERATURE
from .options import (CommandLineError, UserError, one_line, peak_option, playback_options, sampling_options, soundfont_option,
                      synth_option, tokenizer_options)


class Group(click.Group):
    """Turns every expected failure into a one-line error instead of a traceback."""

    def invoke(self, ctx):
        from .midi import MidiError

        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise CommandLineError(exc) from None
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except (MidiError, ValueError, OSError, RuntimeError) as exc:
            if ctx.obj and ctx.obj.get("verbose", 0) > 1:
                raise
            raise UserError(one_line(exc)) from None
        except Exception as exc:  # noqa: BLE001 - last line of defence against tracebacks
            if ctx.obj and ctx.obj.get("verbose", 0) > 1:
                raise
            raise UserError(f"internal error ({type(exc).__name__}: {one_line(exc)}); rerun with -vv for details") from None


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="melodylstm")
@click.option("-v", "--verbose", count=True, help="More output (-vv: show tracebacks).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def cli(ctx, verbose, quiet):
    """Train a stacked LSTM on your own MIDI, then generate, continue and play music.

    \b
    First steps:
      melodylstm generate -o song.mid        # uses the bundled default model
      melodylstm train ./my_midi             # your own model
      melodylstm continue phrase.mid -o out.mid -c checkpoints/my_midi/best.safetensors
    """
    ctx.obj = {"verbose": verbose, "quiet": quiet}


def info(ctx, message: str) -> None:
    if not ctx.obj["quiet"]:
        click.echo(message, err=True)


def user_io(ctx) -> dict:
    """How playback talks to the user: -v shows what the audio/MIDI libraries print, -q silences it."""
    return {"verbose": ctx.obj["verbose"], "say": lambda message: info(ctx, message)}


def make_tokenizer(resolution, programs, drums, no_bars):
    from .tokenizer import Tokenizer, TokenizerConfig

    return Tokenizer(TokenizerConfig(resolution=resolution, programs=programs, drums=drums, bar_tokens=not no_bars))


def check_output(input_path, output_path, kind: str | None = None) -> None:
    """Never the input; and a file whose name says what it holds (kind: 'wav', 'png')."""
    from .fileio import same_file

    if input_path and output_path and same_file(input_path, output_path):
        raise UserError(f"output {output_path} is the input file; choose another name (inputs are never overwritten)")
    if kind and output_path and not output_path.lower().endswith("." + kind):
        raise UserError(f"{output_path}: this writes a {kind.upper()} file; give a name ending in .{kind}")


@cli.command()
@click.argument("folder", type=click.Path(exists=True))
@tokenizer_options
@click.option("-j", "--jobs", default=0, help="Worker processes (0: all cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Token cache folder (default: the user cache dir).")
@click.option("--no-cache", is_flag=True, help="Tokenize everything afresh and store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the ingest report as JSON on stdout.")
@click.pass_context
def data(ctx, folder, resolution, programs, drums, no_bars, jobs, cache_dir, no_cache, as_json):
    """Scan FOLDER for MIDI, tokenize it (cached) and print an ingest report."""
    from .data import format_report, load_corpus

    tok = make_tokenizer(resolution, programs, drums, no_bars)
    report, store = load_corpus(folder, tok, cache_dir, not no_cache, jobs, progress=not ctx.obj["quiet"])
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not ctx.obj["quiet"]:
        click.echo(format_report(report, show_skipped=1000 if ctx.obj["verbose"] else 20))
        if store is not None:
            click.echo(f"split: {report['train_files']} training files, {report['val_files']} validation files "
                       f"({report['elapsed_s']:.2f} s)")
    if store is None:
        raise UserError(f"no usable MIDI file in {folder} ({report['files_found']} found)")


@cli.command()
@click.argument("midi_in", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", "midi_out", required=True, type=click.Path(dir_okay=False), help="Where to write the result.")
@tokenizer_options
@click.option("--tokens", "show_tokens", is_flag=True, help="Also print the token sequence.")
@click.pass_context
def roundtrip(ctx, midi_in, midi_out, resolution, programs, drums, no_bars, show_tokens):
    """Write what the model sees of MIDI_IN: encode, decode, save to OUT."""
    from .midi import read_midi, write_midi

    check_output(midi_in, midi_out)
    tok = make_tokenizer(resolution, programs, drums, no_bars)
    song = read_midi(midi_in, tok.config.resolution)
    tokens, kept, lost = tok.tokenize(song)
    decoded = tok.decode(tokens, like=kept)
    write_midi(decoded, midi_out)
    if show_tokens:
        click.echo(" ".join(tok.describe(tokens)))
    changed = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in lost.items() if v) or "nothing else changed"
    info(ctx, f"{len(song.notes)} notes in, {len(decoded.notes)} out, {len(tokens)} tokens; "
              f"quantized to 1/{tok.config.resolution} beat; {changed}. Wrote {midi_out}")


@cli.command()
@click.argument("folders", nargs=-1, required=True)
@click.option("-o", "--out", type=click.Path(file_okay=False), help="Run folder (default: checkpoints/<FOLDER name>).")
@tokenizer_options
@click.option("--max-time", type=float, help="Budget in minutes: the schedule ends when it does.")
@click.option("--max-steps", type=int, help="Budget in steps (with --max-time: whichever comes first).")
@click.option("--epochs", type=float, help="Budget as passes over the training tokens (instead of --max-steps).")
@click.option("--layers", type=int, help="LSTM layers (default: from the corpus size, printed at start).")
@click.option("--hidden", type=int, help="LSTM hidden size (default: from the corpus size).")
@click.option("--embedding", type=int, help="Token embedding size (default: from the corpus size).")
@click.option("--dropout", type=float, help="Dropout (default: from the corpus size).")
@click.option("--tie-weights/--untied-weights", default=None, help="Share embedding and output weights (default: shared).")
@click.option("--style", help="Style name of every file (default: first-level subfolder names; NAME=FOLDER names one folder).")
@click.option("--no-controls", is_flag=True, help="Learn the tokens alone: no key, chord, density, position, lookback or style inputs.")
@click.option("--batch-size", type=int, help="Windows per step (default: from the corpus size).")
@click.option("--seq-len", type=int, help="Tokens per training window (default: from the corpus size).")
@click.option("--lr", type=float, help="Peak learning rate (default: from the corpus size).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16/fp16 autocast on a GPU, fp32 on the CPU.")
@click.option("--compile", "use_compile", is_flag=True, help="Use torch.compile.")
@click.option("--transpose", type=int, help="Augment: random transposition within +-N semitones (default: from the corpus size).")
@click.option("--transpose-share", type=click.FloatRange(0, 1), help="Share of the windows transposed (the rest keep their key).")
@click.option("--velocity-shift", default=10, show_default=True, type=click.IntRange(0, 127),
              help="Augment: half the windows louder or softer by up to N velocity bins (0: off).")
@click.option("--val-fraction", default=0.1, show_default=True, help="Share of files held out for validation.")
@click.option("--evals", default=20, show_default=True, help="Validations over the budget.")
@click.option("--patience", default=5, show_default=True, help="Early stopping: validations without improvement, counted from the "
              "third pass and the second half of the budget on (0: off). A run without dropout or transposition "
              "first switches them on, after 2.")
@click.option("--save-interval", default=120.0, show_default=True, help="Seconds between safety checkpoints.")
@click.option("--log-every", default=10, show_default=True, help="Steps between lines in metrics.jsonl.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--init-from", type=click.Path(exists=True), help="Start from this checkpoint's weights (fine-tuning).")
@click.option("-j", "--jobs", default=0, help="Tokenizer processes (0: all cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False))
@click.option("--no-cache", is_flag=True)
@click.pass_context
def train(ctx, folders, out, resolution, programs, drums, no_bars, max_time, max_steps, epochs, layers, hidden, embedding,
          dropout, tie_weights, style, no_controls, batch_size, seq_len, lr, seed, device, precision, use_compile, transpose,
          transpose_share, velocity_shift, val_fraction, evals, patience, save_interval, log_every, resume, init_from, jobs,
          cache_dir, no_cache):
    """Train a model on the MIDI files in FOLDERS (searched recursively).

    Styles: each first-level subfolder is a style (./midi/jigs/a.mid -> jigs), or name a whole
    folder with NAME=FOLDER (several folders: chorale=./bach tune=./tunes) or --style NAME.

    Give a budget (--max-time minutes and/or --max-steps); without one, the number of steps
    follows from the corpus size. Model size, window, batch and learning rate default to a
    recipe picked from the corpus size (printed at start). Run on several GPUs or machines with torchrun:
    torchrun --nproc_per_node 4 -m melodylstm train FOLDER
    """
    from pathlib import Path

    from .train import Run, TrainConfig, stop_signals_interrupt

    for name, value in (("--max-time", max_time), ("--max-steps", max_steps), ("--epochs", epochs)):
        if value is not None and value <= 0:
            raise UserError(f"{name} must be positive")
    if max_steps and epochs:
        raise UserError("give --max-steps or --epochs, not both")
    from .data import parse_sources
    from .fileio import missing_folders, remove_failed_run

    sources = parse_sources(folders, style)
    folder = folders[0] if len(folders) == 1 else list(folders)
    out = out or str(Path("checkpoints") / ("+".join((name or p.resolve().name) for p, name in sources) or "model"))
    tok = make_tokenizer(resolution, programs, drums, no_bars)
    model_options = {"embedding": embedding, "hidden": hidden, "layers": layers, "dropout": dropout,
                     "tie_weights": tie_weights}
    cfg = TrainConfig(out=out, epochs=epochs or 0.0, max_steps=max_steps or 0, max_time=(max_time or 0.0) * 60,
                      batch_size=batch_size, seq_len=seq_len, lr=lr, seed=seed, device=device, precision=precision,
                      transpose=transpose, transpose_share=transpose_share, velocity_shift=velocity_shift,
                      val_fraction=val_fraction, controls=not no_controls, style=style, evals=evals, patience=patience,
                      save_interval=save_interval, compile=use_compile, log_every=log_every)
    log = (lambda m: None) if ctx.obj["quiet"] else (lambda m: click.echo(m, err=True))
    kept = [name for name, value in (("--max-time", max_time), ("--max-steps", max_steps), ("--epochs", epochs),
                                     ("--lr", lr), ("--batch-size", batch_size), ("--seq-len", seq_len))
            if value is not None]
    if resume and kept:  # the schedule was planned to the run's own budget and recipe
        log(f"note: --resume keeps the run's own plan; {', '.join(kept)} ignored (start a new run with -o to change it)")
    made = missing_folders(out)
    try:
        with stop_signals_interrupt():
            run = Run(folder, tok, model_options, cfg, resume=out if resume else None, init_from=init_from,
                      data_options={"cache_dir": cache_dir, "use_cache": not no_cache, "jobs": jobs},
                      log=log, progress=not ctx.obj["quiet"], sources=sources)
        if run.dist.main:
            r = run.report
            log(f"corpus: {r['files_used']} files ({len(r['files_skipped'])} skipped), {r['notes']:,} notes, "
                f"{run.store.meta['train_tokens']:,} training / {run.store.meta['val_tokens']:,} validation tokens")
            log(run.describe_plan() + (f"; resuming at step {run.step:,}" if resume else ""))
        status = run.train()
    except Exception:
        remove_failed_run(out, made)  # folders this command made, with no checkpoint in them: nothing to resume
        raise
    run.close()
    if run.dist.main:  # a stop by a signal is said even with -q: its exit code is not 0
        line = run.summary(status, f"melodylstm train {' '.join(folders)}")
        if status == "interrupted":
            click.echo(line, err=True)
        else:
            log(line)
    if status == "interrupted":
        ctx.exit(128 + (run.stop_signal or 2))  # the shell's code for the signal (2: SIGINT)


@cli.command()
@click.option("--corpus", type=click.Path(exists=True), help="MIDI folder to measure on (default: the bundled corpus).")
@click.option("--quick", is_flag=True, help="Fewer repetitions and no 3x512 training row.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def bench(ctx, corpus, quick, as_json):
    """Measure tokenizer, training, sampling and CLI speed against baselines, side by side."""
    from .bench import format_results, run_all

    results = run_all(corpus, quick)
    click.echo(json.dumps(results, indent=2) if as_json else format_results(results))


@cli.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Where to write the copy.")
@click.option("--fp32", is_flag=True, help="Keep fp32 weights (default: fp16, half the size).")
@click.pass_context
def export(ctx, checkpoint, out, fp32):
    """Write a compact inference-only copy of CHECKPOINT (no optimizer state) for sharing."""
    import os

    from .checkpoint import export_checkpoint

    check_output(checkpoint, out)
    export_checkpoint(checkpoint, out, half=not fp32)
    info(ctx, f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")


@cli.command()
@click.argument("folder", type=click.Path(exists=True))
@click.option("-c", "--checkpoint", type=click.Path(exists=True), help="Checkpoint file or run folder (default: the bundled model).")
@click.option("--split", type=click.Choice(["all", "val", "train"]), default="all", show_default=True,
              help="all: every file in FOLDER. With the training corpus as FOLDER: only its held-out (val) or "
                   "training files. The n-gram baseline is never fitted on files it scores, so with the training "
                   "corpus and all there is none (use val).")
@click.option("--baseline-train", type=click.Path(exists=True, file_okay=False),
              help="Fit the n-gram baseline on this folder (default: the checkpoint's training corpus).")
@click.option("--order", default=5, show_default=True, help="n-gram order of the baseline.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("--continuation", is_flag=True,
              help="Instead: cut each piece after --primer-bars, continue it for --bars and compare with the real next bars.")
@click.option("--primer-bars", default=4, show_default=True, help="With --continuation: bars given to the model.")
@click.option("--bars", default=4, show_default=True, help="With --continuation: bars continued and compared.")
@click.option("-n", "--pieces", type=int, help="With --continuation: use at most N pieces.")
@click.option("--samples", default=1, show_default=True, help="With --continuation: answers per piece.")
@click.option("--seed", default=0, show_default=True, help="With --continuation: seed of the first piece (then +1 each).")
@click.option("-t", "--temperature", default=CONTINUE_TEMPERATURE, show_default=True, help="With --continuation: sampling temperature.")
@click.option("--track", help="With --continuation: only the tracks whose name contains this (e.g. melody).")
@click.option("--key-strength", type=float, help="With --continuation: key guidance, as for continue.")
@click.option("--style", help="Style to tell the model (default: the style the files' folder had in training).")
@click.option("--hide", default="", help="Controls to hide from the model, comma-separated (e.g. position,style), or all.")
@click.pass_context
def evaluate(ctx, folder, checkpoint, split, baseline_train, order, as_json, continuation, primer_bars, bars, pieces,
             samples, seed, temperature, track, key_strength, style, hide):
    """Likelihood of the MIDI in FOLDER under a model, next to an n-gram baseline.

    With --continuation: how the model's continuations of held-out pieces compare with the real
    continuations and with repeating the primer's last bars (key, polyphony, register, density, rhythm)."""
    from .checkpoint import load_checkpoint

    if continuation:
        from .metrics.continuations import evaluate_continuation, format_continuation

        report = evaluate_continuation(load_checkpoint(checkpoint), folder, split, primer_bars, bars, pieces, samples,
                                       seed, temperature, track, progress=not ctx.obj["quiet"], key_strength=key_strength)
        click.echo(json.dumps(report, indent=2) if as_json else format_continuation(report))
        return
    from .metrics.likelihood import evaluate_folder, format_report

    ckpt = load_checkpoint(checkpoint)
    hidden = ckpt.model_config.control_names if hide.strip() == "all" else [h.strip() for h in hide.split(",") if h.strip()]
    report = evaluate_folder(ckpt, folder, split, baseline_train, order, progress=not ctx.obj["quiet"],
                             style=style, hide=hidden)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@cli.command()
@click.argument("generated", type=click.Path(exists=True))
@click.argument("reference", type=click.Path(exists=True))
@click.option("-o", "--out", default="stats.png", show_default=True, help="PNG report (one plot per feature).")
@click.option("--reference-split", type=click.Choice(["all", "val", "train"]), default="all", show_default=True,
              help="With a training corpus as REFERENCE: only its held-out (val) or training files.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout.")
@click.option("--max-pieces", type=click.IntRange(min=2), default=2000, show_default=True,
              help="Pieces per set: a larger folder is sampled (memory and time stay bounded).")
@click.option("--seed", default=0, show_default=True, help="Picks the sampled pieces and distance pairs.")
@click.pass_context
def stats(ctx, generated, reference, out, reference_split, as_json, max_pieces, seed):
    """Compare GENERATED pieces with a REFERENCE folder on musical features (Yang & Lerch 2018).

    Each distance distribution uses every pair of pieces up to 100,000 pairs, and beyond that
    100,000 pairs drawn at random (--seed): memory stays flat whatever the folders hold."""
    from .metrics import features as music_stats

    check_output(generated, out, "png")
    rep = music_stats.report(generated, reference, reference_split, max_pieces, seed)
    music_stats.plot_report(rep, out)
    click.echo(json.dumps(music_stats.as_json(rep), indent=2) if as_json else music_stats.format_table(rep))
    info(ctx, f"wrote {out}")


def read_progression(chords, chords_file):
    """--chords text (one chord per bar) or --chords-file (one bar per line) -> bars of chords."""
    from . import controls

    if chords and chords_file:
        raise UserError("give --chords or --chords-file, not both")
    if chords_file:
        return controls.read_chords_file(chords_file)
    return [[c] for c in controls.parse_progression(chords)] if chords is not None else None


def output_paths(out: str, num: int) -> list[str]:
    from pathlib import Path

    path = Path(out)
    if path.is_dir() or out.endswith(os.sep):  # made when the first file is written, so a failure leaves none
        return [str(path / f"melodylstm-{i + 1}.mid") for i in range(num)]
    if num == 1:
        return [out]
    return [str(path.with_name(f"{path.stem}-{i + 1}{path.suffix or '.mid'}")) for i in range(num)]


def load_generator(ctx, checkpoint):
    from .generate import Generator

    gen = Generator.load(checkpoint)
    if checkpoint is None and ctx.obj["verbose"]:
        info(ctx, "using the bundled default model")
    return gen


@cli.command()
@click.option("-o", "--out", default="generated.mid", show_default=True, help="Output file (or folder).")
@sampling_options
@click.option("--tempo", default=120.0, show_default=True, help="Beats per minute.")
@click.option("--time-signature", default="4/4", show_default=True)
@click.pass_context
def generate(ctx, out, checkpoint, bars, seconds, tokens, num, temperature, top_k, top_p, seed, key, strict_key, key_strength, style,
             chords, chords_file, density, pitch_range, voices, play, window, soundfont, synth, midi_out, tempo,
             time_signature):
    """Write new music from scratch."""
    from .fileio import outputs_or_nothing
    from .generate import describe_controls
    from .midi import write_midi
    from .playback import open_live_playback, play_while_generating

    try:
        numerator, denominator = (int(x) for x in time_signature.split("/"))
        assert numerator > 0 and denominator in (1, 2, 4, 8, 16, 32)
    except (ValueError, AssertionError):
        raise UserError(f"--time-signature must look like 3/4 or 6/8, not {time_signature!r}") from None
    progression = read_progression(chords, chords_file)
    play_fn, no_device = open_live_playback(soundfont, synth, midi_out, play, window, **user_io(ctx))
    gen = load_generator(ctx, checkpoint)

    def run(on_note=None):
        return gen.generate(bars=bars, seconds=seconds, tokens=tokens, num=num,
                            temperature=DEFAULT_TEMPERATURE if temperature is None else temperature, top_k=top_k,
                            top_p=top_p, seed=seed, key=key, pitch_range=pitch_range, tempo=tempo,
                            time_signature=(numerator, denominator), on_note=on_note, style=style,
                            chords=progression, density=density, strict_key=strict_key, key_strength=key_strength,
                            voices=voices)

    paths = output_paths(out, num)

    def save(songs):
        with outputs_or_nothing(paths):
            for song, path in zip(songs, paths):
                write_midi(song, path)
        info(ctx, f"wrote {', '.join(paths)} ({sum(len(s.notes) for s in songs)} notes, seed {gen.last_seed})"
                  + describe_controls(gen.last_controls))

    if play_fn is not None:
        from .midi import Song

        like = Song([], gen.tok.config.resolution, [(0, round(60e6 / tempo))], [(0, numerator, denominator)])
        play_while_generating(play_fn, run, like, on_done=save, say=user_io(ctx)["say"])
    else:
        save(run())
        if no_device is not None:
            raise UserError(no_device.hint(paths[0]))


@cli.command("continue")
@click.argument("midi_in", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, help="Output file (or folder).")
@sampling_options
@click.option("--only-new", is_flag=True, help="Write the continuation alone, without the input.")
@click.option("--primer-bars", default="64", show_default=True,
              help="Prime the model with the last N bars of the input (all: the whole file).")
@click.option("--candidates", type=click.IntRange(1, 64), default=None,
              help="Samples drawn per answer; the one most like the phrase's last bars (register, pace, note "
                   "lengths, rests) is kept. Default 32; 1 with --play (each note is heard as it is drawn).")
@click.option("--json", "as_json", is_flag=True, help="Print what was estimated and used (key, style, ...) as JSON.")
@click.pass_context
def continue_cmd(ctx, midi_in, out, checkpoint, bars, seconds, tokens, num, temperature, top_k, top_p, seed, key,
                 strict_key, key_strength, style, chords, chords_file, density, pitch_range, voices, play, window, soundfont,
                 synth, midi_out, only_new, primer_bars, candidates, as_json):
    """Continue the phrase in MIDI_IN. The input is kept unchanged; the continuation is added as its own track."""
    from .fileio import atomic_write_bytes, outputs_or_nothing
    from .generate import describe_controls
    from .playback import open_live_playback, play_while_generating

    paths = output_paths(out, num)
    for path in paths:
        check_output(midi_in, path)
    if primer_bars.strip().lower() == "all":
        primer_bars = None
    elif not primer_bars.strip().isdigit() or int(primer_bars) < 1:
        raise UserError("--primer-bars must be a number of bars (at least 1) or all")
    else:
        primer_bars = int(primer_bars)
    progression = read_progression(chords, chords_file)
    play_fn, no_device = open_live_playback(soundfont, synth, midi_out, play, window, **user_io(ctx))
    gen = load_generator(ctx, checkpoint)

    def run(on_note=None):
        return gen.continue_(midi_in, bars=bars, seconds=seconds, tokens=tokens, num=num,
                             temperature=CONTINUE_TEMPERATURE if temperature is None else temperature,
                             top_k=top_k, top_p=top_p, seed=seed, key=key, pitch_range=pitch_range,
                             primer_bars=primer_bars, on_note=on_note, style=style, chords=progression,
                             density=density, strict_key=strict_key, key_strength=key_strength,
                             voices="auto" if voices is None else voices, candidates=candidates)

    def save(results):
        with outputs_or_nothing(paths):
            for result, path in zip(results, paths):
                atomic_write_bytes(path, result.midi_bytes(only_new))
        report = results[0].controls or {}
        if as_json:
            click.echo(json.dumps({"outputs": paths, "new_notes": [len(r.notes.notes) for r in results],
                                   "seed": gen.last_seed, **report}, indent=2))
        if report.get("primer_cut"):
            info(ctx, f"primed from the last {report['primer_bars']} bars of {midi_in} (--primer-bars all: the whole file)")
        key_text = f", key {results[0].key}" if results[0].key else ""
        info(ctx, f"wrote {', '.join(paths)} ({sum(len(r.notes.notes) for r in results)} new notes{key_text}, "
                  f"seed {gen.last_seed})" + describe_controls(report))

    if play_fn is not None:
        from .midi import read_midi

        primer = read_midi(midi_in, gen.tok.config.resolution)
        play_while_generating(play_fn, run, primer, primer=primer, on_done=save, say=user_io(ctx)["say"])
    else:
        save(run())
        if no_device is not None:
            raise UserError(no_device.hint(paths[0]))


# ---------------------------------------------------------------- playback

@cli.command()
@click.argument("midi_file", type=click.Path(exists=True, dir_okay=False))
@playback_options
@click.option("--wav", type=click.Path(dir_okay=False), help="Render to this WAV file instead of the speakers.")
@click.option("--window", is_flag=True, help="Show a scrolling piano roll (space pauses, Esc quits).")
@peak_option
@click.pass_context
def play(ctx, midi_file, soundfont, synth, midi_out, wav, window, peak="-1"):
    """Play a MIDI file through the speakers (or a MIDI port, or a WAV file)."""
    from .midi import read_midi
    from .playback import NoAudioDevice, Timeline, parse_peak, run_playback

    check_output(midi_file, wav, "wav")
    level = parse_peak(peak)
    timeline = Timeline()
    timeline.add_song(read_midi(midi_file, 96))
    timeline.close()
    try:
        run_playback(timeline, soundfont, synth, midi_out, window, wav, level, **user_io(ctx))
    except NoAudioDevice as exc:
        raise UserError(exc.hint(midi_file) + f" (or play {midi_file} --wav FILE)") from None


@cli.command()
@click.argument("midi_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="WAV file to write.")
@soundfont_option()
@synth_option(show_default=True)
@peak_option
@click.pass_context
def render(ctx, midi_file, out, soundfont, synth, peak):
    """Render a MIDI file to a WAV file (no audio device needed), normalised to a -1 dBFS peak."""
    ctx.invoke(play, midi_file=midi_file, soundfont=soundfont, synth=synth, midi_out=None, wav=out, window=False,
               peak=peak)


@cli.command()
@click.argument("midi_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--width", default=1200, show_default=True)
@click.option("--height", default=500, show_default=True)
@click.option("--new-from", type=float, help="Colour notes from this second on as generated.")
@click.pass_context
def show(ctx, midi_file, out, width, height, new_from):
    """Draw a piano roll of a MIDI file to a PNG (no display needed), with bar lines and a time
    ruler. Tracks named "melodylstm continuation" are drawn as generated notes; a file without
    them is coloured by instrument."""
    from .midi import read_midi_tracks
    from .pianoroll import save_png
    from .playback import Timeline

    check_output(midi_file, out, "png")
    timeline = Timeline()
    parts = read_midi_tracks(midi_file, 96)
    track_of = []  # the track of every note: without generated notes, tracks get their own colours
    for track, (name, part) in enumerate(parts):
        timeline.add_song(part, is_new=name.startswith("melodylstm"))
        track_of += [track] * (len(timeline.notes) - len(track_of))
    notes = [(s, e, p, v, prog, new or (new_from is not None and s >= new_from), track)
             for (s, e, p, v, prog, new), track in zip(timeline.notes, track_of)]
    save_png(notes, out, width, height, grid=parts[0][1].tempo_map if parts else None)
    info(ctx, f"wrote {out} ({len(notes)} notes)")


@cli.command()
@click.option("--in", "in_port", required=True, help="MIDI input port to listen to (virtual:NAME for a virtual port).")
@click.option("--out", "out_port", help="MIDI output port for the answers (default: the speakers).")
@click.option("-c", "--checkpoint", type=click.Path(exists=True), help="Checkpoint (default: the bundled model).")
@click.option("--bars", default=2, show_default=True, help="Length of each answer.")
@click.option("-t", "--temperature", default=CONTINUE_TEMPERATURE, show_default=True)
@click.option("--tempo", default=120.0, show_default=True, help="Beats per minute used to read your playing.")
@click.option("--time-signature", default="4/4", show_default=True,
              help="Metre used to read your playing (a phrase's first note is a downbeat).")
@click.option("--pause", type=float, help="Seconds of silence that end your phrase (default: one bar).")
@soundfont_option()
@synth_option()
@click.option("--answers", type=click.IntRange(min=1), help="Stop after this many answers (for scripts; default: until Ctrl-C).")
@click.option("--seed", type=int, help="Random seed: the same phrase gets the same answer.")
@click.pass_context
def jam(ctx, in_port, out_port, checkpoint, bars, temperature, tempo, time_signature, pause, soundfont, synth, answers,
        seed):
    """Call and response: play a phrase on a MIDI keyboard, pause, and the model answers.

    Ports come from mido + python-rtmidi; the MIDO_BACKEND environment variable picks the
    MIDI API, e.g. MIDO_BACKEND=mido.backends.rtmidi/UNIX_JACK for JACK on Linux."""
    import contextlib

    from . import playback
    from .jam import Jam
    from .playback import open_midi_input, open_midi_output, play_to_port, run_playback

    playback.SHOW_BACKEND_NOISE = bool(ctx.obj["verbose"])
    try:
        metre = tuple(int(x) for x in time_signature.split("/"))
        assert len(metre) == 2 and metre[0] > 0 and metre[1] in (1, 2, 4, 8, 16, 32)
    except (ValueError, AssertionError):
        raise UserError(f"--time-signature must look like 3/4 or 6/8, not {time_signature!r}") from None
    if not 20 <= tempo <= 400:
        raise UserError("--tempo must be between 20 and 400 bpm")
    # Load the model before opening any port: once jam's input port exists, jam is listening
    # (notes played during the load would otherwise arrive at once and lose their timing).
    gen = load_generator(ctx, checkpoint)
    with contextlib.ExitStack() as ports:
        # One output port for the whole session, so a virtual port stays connected between answers.
        outport = ports.enter_context(open_midi_output(out_port)) if out_port else None
        inport = ports.enter_context(open_midi_input(in_port))

        def respond(timeline):
            if outport is not None:
                play_to_port(timeline, outport, close=False)  # ends with all-notes-off
            else:
                run_playback(timeline, soundfont, synth, **user_io(ctx))

        info(ctx, f"listening on {in_port}: play a phrase, then pause; Ctrl-C ends")
        try:
            Jam(gen, respond, bars, temperature, tempo, pause, seed=seed, metre=metre).run(inport, max_answers=answers)
        except KeyboardInterrupt:  # the normal way to end a jam: no "Aborted!", exit status 0
            info(ctx, "stopped")


@cli.command("info")
@click.argument("checkpoint", required=False, type=click.Path(exists=True))
@click.option("-c", "--checkpoint", "named", type=click.Path(exists=True), help="The checkpoint, as the other commands take it.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_cmd(checkpoint, named, as_json):
    """What a checkpoint is (default: the bundled model): size, controls, styles, corpus, figures."""
    from .checkpoint import describe, format_description, load_checkpoint

    if checkpoint and named:
        raise UserError("give the checkpoint once: as CHECKPOINT or as -c")
    checkpoint = checkpoint or named

    described = describe(load_checkpoint(checkpoint))
    click.echo(json.dumps(described, indent=2) if as_json else format_description(described))


@cli.command()
@click.argument("midi_file", required=False, type=click.Path(dir_okay=False))
@click.option("-c", "--checkpoint", type=click.Path(exists=True), help="Checkpoint (default: the bundled model).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Session folder for saves and the autosave (default: a new studio-DATE-TIME folder here).")
@click.option("--in", "in_port", help="MIDI input port (a keyboard) besides the computer keyboard.")
@click.option("--bars", default=2, show_default=True, help="Length of each answer.")
@click.option("-t", "--temperature", default=CONTINUE_TEMPERATURE, show_default=True)
@click.option("--tempo", default=120.0, show_default=True, help="Beats per minute of the grid and metronome.")
@click.option("--time-signature", default="4/4", show_default=True)
@click.option("--key", help="Keep answers in a scale: D:minor, F#, auto (from your playing).")
@click.option("--style", help="Style of the answers (models trained with styles).")
@click.option("--pause", type=float, help="Seconds of silence that end your phrase (default: one bar).")
@click.option("--no-metronome", is_flag=True, help="Start with the metronome off (M toggles it).")
@click.option("--seed", type=int, help="Seed of the first answer (the next ones count up), for a repeatable session.")
@soundfont_option()
@synth_option(show_default=True)
@click.option("--size", default="1100x560", show_default=True, help="Window size (resizable).")
@click.pass_context
def studio(ctx, midi_file, checkpoint, out_dir, in_port, bars, temperature, tempo, time_signature, key, style, pause,
           no_metronome, seed, soundfont, synth, size):
    """Play to the model in a window: type notes on the computer keyboard (A S D F ... is a
    piano), pause, and the model answers. F1 lists the keys; drop a MIDI file to continue it.
    MIDI_FILE opens one at the start."""
    from .studio import run_studio

    try:
        metre = tuple(int(x) for x in time_signature.split("/"))
        width, height = (int(x) for x in size.lower().split("x"))
        assert len(metre) == 2 and metre[0] > 0 and metre[1] in (1, 2, 4, 8, 16, 32) and width > 0 and height > 0
    except (ValueError, AssertionError):
        raise UserError("--time-signature must look like 3/4 and --size like 1100x560") from None
    if not 20 <= tempo <= 400:
        raise UserError("--tempo must be between 20 and 400 bpm")
    if bars < 1 or temperature < 0 or (pause is not None and pause < 0):
        raise UserError("--bars must be 1 or more, --temperature and --pause 0 or more")
    # key, style and MIDI_FILE are checked against the model by run_studio, before the window opens
    ctx.exit(run_studio(midi_file, checkpoint, out_dir, in_port, bars, temperature, tempo, metre, key, style, pause,
                        not no_metronome, seed, synth, soundfont, (width, height)))


@cli.command()
@click.pass_context
def ports(ctx):
    """List MIDI input and output ports (needs python-rtmidi)."""
    from . import playback

    playback.SHOW_BACKEND_NOISE = bool(ctx.obj["verbose"])  # -v: show what libasound/rtmidi print
    found = playback.list_ports()
    for kind in ("outputs", "inputs"):
        click.echo(f"{kind}:")
        for name in found[kind] or ["(none)"]:
            click.echo(f"  {name}")


def main():
    cli(prog_name="melodylstm")


if __name__ == "__main__":
    main()
