"""What the commands share: option groups declared once, and errors told in one line
(`UserError`, `one_line`, also used by playback and the studio)."""
from __future__ import annotations

import click

from .config import CONTINUE_TEMPERATURE, DEFAULT_TEMPERATURE

SYNTHS = ["auto", "fluidsynth", "tinysoundfont", "numpy"]


class UserError(click.ClickException):
    """A problem the user can fix; shown as one line, exit code 1."""


class CommandLineError(click.ClickException):
    """A mistake in the command line itself (a missing file, a bad option value): one line, exit
    code 2, as click's own usage errors, without their usage block."""

    exit_code = 2

    def __init__(self, exc: click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "melodylstm"
        super().__init__(f"{one_line(click.ClickException(exc.format_message()))} (see {where} --help)")


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def option_group(*options):
    """One decorator applying `options` in the order listed (so --help lists them so)."""
    def apply(f):
        for option in reversed(options):
            f = option(f)
        return f

    return apply


def synth_option(help=None, show_default=None):
    return click.option("--synth", type=click.Choice(SYNTHS), default="auto", show_default=show_default, help=help)


def soundfont_option(help=None):
    return click.option("--soundfont", type=click.Path(exists=True, dir_okay=False), help=help)


# Options that define the tokenization (stored in every checkpoint).
tokenizer_options = option_group(
    click.option("--resolution", default=12, show_default=True, help="Grid steps per quarter note (12: 16ths and triplets)."),
    click.option("--programs", type=click.Choice(["keep", "merge"]), default="keep", show_default=True,
                 help="keep: instruments stay apart (PROGRAM tokens); merge: all pitched tracks become one part."),
    click.option("--drums", type=click.Choice(["keep", "drop"]), default="keep", show_default=True,
                 help="keep drum tracks as DRUM tokens, or drop them."),
    click.option("--no-bars", is_flag=True, help="No BAR tokens; time moves by SHIFT tokens only."),
)

# generate and continue
sampling_options = option_group(
    click.option("-c", "--checkpoint", type=click.Path(exists=True), help="Checkpoint file or run folder (default: the bundled model)."),
    click.option("--bars", type=int, help="Length in bars of generated music (default 8)."),
    click.option("--seconds", type=float, help="Length in seconds of generated music."),
    click.option("--tokens", type=int, help="Length in tokens."),
    click.option("-n", "--num", default=1, show_default=True, help="Variations to write (sampled as one batch)."),
    click.option("-t", "--temperature", type=float,
                 help=f"Randomness: 1 = the model as trained, lower = safer, 0 = always the likeliest token "
                      f"(default: {DEFAULT_TEMPERATURE} for generate, {CONTINUE_TEMPERATURE} for continue)."),
    click.option("--top-k", default=0, show_default=True, help="Sample only from the k likeliest tokens (0: all)."),
    click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling: smallest set with this probability."),
    click.option("--seed", type=int, help="Same seed, checkpoint and options give the same file."),
    click.option("--key", help="Key to write in: D:minor, F#, Bb:major (continue: the primer's by default; "
                               "auto: the primer's, as a scale mask with --strict-key)."),
    click.option("--strict-key", is_flag=True, help="Also forbid pitches outside the key's scale (any scale: Bb:dorian, A:blues)."),
    click.option("--key-strength", type=float,
                 help="How hard the key pulls the pitches, -1 (ignore it) to 10 (default: 3 for a --key you "
                      "name, 0 for a key picked from the corpus, -0.5 for the key heard in the primer)."),
    click.option("--style", help="Style the model learned (see `melodylstm info`); generate picks one when not given, "
                                 "continue the one under which the primer is most likely."),
    click.option("--chords", help='Chord progression, one chord per bar, repeated: "Dm7 G7 Cmaj7 Cmaj7".'),
    click.option("--chords-file", type=click.Path(exists=True, dir_okay=False),
                 help="Progression file: one bar per line; several chords on a line share the bar (e.g. one per beat); "
                      "N.C. for a bar with no chord, # for comments, no blank lines between bars."),
    click.option("--density", help="Notes per beat: low, medium, high, or a number (e.g. 2)."),
    click.option("--pitch-range", help="Lowest-highest pitch, e.g. 48-84 or C3-C6."),
    click.option("--voices", type=click.IntRange(0, 16),
                 help="At most N notes sounding at once, 0: no limit (default: continue keeps the primer's "
                      "texture; generate the style's, as its corpus plays it)."),
    click.option("--play", is_flag=True, help="Play the notes while they are generated."),
    click.option("--window", is_flag=True, help="With --play: show a scrolling piano roll."),
    soundfont_option("SoundFont for --play."),
    synth_option("Synth for --play."),
    click.option("--midi-out", help="With --play: send to this MIDI port instead of the speakers."),
)

# play
playback_options = option_group(
    soundfont_option("SoundFont (.sf2) for the synth."),
    synth_option("auto: FluidSynth, else TinySoundFont, else the built-in numpy synth.", show_default=True),
    click.option("--midi-out", help="Send to this MIDI port instead (virtual:NAME opens a virtual port)."),
)

peak_option = click.option("--peak", default="-1", show_default=True, metavar="DBFS|off",
                           help="WAV files are normalised: their loudest sample at this level in dBFS "
                                "(off: the synth's own level, which differs from synth to synth).")
