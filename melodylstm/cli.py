"""Command line: `melodylstm COMMAND`. Heavy modules (torch, symusic) are imported inside the
commands so that `melodylstm --help` stays instant."""
from __future__ import annotations

import json
import os
import sys

import click

from . import __version__


class UserError(click.ClickException):
    """A problem the user can fix; shown as one line, exit code 1."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Group(click.Group):
    """Turns every expected failure into a one-line error instead of a traceback."""

    def invoke(self, ctx):
        from .midi import MidiError

        try:
            return super().invoke(ctx)
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


def tokenizer_options(f):
    """Options that define the tokenization (stored in every checkpoint)."""
    options = [
        click.option("--resolution", default=12, show_default=True, help="Grid steps per quarter note (12: 16ths and triplets)."),
        click.option("--programs", type=click.Choice(["keep", "merge"]), default="keep", show_default=True,
                     help="keep: instruments stay apart (PROGRAM tokens); merge: all pitched tracks become one part."),
        click.option("--drums", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
                     help="keep drum tracks as DRUM tokens, or drop them."),
        click.option("--no-bars", is_flag=True, help="No BAR tokens; time moves by SHIFT tokens only."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def make_tokenizer(resolution, programs, drums, no_bars):
    from .tokenizer import Tokenizer, TokenizerConfig

    return Tokenizer(TokenizerConfig(resolution=resolution, programs=programs, drums=drums, bar_tokens=not no_bars))


def check_output(input_path, output_path) -> None:
    from .fileio import same_file

    if input_path and output_path and same_file(input_path, output_path):
        raise UserError(f"output {output_path} is the input file; choose another name (inputs are never overwritten)")


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


def main():
    cli(prog_name="melodylstm")


if __name__ == "__main__":
    main()
