"""Generation API behind `melodylstm generate` and `melodylstm continue`.

    from melodylstm import Generator
    g = Generator.load()                       # the bundled default model
    song = g.generate(bars=8, temperature=0.9)[0]
    result = g.continue_("phrase.mid", bars=8)[0]
    result.save("out.mid")                     # the input unchanged + a new track
"""
from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass

import numpy as np

from .checkpoint import load_checkpoint
from .config import (CHORD_STRENGTH, CHORD_TONE_BIAS, TONIC_BIAS, CONTINUE_TEMPERATURE, DEFAULT_TEMPERATURE, NAMED_KEY_STRENGTH,
                     PICKED_KEY_STRENGTH, ECHO_LAGS, ECHO_WEIGHTS, ECHO_LENGTH_WEIGHTS, ECHO_REST_WEIGHTS,
                     PRIMER_KEY_STRENGTH, PRIMER_REGISTER_STRENGTH, PRIMER_REGISTER_WIDTH, PRIMER_REGISTER_BARS,
                     PRIMER_RHYTHM_STRENGTH, TONIC_BARS, KEY_KEEPER_STRENGTH, KEY_KEEPER_NOTES,
                     KEY_KEEPER_FLOOR)
from .fileio import atomic_write_bytes
from .midi import (DURATION, ONSET, Song, append_tracks, compress_time, crop_song, midi_chunks,
                   midifile_bytes, read_midi_bytes, song_to_midifile, stretch_notes)
from . import controls as ctl
from . import theory
from .candidates import answer_candidates, nearest_the_phrase
from .phrase import (longest_rest, note_length_bias, note_value_factor, phrase_end, primer_voices, recent_onsets_per_beat,
                     register_bias)
from .sampling import Echo, FastLSTM, KeyGuide, KeyKeeper, Opening, Sampler, chord_tone_bias, pitch_mask, start_state

CONTINUATION_NAME = "melodylstm continuation"
DEFAULT_PRIMER_BARS = 64  # an LSTM answers from the recent past: longer primers cost time, not quality
# ... and at most this many tokens of them (whole bars, ~1,300 notes): priming runs token by token
# (twice: once to hear the style, once for the answer), so a dense file's 64 bars (16k tokens) cost
# seconds; 4,096 keeps a 120,000-note file's `continue` near 1 s of CPU. Typical 64 bars are far
# below it (chorales median 870 tokens, POP909 1,340); 2 of 60 POP909 songs and 2 of 410 chorales
# prime from fewer bars.
DEFAULT_PRIMER_TOKENS = 4096


