"""The studio's sound: one continuous stream whose clock is the session's clock. Answers, loaded
files and the metronome are rendered block by block (playback.BlockRenderer); keys sound through
pre-rendered notes on their own mixer channels, so a key is heard at the mixer's next buffer
rather than after the stream's render-ahead. `NullAudio` keeps the session going without an
audio device."""
from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time

import numpy as np

from ..midi import DRUMS
from ..options import one_line

KEY_BUFFER = 512  # mixer buffer: a key sounds at the next one (11.6 ms)
KEY_CHANNELS = 24
KEY_SECONDS = 3.0  # length of a pre-rendered key note (a held key sounds at most this long)
KEY_RELEASE_MS = 150
VELOCITIES = [32, 48, 64, 80, 96, 112, 127]
CLICK_BAR, CLICK_BEAT = 76, 77  # General MIDI hi and low wood block


class KeySounds:
    """Pre-rendered notes: pressing a key starts a ready sound on a free mixer channel. Rendered
    by their own synth, in a background thread ahead of use (the current octaves and velocity)."""

    def __init__(self, pygame, make, channels):
        self.pygame, self.make, self.channels = pygame, make, channels
        self.synth = self.synth_now = None  # the worker's, the main thread's
        self.cache_lock = threading.Lock()
        self.cache = collections.OrderedDict()  # (program, pitch, velocity) -> int16 bytes
        self.sounds = {}  # the same keys -> pygame Sound (made in the main thread)
        self.playing = {}  # pitch -> channel
        self.next_channel = 0
        self.wishes, self.wish_lock, self.worker = [], threading.Lock(), None

    def _render(self, key, own: bool = False) -> bytes:
        """Render a key's note. The worker uses its synth; a key pressed before its note was ready
        renders it at once with the main thread's own (`own`), never waiting for the worker."""
        from ..playback import to_int16
        from ..synth import SAMPLE_RATE

        slot = "synth_now" if own else "synth"
        if getattr(self, slot) is None:
            setattr(self, slot, self.make())
        synth = getattr(self, slot)
        program, pitch, velocity = key
        synth.all_off()
        synth.program(0, program)
        synth.note_on(0, pitch, velocity)
        audio = synth.render(int(KEY_SECONDS * SAMPLE_RATE))
        synth.note_off(0, pitch)
        synth.render(SAMPLE_RATE // 5)  # let it go quiet before the next note
        fade = int(0.1 * SAMPLE_RATE)  # no click where the sample ends
        audio[-fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)[:, None]
        data = to_int16(audio)
        with self.cache_lock:
            self.cache[key] = data
            while len(self.cache) > 120:
                old, _ = self.cache.popitem(last=False)
                self.sounds.pop(old, None)
        return data

    def prepare(self, pitches, velocity: int, program: int = 0) -> None:
        """Render these ahead, in order, in one background thread (a newer wish replaces an older)."""
        keys = [(program, p, velocity) for p in pitches if 0 <= p <= 127]
        with self.wish_lock:
            self.wishes = keys
            if self.worker is None or not self.worker.is_alive():
                self.worker = threading.Thread(target=self._prepare, daemon=True, name="melodylstm-keys")
                self.worker.start()

    def _prepare(self) -> None:
        while True:
            with self.wish_lock:
                if not self.wishes:
                    self.worker = None
                    return
                key = self.wishes.pop(0)
            if key not in self.cache:
                self._render(key)

    def on(self, pitch: int, velocity: int, program: int = 0) -> None:
        key = (program, pitch, velocity)
        sound = self.sounds.get(key)
        if sound is None:
            data = self.cache.get(key) or self._render(key, own=True)
            sound = self.sounds[key] = self.pygame.mixer.Sound(buffer=data)
        self.off(pitch)
        channel = self.channels[self.next_channel]
        self.next_channel = (self.next_channel + 1) % len(self.channels)
        channel.play(sound)
        self.playing[pitch] = channel

    def off(self, pitch: int) -> None:
        channel = self.playing.pop(pitch, None)
        if channel is not None:
            channel.fadeout(KEY_RELEASE_MS)


class Audio:
    """The studio's sound: one continuous stream, whose clock is the session's clock."""

    def __init__(self, synth: str = "auto", soundfont=None):
        from ..playback import STREAM_CHANNELS, BlockRenderer, PygameOutput, Timeline
        from ..synth import make_synth

        self.output = PygameOutput(buffer=KEY_BUFFER)  # raises PlaybackError without a device
        pygame = self.pygame = self.output.pygame
        pygame.mixer.set_num_channels(STREAM_CHANNELS + KEY_CHANNELS)
        self.synth = make_synth(synth, soundfont)
        self.name = self.synth.name
        self.timeline = Timeline()
        self.renderer = BlockRenderer(self.timeline, self.synth)
        self.keys = KeySounds(pygame, lambda: make_synth(self.name, soundfont),
                              [pygame.mixer.Channel(STREAM_CHANNELS + i) for i in range(KEY_CHANNELS)])
        self.scheduled = []  # heap of (start, n, end, pitch, velocity, program, tag)
        self.counter = itertools.count()
        self.pushed = []  # (end, channel, pitch, tag) of notes handed to the renderer
        self.anchor = None  # (stream seconds, monotonic seconds) of the block playing now
        self.metronome = True
        self.clicked_until = 0.0
        self.tempo_map = None

    # the clock
    def now(self) -> float:
        """Stream seconds being heard now: the start of the block playing, plus the time since."""
        from ..playback import QUEUED_BLOCK
        from ..synth import SAMPLE_RATE

        if self.anchor is None:
            return 0.0
        start, wall = self.anchor
        return start + min(QUEUED_BLOCK / SAMPLE_RATE, time.monotonic() - wall)

    def horizon(self) -> float:
        """The earliest time a new note can still be placed exactly (the stream renders ahead)."""
        return self.renderer.now

    # what plays
    def schedule(self, notes, tag) -> None:
        for start, end, pitch, velocity, program in notes:
            heapq.heappush(self.scheduled, (start, next(self.counter), end, pitch, velocity, program, tag))

    def cancel(self, tag) -> None:
        """Stop a part: unplayed notes are dropped, sounding ones released now."""
        self.scheduled = [s for s in self.scheduled if s[6] is not tag]
        heapq.heapify(self.scheduled)
        now = self.renderer.now
        with self.timeline.lock:
            for end, channel, pitch, note_tag in self.pushed:
                if note_tag is tag and end > now:
                    self.timeline._push(now, "off", channel, pitch, 0)
        self.pushed = [p for p in self.pushed if p[3] is not tag]

    def busy_until(self) -> float:
        return max([s[2] for s in self.scheduled] + [p[0] for p in self.pushed] + [0.0])

    def feed(self) -> None:
        """Keep two blocks queued on the stream channel."""
        from ..playback import QUEUED_BLOCK
        from ..synth import SAMPLE_RATE

        if self.output.feed(self):  # the block before the one just queued is playing from about now
            self.anchor = (self.renderer.now - 2 * QUEUED_BLOCK / SAMPLE_RATE, time.monotonic())

    def render(self, frames: int) -> np.ndarray:
        """One block, after handing the renderer the notes and clicks due in it."""
        from ..synth import SAMPLE_RATE

        block_end = self.renderer.now + frames / SAMPLE_RATE
        self._hand_over(block_end)
        self._clicks(block_end)
        return self.renderer.render(frames)

    def _hand_over(self, until: float) -> None:
        while self.scheduled and self.scheduled[0][0] < until:
            start, _, end, pitch, velocity, program, tag = heapq.heappop(self.scheduled)
            self.timeline.add_note(start, end, pitch, velocity, program, shown=False)
            self.pushed.append((end, self.timeline.channel_for(program), pitch, tag))
        now = self.renderer.now
        self.pushed = [p for p in self.pushed if p[0] > now]

    def _clicks(self, until: float) -> None:
        start = max(self.clicked_until, self.renderer.now)
        if self.metronome and self.tempo_map is not None:
            for when, bar in self.tempo_map.beats(start, until):
                self.timeline.add_note(when, when + 0.05, CLICK_BAR if bar else CLICK_BEAT, 100 if bar else 75,
                                       DRUMS, shown=False)
        self.clicked_until = max(self.clicked_until, until)

    def key_on(self, pitch, velocity, program=0):
        self.keys.on(pitch, velocity, program)

    def key_off(self, pitch):
        self.keys.off(pitch)

    def close(self):
        self.synth.all_off()
        self.pygame.mixer.stop()
        self.output.close()


class NullAudio:
    """No audio device: the session goes on silently, on the wall clock."""

    name = "none"

    def __init__(self):
        self.t0 = time.monotonic()
        self.metronome = False
        self.tempo_map = None
        self.keys = None

    def now(self):
        return time.monotonic() - self.t0

    horizon = now

    def schedule(self, notes, tag):
        pass

    def cancel(self, tag):
        pass

    def busy_until(self):
        return 0.0

    def feed(self):
        pass

    def key_on(self, pitch, velocity, program=0):
        pass

    def key_off(self, pitch):
        pass

    def close(self):
        pass


def open_audio(synth: str, soundfont, messages: list):
    from ..playback import PlaybackError
    from ..synth import SynthError

    try:
        return Audio(synth, soundfont)
    except (PlaybackError, SynthError) as exc:
        messages.append(f"{one_line(exc).split(';')[0]}: no sound, the session goes on (save still writes a WAV)")
        return NullAudio()
