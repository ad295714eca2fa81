"""Generation API behind `melodylstm generate` and `melodylstm continue`.

    from melodylstm import Generator
    g = Generator.load()                       # the bundled default model
    song = g.generate(bars=8, temperature=0.9)[0]
    result = g.continue_("phrase.mid", bars=8)[0]
    result.save("out.mid")                     # the input unchanged + a new track
"""
from __future__ import annotations

import copy
import io
import os
import secrets
from dataclasses import dataclass

import numpy as np

from .checkpoint import load_checkpoint
from .config import DEFAULT_TEMPERATURE
from .fileio import atomic_write_bytes
from .midi import (DURATION, ONSET, PROGRAM, Song, crop_song, midifile_bytes,
                   read_midi_bytes, seconds_to_steps, song_to_midifile, song_to_tracks)
from .sampling import FastLSTM, Sampler, estimate_key, key_name, parse_key, parse_pitch_range, pitch_mask, start_state

CONTINUATION_NAME = "melodylstm continuation"


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
    start: int  # step where generation began (end of the primer)
    key: str | None = None

    def midi_bytes(self, only_new: bool = False) -> bytes:
        if only_new or self.source is None:
            bar = self.notes.bar_grid()
            first = int(self.notes.notes[:, ONSET].min()) if len(self.notes.notes) else self.start
            song = crop_song(self.notes, bar.start(max(0, bar.index_at_or_after(first + 1) - 1))) if only_new else self.notes
            if not only_new:  # primer could not be copied verbatim: write it as read, plus the new part
                song = Song(np.concatenate([self.primer.notes, self.notes.notes]), song.resolution,
                            song.tempos, song.time_signatures, song.names)
            return midifile_bytes(song_to_midifile(song))
        return append_tracks(self.source, self.notes)

    def save(self, path, only_new: bool = False) -> None:
        atomic_write_bytes(path, self.midi_bytes(only_new))