@dataclass
class Length:
    """How much to generate: whole bars, seconds of music, or a number of tokens."""

    bars: int | None = None  # 8 when nothing is given
    seconds: float | None = None
    tokens: int | None = None

    def __post_init__(self):
        given = sum(x is not None for x in (self.bars, self.seconds, self.tokens))
        if given > 1:
            raise ValueError("give only one of --bars, --seconds, --tokens")
        if given == 0:
            self.bars = 8
        for name in ("bars", "seconds", "tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"--{name} must be positive")


@dataclass
class Continuation:
    """New notes that continue a primer, in the primer's own timeline."""

    notes: Song  # only the generated notes
    primer: Song  # the primer as read
    source: bytes | None  # the input file's bytes, copied unchanged into the output
    start: int  # step where generation began: the bar line that ends the primer (phrase.phrase_end)
    key: str | None = None
    controls: dict | None = None  # what conditioned the answer, and what was estimated from the primer

    def midi_bytes(self, only_new: bool = False) -> bytes:
        if only_new or self.source is None:
            bar = self.notes.tempo_map
            first = int(self.notes.notes[:, ONSET].min()) if len(self.notes.notes) else self.start
            song = crop_song(self.notes, bar.bar_start(bar.bar_of(first))) if only_new else self.notes
            if not only_new:  # primer could not be copied verbatim: write it as read, plus the new part
                song = Song(np.concatenate([self.primer.notes, self.notes.notes]), song.resolution,
                            song.tempos, song.time_signatures, song.names)
            return midifile_bytes(song_to_midifile(song))
        return append_tracks(self.source, self.notes, CONTINUATION_NAME)

    def save(self, path, only_new: bool = False) -> None:
        atomic_write_bytes(path, self.midi_bytes(only_new))


class Generator:
    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        self.tok = checkpoint.tokenizer
        self.net = FastLSTM(checkpoint.float_weights(), checkpoint.model_config)  # numpy: no torch import

    @classmethod
    def load(cls, path=None) -> "Generator":
        """Load a checkpoint file or run folder; None means the bundled default model."""
        return cls(load_checkpoint(path))

    # ------------------------------------------------------------ public API

    @property
    def styles(self) -> list:
        return list(self.checkpoint.model_config.styles)

    def generate(self, bars=None, seconds=None, tokens=None, num=1, temperature=DEFAULT_TEMPERATURE, top_k=0, top_p=1.0, seed=None,
                 key=None, pitch_range=None, tempo=120.0, time_signature=(4, 4), on_note=None,
                 style=None, chords=None, density=None, strict_key=False,
                 key_strength=None, voices=None) -> list[Song]:
        """New pieces from nothing. Returns `num` Songs.

        Controls (for a model trained with them): key ('D:minor'), style (a name the model knows;
        None: one is picked by the seed), chords ('Dm7 G7 Cmaj7', one per bar, or a list of bars
        of chords), density ('low' | 'medium' | 'high' | onsets per beat). strict_key also forbids
        pitches outside the key's scale; key_strength is how hard the key pulls the pitches
        (classifier-free guidance; 0: the model's own conditioning only, -1: the key ignored;
        None: 3 for a key given here, 0 for one drawn from the keys of the corpus's pieces in this
        style, as happens when no key is given; continue: -0.5 for the primer's key). voices: at
        most this many notes sounding at once (None: the style's texture in the corpus, when the
        checkpoint records it; 0: no limit). `self.last_controls` says what was used."""
        if key == "auto":
            raise ValueError("--key auto needs a primer to listen to; name a key (e.g. D:minor) for generate")
        if not 20 <= tempo <= 400:
            raise ValueError("--tempo must be between 20 and 400 bpm")
        like = Song(np.zeros((0, 5)), self.tok.config.resolution, [(0, round(60e6 / tempo))],
                    [(0, int(time_signature[0]), int(time_signature[1]))], {})
        seed = self._seed(seed)
        if style is None and self.styles and "style" in self.checkpoint.model_config.control_names:
            style = self.styles[seed % len(self.styles)]
            picked = True
        else:
            picked = False
        request = self._control_request(key, style, chords, density, strict_key, key_strength=key_strength,
                                        unnamed_strength=PICKED_KEY_STRENGTH)
        request["style_picked"] = picked
        request["voices"] = self._voices(voices, style_voices(self.checkpoint.meta, style))
        if key is None and "key" in self.checkpoint.model_config.control_names:
            # the key the chords imply, else the corpus's key for this style: P(key) P(music | key),
            # rather than the key-hidden model
            request["key"] = theory.progression_key(request["progression"] or [])
            request["key_source"] = "chords"
            if request["key"] == theory.KEY_UNKNOWN:
                rng = np.random.default_rng([seed, 1])
                request["key"] = ctl.pick_key(self.checkpoint.meta.get("key_prior"), style, rng)
                request["key_source"] = "picked"
        songs, _ = self._sample(like, None, Length(bars, seconds, tokens), num, temperature, top_k, top_p, seed,
                                request, pitch_range, on_note)
        return songs

    def continue_(self, primer, bars=None, seconds=None, tokens=None, num=1, temperature=CONTINUE_TEMPERATURE, top_k=0, top_p=1.0,
                  seed=None, key=None, pitch_range=None, primer_bars=DEFAULT_PRIMER_BARS, on_note=None,
                  style=None, chords=None, density=None, strict_key=False,
                  key_strength=None, voices="auto", primer_tokens=DEFAULT_PRIMER_TOKENS,
                  candidates=None) -> list[Continuation]:
        """Continue a phrase (a path, MIDI bytes, a pretty_midi.PrettyMIDI or a Song) from its last
        `primer_bars` bars (None: all of it), and of those at most the last whole bars that fit in
        `primer_tokens` tokens (None: no bound; it applies only with `primer_bars`). Controls as
        for `generate`; by default the primer's key, density and texture are kept (voices "auto":
        at most as many notes sounding at once as the primer ever starts together, so a melody is
        answered with a melody), its style is the one under which it is most likely, and the
        model chooses the chords. Each answer is the one of `candidates` samples (None: 32, or 1
        when notes are heard as they come) that sounds most like the primer's last bars."""
        song, source = self._read_primer(primer)
        kept, _ = self.tok.normalize(song)
        if len(kept.notes) == 0:
            raise ValueError("the primer has no notes the model can read" if len(song.notes) else "the primer has no notes")
        offset, total_bars, used_bars = 0, None, None
        if primer_bars:
            grid = kept.tempo_map
            total_bars = grid.bar_at_or_after(kept.end)
            first = max(0, total_bars - primer_bars)
            offset = grid.bar_start(first)
            kept = crop_song(kept, offset)
            if len(kept.notes) == 0:
                raise ValueError(f"the last {primer_bars} bars of the primer hold no notes")
            kept, cut, dropped = bound_primer_tokens(kept, self.tok, primer_tokens)
            offset += cut
            used_bars = total_bars - first - dropped
        request = self._control_request(None if key == "auto" else key, style, chords, density, strict_key,
                                        auto_key=key == "auto", key_strength=key_strength)
        request["primer_bars"] = used_bars  # the bars primed from; primer_cut: fewer than the file holds
        request["primer_cut"] = total_bars is not None and total_bars > used_bars
        request["voices"] = self._voices(primer_voices(kept) if voices == "auto" else voices, None)
        # a line in whole and half notes is read in halves and quarters (a density asked for is the user's pace)
        factor = note_value_factor(kept) if density is None else 1
        heard = compress_time(kept, factor) if factor > 1 else kept
        if factor > 1 and on_note is not None:
            on_note = stretched(on_note, factor, offset)
        per = answer_candidates(candidates, num, on_note)
        songs, used_key = self._sample(heard, heard, Length(bars, seconds, tokens), num * per, temperature, top_k,
                                       top_p, self._seed(seed), request, pitch_range, on_note, offset)
        songs = [songs[i * per + nearest_the_phrase(heard, songs[i * per:(i + 1) * per])] for i in range(num)]
        self.last_controls.update(note_values=factor, candidates=per)
        end = None  # --seconds ends on the phrase's own grid, not on the shortened one (finer by `factor`)
        if factor > 1 and seconds and not bars and not tokens:
            end = kept.tempo_map.first_step_at(kept.tempo_map.seconds(phrase_end(kept)) + seconds)
        results = []
        for new in songs:
            new.notes = clip_notes(stretch_notes(new.notes, factor), end)
            new.notes[:, ONSET] += offset
            timeline = Song(new.notes, song.resolution, song.tempos, song.time_signatures, new.names)
            results.append(Continuation(timeline, song, source, phrase_end(kept) + offset, used_key, dict(self.last_controls)))
        return results

    # ------------------------------------------------------------ internals

    @staticmethod
    def _voices(voices, default) -> int | None:
        """The voice limit asked for (None: `default`; 0: none), checked."""
        if voices is None:
            return default
        if isinstance(voices, bool) or not isinstance(voices, (int, np.integer)) or not 0 <= voices <= Sampler.MAX_CHORD:
            raise ValueError(f"voices must be a whole number from 0 (no limit) to {Sampler.MAX_CHORD}, not {voices!r}")
        return int(voices) or None

    def _read_primer(self, primer):
        res = self.tok.config.resolution
        if isinstance(primer, Song):
            return primer, None
        if isinstance(primer, (str, os.PathLike)):
            with open(primer, "rb") as fh:
                data = fh.read()
        elif isinstance(primer, (bytes, bytearray)):
            data = bytes(primer)
        elif hasattr(primer, "write") and hasattr(primer, "instruments"):  # pretty_midi.PrettyMIDI
            buf = io.BytesIO()
            primer.write(buf)
            data = buf.getvalue()
        else:
            raise TypeError("primer must be a path, MIDI bytes, a PrettyMIDI or a Song")
        song = read_midi_bytes(data, res)
        return song, data if midi_chunks(data) is not None else None

    def _seed(self, seed) -> int:
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        self.last_seed = seed
        return seed

    def _control_request(self, key, style, chords, density, strict_key, auto_key=False,
                         key_strength=None, unnamed_strength=PRIMER_KEY_STRENGTH) -> dict:
        """Check the user's controls against what the model learned; one-line errors otherwise.
        unnamed_strength: the key guidance when the user names no key (generate draws one,
        continue hears the primer's)."""
        names = self.checkpoint.model_config.control_names
        if key_strength is None:  # a key the user names is held hard
            key_strength = NAMED_KEY_STRENGTH if key and key != "auto" else unnamed_strength
        if not -1 <= key_strength <= 10:
            raise ValueError("--key-strength must be between -1 (ignore the key) and 10")
        req = {"key": None, "mask_key": None, "style": None, "progression": None, "density": None,
               "strict_key": strict_key, "auto_key": auto_key, "key_strength": float(key_strength)}
        if key is not None:  # "" is an unknown key, not no key
            tonic, scale = theory.parse_key(key)
            if strict_key:
                req["mask_key"] = (tonic, scale)
            if "key" in names and scale in theory.MODES:
                req["key"] = theory.key_index(tonic, scale)
            elif "key" in names and not strict_key:
                raise ValueError(f"--key {key}: the model is told major and minor keys only; "
                                 f"for {scale} add --strict-key (a hard scale mask)")
            elif not strict_key:
                raise ValueError("this checkpoint was trained without controls: --key works with it only as "
                                 "a hard scale mask (add --strict-key)")
        elif strict_key and not auto_key:
            raise ValueError("--strict-key needs --key (a key name, or auto for continue)")
        if style is not None:
            if "style" not in names:
                raise ValueError("this checkpoint knows no styles (it was trained on a folder without style "
                                 "subfolders, or without controls)")
            if style not in self.styles:
                raise ValueError(f"unknown style {style!r}: this model knows {', '.join(self.styles)}")
            req["style"] = self.styles.index(style)
        if chords is not None:
            if "chord" not in names:
                raise ValueError("this checkpoint was trained without the chord control: --chords cannot be used with it")
            req["progression"] = [[c] for c in ctl.parse_progression(chords)] if isinstance(chords, str) else chords
        if density is not None:
            if "density" not in names:
                raise ValueError("this checkpoint was trained without the density control: --density cannot be used with it")
            req["density"] = ctl.parse_density(density)
        return req

    def _sample(self, like: Song, primer: Song | None, length: Length, num, temperature, top_k, top_p, seed,
                request, pitch_range, on_note, offset=0):
        tok, config = self.tok, self.checkpoint.model_config
        if num < 1 or num > 1024:
            raise ValueError("--num must be 1..1024")
        if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError("need --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
        names = config.control_names
        unknown = (theory.KEY_UNKNOWN,) * 3
        estimated, held, rival = theory.phrase_keys(primer.notes) if primer is not None else unknown
        key_value = request["mask_key"]
        if key_value is None and request["auto_key"] and (request["strict_key"] or "key" not in names):
            key_value = primer_key(primer.notes)  # --key auto: the primer's scale as a hard mask
        prange = theory.parse_pitch_range(pitch_range) if isinstance(pitch_range, str) else pitch_range
        constraint = pitch_mask(tok, key_value, prange) if (key_value or prange) else None
        rng = np.random.Generator(np.random.PCG64(seed))
        grid = like.tempo_map
        report = {"controls": names, "strict_key": bool(key_value)}

        # an ambiguous primer holds no key: the network reads the phrase, and no guess is guided
        cond_key = request["key"] if request["key"] is not None else (held if primer is not None else None)
        guided, strength = [], request["key_strength"]  # what guidance pushes: a key held, the user's chords
        if strength and cond_key is not None and cond_key != theory.KEY_UNKNOWN and "key" in names:
            guided.append("key")
        if request["progression"] and "chord" in names and CHORD_STRENGTH:
            # one pair of rows for both: the key stays guided only where it pushes the same way
            guided = [g for g in guided if strength > 0] + ["chord"]
            strength = max(strength, CHORD_STRENGTH)
        guide = None
        if guided:
            columns = [names.index(name) for name in guided]
            guide = KeyGuide(tok, columns, ctl.unknown_of(config)[columns], strength)
        density = request["density"]
        decoder = tok.decoder(like)
        earlier_chords = None
        if primer is None:
            self.net.reset(num * (2 if guide else 1))
            state = start_state(tok, num, grid)
            start_time = 0
            style = request["style"]
        else:
            start_time = phrase_end(primer)  # the answer starts at the bar line that ends the phrase
            full = tok.encode_normalized(primer, end=start_time)
            prefix = full[:-1]  # drop EOS: the piece goes on
            for t in prefix.tolist():
                decoder.push(t)
            causal = config.causal_controls
            primer_controls = ctl.controls_for(primer, full, tok, causal)[:-1] if names else None
            if primer_controls is not None:
                res = tok.config.resolution
                earlier_chords = ctl.chord_inputs(primer.notes, primer.end // res + 2, res, causal)
                if density is None and "density" in names:  # keep the pace of the primer's last bars
                    density = ctl.density_bucket(recent_onsets_per_beat(primer, res))
            with one_blas_thread():  # priming steps one row (or one per style) at a time
                style, h, c = self._prime(prefix, primer_controls, request["style"], report, guided=guided if guide else (),
                                          voices=request.get("voices"))
            # rows 0..num-1 told the key; with guidance, rows num.. the same with the key hidden
            self.net.reset(len(h[0]) * num, np.repeat(h, num, axis=1), np.repeat(c, num, axis=1))
            state = start_state(tok, num, grid, decoder, int(prefix[-1]))
        plan = None
        if names:
            plan = ctl.ControlPlan(config, tok.config.resolution, grid, cond_key if "key" in names else None,
                                   style, density if "density" in names else None, request["progression"], start_time,
                                   earlier_chords, primer.notes if primer is not None else None)
        report.update({
            "key": theory.key_label(cond_key) if cond_key is not None and "key" in names else None,
            "key_source": request.get("key_source") or ("given" if request["key"] is not None else None) or (
                None if cond_key is None or "key" not in names else "primer" if held == estimated else "ambiguous"),
            "key_strength": request["key_strength"] if guide and "key" in guided else None,
            "primer_key": theory.key_label(estimated) if primer is not None else None,
            "primer_key_rival": theory.key_label(rival) if held != estimated else None,  # fits nearly as well
            "scale_mask": theory.key_name(*key_value) if key_value else None,
            "style": self.styles[style] if style is not None and style < len(self.styles) else None,
            "style_source": report.get("style_source") or ("picked" if request.get("style_picked") else
                                                           "given" if request["style"] is not None else None),
            "density": density_label(density), "density_source": "given" if request["density"] is not None else
            ("primer" if density is not None else None),
            "chords": ctl.progression_label(request["progression"])
            if request["progression"] else ("the model's" if "chord" in names else None),
            "primer_bars": request.get("primer_bars"), "primer_cut": request.get("primer_cut", False),
            "temperature": temperature, "voices": request.get("voices"),
        })
        self.last_controls = report

        end, stop, max_tokens = self._stopping(length, like, grid, start_time, num)
        live = self._live_decoder(decoder, on_note, end, offset) if on_note else None
        if primer is not None:  # no holes the primer lacks
            max_rest = longest_rest(primer)
        else:  # ... nor holes the style's corpus lacks
            name = self.styles[style] if style is not None and style < len(self.styles) else None
            max_rest = style_rest(self.checkpoint.meta, name)
        if primer is not None and PRIMER_RHYTHM_STRENGTH:  # the answer's note lengths lean towards the phrase's
            bias = note_length_bias(tok, primer, PRIMER_RHYTHM_STRENGTH)
            constraint = bias if constraint is None else constraint + bias
        if primer is not None and PRIMER_REGISTER_STRENGTH:  # ... and its pitches towards the phrase's register
            bias = register_bias(tok, primer, PRIMER_REGISTER_STRENGTH, PRIMER_REGISTER_WIDTH,
                                     PRIMER_REGISTER_BARS)
            constraint = bias if constraint is None else constraint + bias
        chord_bias = None
        if request["progression"] and "chord" in names and CHORD_TONE_BIAS:
            chord_bias = (names.index("chord"), chord_tone_bias(tok, CHORD_TONE_BIAS))
        priors = self._primer_priors(primer, grid, num)
        if request["key"] is not None and request.get("key_source") is None and "key" in names:  # a key given
            priors += named_key_priors(tok, request["key"], num, grid.bar_start(grid.bar_of(start_time) + TONIC_BARS))
        sampler = Sampler(self.net, tok, temperature, top_k, top_p, constraint, plan, guide, request.get("voices"),
                          max_rest, chord_bias, priors)
        with one_blas_thread():  # see its docstring: the thread policy
            rows = sampler.run(num, state, stop, rng, max_tokens, live)
        songs = []
        for generated in rows:
            dec = decoder.fork()  # the primer's decoder state: time, bar, instrument
            skip = len(dec.notes)
            for t in generated:
                dec.push(t)
            notes = np.array(dec.notes[skip:], dtype=np.int64).reshape(-1, 5)
            notes = clip_notes(notes, end)
            songs.append(Song(notes, like.resolution, like.tempos, like.time_signatures, dict(like.names)))
        used_key = report["scale_mask"] or (report["key"] if cond_key != theory.KEY_UNKNOWN else None)
        return songs, used_key

    def _primer_priors(self, primer, grid, num: int) -> list:
        """What an answer hears of the phrase as it goes: a melody its own phrases 4 and 2 bars
        back (Echo)."""
        priors = []
        if primer is None:
            return priors
        if any(ECHO_WEIGHTS + ECHO_LENGTH_WEIGHTS + ECHO_REST_WEIGHTS) and primer_voices(primer) == 1:
            bar = grid.bar_of(max(primer.end - 1, 0))
            priors.append(Echo(self.tok, num, grid.bar_start(bar + 1) - grid.bar_start(bar), primer.notes,
                               ECHO_LAGS, ECHO_WEIGHTS, ECHO_LENGTH_WEIGHTS, ECHO_REST_WEIGHTS))
        return priors

    def _prime(self, prefix, primer_controls, style, report, guided=(), voices=None):
        """Run the primer through the network: (style id or None, h, c). Without a given style,
        the primer is run once per style (as rows of one batch) and the style under which it is
        most likely wins, among the styles whose texture fits the primer's `voices`. guided: the
        controls a second row hides (for KeyGuide)."""
        config = self.checkpoint.model_config
        if primer_controls is None:
            h, c = self.net.prime(prefix[:-1])
            return None, h, c
        columns = ctl.columns_of(config)
        full = np.concatenate([primer_controls, np.zeros((len(primer_controls), 1), np.uint8)], axis=1).astype(np.int64)
        if "style" in config.control_names and style is None:
            style = self._most_likely_style(prefix, full, columns, report, self._texture_styles(voices))
        rows = np.repeat(full[None, :-1], 2 if guided else 1, axis=0)
        if style is not None:
            rows[:, :, ctl.STYLE] = style
        for name in guided:
            rows[1, :, ctl.COLUMNS.index(name)] = {"key": theory.KEY_UNKNOWN, "chord": theory.CHORD_UNKNOWN}[name]
        h, c = self.net.prime(prefix[:-1], rows[..., columns], rows=len(rows))
        return style, h, c

    def _texture_styles(self, voices) -> list[int]:
        """The styles a primer with `voices` notes at once may be heard as: a melody (one voice)
        only as a style the corpus plays in one voice, when the checkpoint records one, so that
        rhythm alone never turns a melody into chords; any style otherwise."""
        table = self.checkpoint.meta.get("style_voices")
        everything = list(range(len(self.styles)))
        if voices != 1 or not isinstance(table, dict):
            return everything
        melodic = [i for i, name in enumerate(self.styles) if table.get(name) == 1]
        return melodic or everything

    def _most_likely_style(self, prefix, full, columns, report, candidates=None) -> int:
        """The style under which the primer's notes are most likely: the primer runs once per style
        (rows of one batch) with key and density hidden, so the style has to explain the notes
        by itself (a density alone can tell chorales from reels)."""
        n = len(self.styles)
        rows = np.repeat(full[None, :-1], n, axis=0)
        rows[:, :, ctl.STYLE] = np.arange(n)[:, None]
        rows[:, :, ctl.KEY] = theory.KEY_UNKNOWN
        rows[:, :, ctl.DENSITY] = ctl.DENSITY_UNKNOWN
        _, logits = self.net.prime(prefix[:-1], rows[..., columns], rows=n, want_logits=True)
        steps = logits.shape[1] - 1  # logits[t] predicts prefix[t + 1]
        log_p = np.empty((n, steps))
        for t0 in range(0, steps, 1024):  # in blocks: float64 copies of all the logits are large
            block = logits[:, t0: min(steps, t0 + 1024)].astype(np.float64)
            top = block.max(-1, keepdims=True)
            log_z = np.log(np.exp(block - top).sum(-1)) + top[..., 0]
            target = np.broadcast_to(prefix[1 + t0: 1 + t0 + block.shape[1]][None, :, None], block.shape[:2] + (1,))
            log_p[:, t0: t0 + block.shape[1]] = np.take_along_axis(block, target, -1)[..., 0] - log_z
        score = log_p.sum(1)
        report["style_source"] = "primer"
        report["style_scores"] = {name: round(float(v), 1) for name, v in zip(self.styles, score)}
        if candidates is not None and len(candidates) < len(self.styles):
            report["style_source"] = "primer (one voice: melodic styles only)"
            return max(candidates, key=lambda i: score[i])
        return int(score.argmax())


    def _stopping(self, length: Length, like: Song, grid, start_time: int, rows: int):
        """(end step or None, stop(state, tokens, kinds) -> bool per row, token budget)."""
        if length.tokens:
            count = np.zeros(rows, dtype=np.int64)

            def stop_tokens(state, nxt, kinds):
                count[:] += 1
                return count > length.tokens

            return None, stop_tokens, length.tokens + 1
        if length.bars:
            end = grid.bar_start(grid.bar_at_or_after(start_time) + length.bars) if start_time else grid.bar_start(length.bars)
        else:
            end = grid.first_step_at(grid.seconds(start_time) + length.seconds)
        # chords are capped at Sampler.MAX_CHORD notes (4 tokens each), so time must move within this budget
        budget = int((end - start_time) * (4 * Sampler.MAX_CHORD + 2) + 256)

        def stop_time(state, nxt, kinds):
            return state["time"] >= end

        return end, stop_time, budget

    def _live_decoder(self, decoder, on_note, end, offset):
        """Feeds row 0's tokens to a streaming decoder and reports each note as it completes."""
        live = decoder.fork()

        def on_token(row, token):
            if row != 0:
                return
            note = live.push(token)
            if note is not None and (end is None or note[ONSET] < end):
                onset, dur, pitch, vel, prog = note
                if end is not None:
                    dur = min(dur, end - onset)
                on_note((onset + offset, dur, pitch, vel, prog))

        return on_token


def bound_primer_tokens(song: Song, tok, max_tokens) -> tuple:
    """(song, cut, bars dropped): the song from the first bar line after which its encoding has
    at most `max_tokens` tokens (cut: that bar line's step; the song unchanged when it fits, when
    there is no bound, or without BAR tokens). A bar is never split, so when the last bar alone
    is longer, the primer is that bar."""
    if not max_tokens or not tok.config.bar_tokens:
        return song, 0, 0
    tokens = tok.encode_normalized(song, end=phrase_end(song))  # as fed: the clock to the bar line too
    if len(tokens) - 1 <= max_tokens:  # the EOS is not fed
        return song, 0, 0
    bars = np.flatnonzero(tokens == tok.bar)
    # BAR j starts bar j; from it on (after a BOS) the primer holds len - position tokens, but EOS
    fits = np.flatnonzero(len(tokens) - bars <= max_tokens)
    notes_end = int(song.notes[:, ONSET].max())
    grid = song.tempo_map
    last_with_notes = grid.bar_of(notes_end)
    j = int(fits[0]) if len(fits) else last_with_notes
    j = min(j, last_with_notes)  # keep at least the bar of the last onset
    cut = grid.bar_start(j)
    return crop_song(song, cut), cut, j


def one_blas_thread():
    """The thread policy of sampling: one BLAS thread, whatever the number of rows.

    A sampling step multiplies a few rows (the variations, twice that with key guidance) by
    matrices of a few hundred thousand weights: well under a millisecond on one core, about the
    time OpenBLAS's worker threads take to wake, meet and go back to spinning. On an idle machine
    a second thread gains little; on a machine with other work it is a disaster, because the
    threads spin waiting for a core the other process holds: `generate -n 16` took 15.7-28.8 s
    instead of 0.9 s with one other busy process, and a batch of 16-128 rows sampled 4-8x slower
    with two threads than with one on a loaded 2-core machine (`melodylstm bench`: "sampling under
    load"). Priming (one row or a few, step by step) is the same case. Parallelism belongs a
    level up (several processes, as `data --jobs` does), not inside each small product.
    OPENBLAS_NUM_THREADS and friends still bound everything else (ingest, training is torch)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


def primer_key(notes: np.ndarray) -> tuple[int, str]:
    """The key of the primer's notes, for --key auto."""
    try:
        return theory.phrase_key(notes)
    except ValueError:
        raise ValueError("--key auto: the primer has no pitched notes to estimate a key from") from None


def density_label(bucket) -> str | None:
    if bucket is None:
        return None
    names = {v: k for k, v in ctl.DENSITY_NAMES.items()}
    edges = ctl.DENSITY_EDGES
    if bucket == 0:
        span = f"under {edges[0]:g} note{'s' if edges[0] != 1 else ''}"
    elif bucket < len(edges):
        span = f"{edges[bucket - 1]:g}-{edges[bucket]:g} notes"
    else:
        span = f"{edges[-1]:g}+ notes"
    return names.get(bucket, "very low" if bucket == 0 else "very high") + f" ({span}/beat)"


def clip_notes(notes: np.ndarray, end: int | None) -> np.ndarray:
    """Drop notes starting at or after `end` and shorten those that ring past it."""
    if end is None or len(notes) == 0:
        return notes
    notes = notes[notes[:, ONSET] < end].copy()
    notes[:, DURATION] = np.minimum(notes[:, DURATION], end - notes[:, ONSET])
    return notes


def stretched(on_note, factor: int, offset: int):
    """A live-note callback for a phrase read `factor` times shorter: notes reported in its own values."""
    def report(note):
        onset, dur, *rest = note
        on_note((offset + (onset - offset) * factor, dur * factor, *rest))
    return report


def style_voices(meta: dict, style: str | None) -> int | None:
    """The voice limit a checkpoint recorded for a style (its corpus's texture), if any."""
    table = meta.get("style_voices") if isinstance(meta, dict) else None
    value = table.get(style or "") if isinstance(table, dict) else None
    return int(value) if isinstance(value, int) and 0 < value <= Sampler.MAX_CHORD else None


def named_key_priors(tok, key: int, rows: int, opening_end: int) -> list:
    """A key the user names (not one drawn from the corpus): its tonic triad heard while the
    music opens (until step `opening_end`), then each row kept in it by what it has played."""
    priors = []
    if any(TONIC_BIAS):
        priors.append(Opening(tonic_triad_bias(tok, key, TONIC_BIAS), opening_end))
    if KEY_KEEPER_STRENGTH:
        priors.append(KeyKeeper(tok, rows, key, KEY_KEEPER_STRENGTH, KEY_KEEPER_NOTES, KEY_KEEPER_FLOOR))
    return priors


def style_rest(meta: dict, style: str | None) -> int | None:
    """The longest rest (steps) the checkpoint's corpus has inside 99% of its pieces of this style
    (data.style_rests); None for a checkpoint that does not record it."""
    table = meta.get("style_rests")
    value = table.get(style or "") if isinstance(table, dict) else None
    return int(value) if isinstance(value, int) and value >= 0 else None


def tonic_triad_bias(tok, key: int, weights) -> np.ndarray:
    """(vocab,) additive logits on the pitches of the key's tonic triad: `weights` for its root,
    third and fifth."""
    bias = np.zeros(len(tok), dtype=np.float32)
    classes = np.arange(tok.config.pitch_low, tok.config.pitch_high + 1) % 12
    for pitch_class, weight in zip(theory.tonic_triad(key), weights):
        bias[tok.pitch0 + np.flatnonzero(classes == pitch_class)] = weight
    return bias


def describe_controls(report: dict) -> str:
    """One line of what conditioned the music: '; key D:minor (primer), style tune (most likely)...'."""
    if not report or not report.get("controls"):
        return (f"; scale {report['scale_mask']}" if report and report.get("scale_mask") else "")
    parts = []
    if report.get("key_source") == "ambiguous":
        parts.append(f"key open (the primer fits {report['primer_key']} and {report['primer_key_rival']} nearly alike)")
    elif report.get("key"):
        source = {"primer": " (the primer's)", "picked": " (picked; --key chooses)",
                  "chords": " (the chords'; --key chooses)"}.get(report.get("key_source"), "")
        parts.append(f"key {report['key']}{source}")
    if report.get("style"):
        source = {"picked": " (picked; --style chooses)", "primer": " (the primer's most likely)",
                  "primer (one voice: melodic styles only)": " (the primer's most likely one-voice style)"
                  }.get(report.get("style_source"), "")
        parts.append(f"style {report['style']}{source}")
    if report.get("density"):
        parts.append(f"density {report['density']}" + (" (the primer's)" if report.get("density_source") == "primer" else ""))
    if report.get("chords"):
        parts.append(f"chords {report['chords']}")
    if report.get("voices"):
        parts.append(f"at most {report['voices']} note{'s' if report['voices'] > 1 else ''} at once")
    if report.get("scale_mask"):
        parts.append(f"scale mask {report['scale_mask']}")
    if (report.get("candidates") or 1) > 1:
        parts.append(f"of {report['candidates']} samples the one most like the phrase")
    if (report.get("note_values") or 1) > 1:  # a slow line, read as the same music in shorter values
        parts.append(f"read in note values {report['note_values']}x shorter")
    return "; " + ", ".join(parts) if parts else ""