def append_tracks(source: bytes, song: Song) -> bytes:
    """The original file, event for event, plus the song as new tracks on unused channels."""
    import mido

    mid = mido.MidiFile(file=io.BytesIO(source), clip=True)
    if mid.type == 0:
        mid.type = 1  # a type-0 file cannot hold a second track
    used = {msg.channel for track in mid.tracks for msg in track if hasattr(msg, "channel")}
    free = [ch for ch in range(16) if ch != 9 and ch not in used] or [ch for ch in range(16) if ch != 9]
    ticks_per_step = mid.ticks_per_beat / song.resolution
    named = Song(song.notes, song.resolution, song.tempos, song.time_signatures,
                 {p: CONTINUATION_NAME for p in set(song.notes[:, PROGRAM].tolist())})
    mid.tracks.extend(song_to_tracks(named, ticks_per_step, channels=free))
    return midifile_bytes(mid)


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

    def generate(self, bars=None, seconds=None, tokens=None, num=1, temperature=DEFAULT_TEMPERATURE, top_k=0, top_p=1.0, seed=None,
                 key=None, pitch_range=None, tempo=120.0, time_signature=(4, 4), on_note=None) -> list[Song]:
        """New pieces from nothing. Returns `num` Songs."""
        if key == "auto":
            raise ValueError("--key auto needs a primer to listen to; name a key (e.g. D:minor) for generate")
        if not 20 <= tempo <= 400:
            raise ValueError("--tempo must be between 20 and 400 bpm")
        like = Song(np.zeros((0, 5)), self.tok.config.resolution, [(0, round(60e6 / tempo))],
                    [(0, int(time_signature[0]), int(time_signature[1]))], {})
        songs, _ = self._sample(like, None, Length(bars, seconds, tokens), num, temperature, top_k, top_p, seed,
                                key, pitch_range, on_note)
        return songs

    def continue_(self, primer, bars=None, seconds=None, tokens=None, num=1, temperature=DEFAULT_TEMPERATURE, top_k=0, top_p=1.0,
                  seed=None, key=None, pitch_range=None, primer_bars=None, on_note=None) -> list[Continuation]:
        """Continue a phrase (a path, MIDI bytes, a pretty_midi.PrettyMIDI or a Song)."""
        song, source = self._read_primer(primer)
        kept, _ = self.tok.normalize(song)
        if len(kept.notes) == 0:
            raise ValueError("the primer has no notes the model can read" if len(song.notes) else "the primer has no notes")
        offset = 0
        if primer_bars:
            grid = kept.bar_grid()
            offset = grid.start(max(0, grid.index_at_or_after(kept.end) - primer_bars))
            kept = crop_song(kept, offset)
            if len(kept.notes) == 0:
                raise ValueError(f"the last {primer_bars} bars of the primer hold no notes")
        songs, used_key = self._sample(kept, kept, Length(bars, seconds, tokens), num, temperature, top_k, top_p,
                                       seed, key, pitch_range, on_note, offset)
        results = []
        for new in songs:
            new.notes[:, ONSET] += offset
            timeline = Song(new.notes, song.resolution, song.tempos, song.time_signatures, new.names)
            results.append(Continuation(timeline, song, source, kept.end + offset, used_key))
        return results

    # ------------------------------------------------------------ internals

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
        try:
            import mido

            mido.MidiFile(file=io.BytesIO(data), clip=True)
        except Exception:  # noqa: BLE001 - mido is stricter than symusic; fall back to rewriting
            data = None
        return song, data

    def _sample(self, like: Song, primer: Song | None, length: Length, num, temperature, top_k, top_p, seed,
                key, pitch_range, on_note, offset=0):
        tok = self.tok
        if num < 1 or num > 1024:
            raise ValueError("--num must be 1..1024")
        if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError("need --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1")
        key_value = None
        if key:
            key_value = estimate_key(primer.notes) if key == "auto" else parse_key(key)
        prange = parse_pitch_range(pitch_range) if isinstance(pitch_range, str) else pitch_range
        constraint = pitch_mask(tok, key_value, prange) if (key_value or prange) else None
        seed = secrets.randbelow(2**31) if seed is None else int(seed)
        self.last_seed = seed
        rng = np.random.Generator(np.random.PCG64(seed))
        grid = like.bar_grid()

        decoder = tok.decoder(like)
        if primer is None:
            self.net.reset(num)
            state = start_state(tok, num, grid)
            start_time = 0
        else:
            prefix = tok.encode_normalized(primer)[:-1]  # drop EOS: the piece goes on
            for t in prefix.tolist():
                decoder.push(t)
            h, c = self.net.prime(prefix[:-1])  # the LSTM state carries the whole primer
            self.net.reset(num, np.repeat(h, num, axis=1), np.repeat(c, num, axis=1))
            state = start_state(tok, num, grid, decoder, int(prefix[-1]))
            start_time = primer.end

        end, stop, max_tokens = self._stopping(length, like, grid, start_time, num)
        live = self._live_decoder(decoder, on_note, end, offset) if on_note else None
        sampler = Sampler(self.net, tok, temperature, top_k, top_p, constraint)
        rows = sampler.run(num, state, stop, rng, max_tokens, live)
        songs = []
        for generated in rows:
            dec = copy.deepcopy(decoder)  # the primer's decoder state: time, bar, instrument
            skip = len(dec.notes)
            for t in generated:
                dec.push(t)
            notes = np.array(dec.notes[skip:], dtype=np.int64).reshape(-1, 5)
            notes = clip_notes(notes, end)
            songs.append(Song(notes, like.resolution, like.tempos, like.time_signatures, dict(like.names)))
        return songs, key_name(*key_value) if key_value else None

    def _stopping(self, length: Length, like: Song, grid, start_time: int, rows: int):
        """(end step or None, stop(state, tokens, kinds) -> bool per row, token budget)."""
        if length.tokens:
            count = np.zeros(rows, dtype=np.int64)

            def stop_tokens(state, nxt, kinds):
                count[:] += 1
                return count > length.tokens

            return None, stop_tokens, length.tokens + 1
        if length.bars:
            end = grid.start(grid.index_at_or_after(start_time) + length.bars) if start_time else grid.start(length.bars)
        else:
            end = seconds_to_steps(like.seconds(start_time) + length.seconds, like.tempos, like.resolution)
        # chords are capped at Sampler.MAX_CHORD notes (4 tokens each), so time must move within this budget
        budget = int((end - start_time) * (4 * Sampler.MAX_CHORD + 2) + 256)

        def stop_time(state, nxt, kinds):
            return state["time"] >= end

        return end, stop_time, budget

    def _live_decoder(self, decoder, on_note, end, offset):
        """Feeds row 0's tokens to a streaming decoder and reports each note as it completes."""
        live = copy.deepcopy(decoder)

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


def clip_notes(notes: np.ndarray, end: int | None) -> np.ndarray:
    """Drop notes starting at or after `end` and shorten those that ring past it."""
    if end is None or len(notes) == 0:
        return notes
    notes = notes[notes[:, ONSET] < end].copy()
    notes[:, DURATION] = np.minimum(notes[:, DURATION], end - notes[:, ONSET])
    return notes
