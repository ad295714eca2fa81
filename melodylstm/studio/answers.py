"""The studio's answers: each one an `AnswerJob`, sampled in a `SamplerProcess` (a
`SamplerThread` where no process can start), and an `Answerer` that decides when to ask (after
a pause, on Enter, for a loaded file), places the notes on the session's clock as they arrive,
hands them to the audio stream and takes them back when you play on."""
from __future__ import annotations

import collections
import itertools
import os
import secrets
import signal
import threading
import time

from ..config import CONTINUE_TEMPERATURE
from ..midi import Song
from ..options import one_line
from .session import Placement

SPECULATE = 0.5  # start sampling this long before a pause ends (dropped if you play on)
COMMIT_LEAD = 0.25  # hand an answer to the stream this long before it is due (> its render-ahead)
MARGIN_S = 0.01  # an as-soon-as-possible answer starts this far past the stream's render-ahead


class Cancelled(Exception):
    pass


def sample_answer(generator, primer: Song, kwargs: dict, seed: int, send, cancelled) -> None:
    """Sample one answer, reporting through send(kind, payload): ("note", note) as each note is
    complete, then ("done", notes the stream missed), ("failed", reason) or ("cancelled", None).
    `cancelled()` is asked at every note."""
    streamed = set()

    def on_note(note):
        if cancelled():
            raise Cancelled()
        note = tuple(int(x) for x in note)
        streamed.add(note)
        send("note", note)

    try:
        if cancelled():
            raise Cancelled()
        result = generator.continue_(primer, seed=seed, on_note=on_note, **kwargs)[0]
        send("done", [tuple(n) for n in result.notes.notes.tolist() if tuple(n) not in streamed])
    except Cancelled:
        send("cancelled", None)
    except Exception as exc:  # noqa: BLE001 - reported in the status line, never a traceback
        send("failed", one_line(exc))


def _sampler_process(checkpoint, conn, cancelled_up_to) -> None:
    """The sampler process: loads the model once, then answers requests until told to quit."""
    from threadpoolctl import threadpool_limits

    from ..generate import Generator

    if hasattr(os, "nice"):
        os.nice(4)  # when both want the CPU, the window (keys, sound, drawing) goes first
    try:
        generator = Generator.load(checkpoint)
    except Exception as exc:  # noqa: BLE001 - the window says it
        conn.send(("failed", None, f"the sampler could not load the model: {one_line(exc)}"))
        return
    with threadpool_limits(1, user_api="blas"):  # one core for sampling, the other for sound and drawing
        while True:
            try:
                request = conn.recv()
            except (EOFError, OSError):
                return
            if request[0] == "quit":
                return
            _, job_id, primer, kwargs, seed = request
            sample_answer(generator, primer, kwargs, seed, lambda kind, payload: conn.send((kind, job_id, payload)),
                          lambda: cancelled_up_to.value >= job_id)


class AnswerJob:
    """One answer being sampled. Notes arrive in `incoming` (model steps) as the sampler
    completes them; the window places and plays them."""

    def __init__(self, primer: Song, crop: int, kwargs: dict, seed: int, target: float | None,
                 in_place: bool = False, mode: str = "now"):
        self.primer, self.crop, self.kwargs, self.seed = primer, crop, kwargs, seed
        self.target = target  # seconds the answer should start (None: as soon as it can)
        self.in_place, self.mode = in_place, mode
        self.incoming = collections.deque()
        self.state = "sampling"  # -> done, failed, cancelled
        self.error = None
        self.part = self.placement = self.origin = None  # once committed
        self.requested = None
        self.service = None

    def report(self, kind: str, payload) -> None:
        if self.state == "cancelled":
            return  # whatever the sampler still says
        if kind in ("note", "done"):
            self.incoming.extend([payload] if kind == "note" else payload)
        if kind != "note":
            self.state = kind
            self.error = payload if kind == "failed" else None

    def take(self) -> list:
        out = []
        while self.incoming:
            out.append(self.incoming.popleft())
        return out

    def cancel(self) -> None:
        if self.state == "sampling" and self.service is not None:
            self.service.cancel(self)


class SamplerProcess:
    """Answers are sampled in a child process, so the window's process keeps its GIL: with a
    sampler thread instead, the loop waited 0.1-0.2 s for the GIL while an answer was sampled
    on a busy 2-core machine, and keys and the stream waited with it."""

    def __init__(self, checkpoint):
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # no fork of a process that runs SDL threads
        self.conn, child = context.Pipe()
        self.cancelled_up_to = context.Value("q", -1, lock=False)
        self.process = context.Process(target=_sampler_process, args=(checkpoint, child, self.cancelled_up_to),
                                       daemon=True, name="melodylstm-sampler")
        ignore = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited: Ctrl-C is the window's to handle
        try:
            self.process.start()
        finally:
            signal.signal(signal.SIGINT, ignore)
        child.close()
        self.jobs = {}
        self.ids = itertools.count()
        self.error = None

    def submit(self, job: AnswerJob) -> None:
        job.service, job.id = self, next(self.ids)
        if self.error is not None or not self.process.is_alive():
            job.report("failed", self.error or "the sampler process has stopped")
            return
        self.jobs[job.id] = job
        self.conn.send(("answer", job.id, job.primer, job.kwargs, job.seed))

    def cancel(self, job: AnswerJob) -> None:
        self.cancelled_up_to.value = max(self.cancelled_up_to.value, job.id)
        self.jobs.pop(job.id, None)
        job.state = "cancelled"

    def poll(self) -> None:
        """Hand arrived notes to their jobs (called by the window's loop; never blocks)."""
        try:
            while self.conn.poll():
                kind, job_id, payload = self.conn.recv()
                if job_id is None:  # the model did not load
                    self.error = payload
                    for job in self.jobs.values():
                        job.report("failed", payload)
                    self.jobs.clear()
                    continue
                job = self.jobs.get(job_id)
                if job is not None:
                    job.report(kind, payload)
                    if kind != "note":
                        del self.jobs[job_id]
        except (EOFError, OSError):
            self.error = "the sampler process has stopped"
            for job in self.jobs.values():
                job.report("failed", self.error)
            self.jobs.clear()

    def close(self) -> None:
        try:
            self.conn.send(("quit",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=1.0)
        if self.process.is_alive():
            self.process.terminate()


class SamplerThread:
    """The same in a worker thread, when no process can be started (and for the Python API)."""

    lock = threading.Lock()

    def __init__(self, generator):
        self.generator = generator

    def submit(self, job: AnswerJob) -> None:
        job.service = self
        job.cancelled = False

        def run():
            with self.lock:
                sample_answer(self.generator, job.primer, job.kwargs, job.seed, job.report, lambda: job.cancelled)

        threading.Thread(target=run, daemon=True, name="melodylstm-answer").start()

    def cancel(self, job: AnswerJob) -> None:
        job.cancelled = True
        job.state = "cancelled"

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass


def supported_controls(generator) -> set:
    """The controls the checkpoint was trained with (model_config.control_names: key, style, ...);
    the studio's key and style reach the model only where it has them."""
    config = getattr(getattr(generator, "checkpoint", None), "model_config", None)
    return set(config.control_names) if config is not None else set()


def check_controls(generator, key=None, style=None) -> list[str]:
    """The studio's --key and --style checked against the model before the window opens, as
    every answer would check them: ValueError (one line) for a value the model refuses; for a
    control the model lacks, the message that it is left out."""
    supported, messages, request = supported_controls(generator), [], {}
    for name, value in (("key", key), ("style", style)):
        if value is None:
            continue
        if name in supported:
            request[name] = value
        else:
            messages.append(f"this model has no {name} control: answering without {name} {value}")
    if request:
        key = request.get("key")
        try:
            generator._control_request(None if key == "auto" else key, request.get("style"), None, None, False,
                                       auto_key=key == "auto")
        except ValueError as exc:
            if "--strict-key" in str(exc):  # a flag of generate's: the studio has none
                raise ValueError(f"--key {key}: the studio keeps answers in major and minor keys "
                                 "(e.g. D:minor, F#) or auto") from None
            raise
    return messages


def available_styles(generator) -> list:
    for owner in (generator, getattr(generator, "checkpoint", None), getattr(generator, "tok", None)):
        styles = getattr(owner, "styles", None)
        if styles:
            return list(styles)
    return []


class Answerer:
    """The window's answers: one job at a time, asked for after a pause (sampling starts a little
    before it ends), on Enter, again (B) or for a loaded file; its notes are placed and played as
    they arrive, and withdrawn if you play on before the answer begins."""

    def __init__(self, session, generator, audio, sampler, say, events, bars=2, temperature=CONTINUE_TEMPERATURE,
                 key=None, style=None, pause=None, seed=None, gen_options=None):
        self.session, self.gen, self.audio, self.sampler = session, generator, audio, sampler
        self.say, self.events = say, events  # the window's status line and its event log
        self.bars, self.temperature, self.key, self.style, self.pause = bars, temperature, key, style, pause
        self.gen_options = dict(gen_options or {})
        self.seeds = itertools.count(seed) if seed is not None else None  # --seed 5: answers use 5, 6, 7 ...
        self.job = None
        self.tried = None  # the phrase last answered (or tried): a pause answers it once
        self.count = 0  # answers placed in the session (less those taken back)

    def controls(self) -> dict:
        """continue_'s keyword arguments; controls the model lacks are left out, with a message."""
        kwargs = {"bars": self.bars, "temperature": self.temperature, **self.gen_options}
        supported = supported_controls(self.gen)
        for name, value in (("key", self.key), ("style", self.style)):
            if value is None:
                continue
            if name in supported:
                kwargs[name] = value
            else:
                self.say(f"this model has no {name} control: answering without {name} {value}", error=True)
        return kwargs

    def start(self, parts=None, target=None, in_place=False, mode="now") -> bool:
        try:
            primer, crop = self.session.primer(parts)
        except ValueError as exc:
            self.say(one_line(exc), error=True)
            return False
        if self.job is not None:
            self.job.cancel()
        self.tried = self.marker()
        seed = next(self.seeds) if self.seeds is not None else secrets.randbelow(2**31)
        self.job = AnswerJob(primer, crop, self.controls(), seed, target, in_place, mode)
        self.job.requested = self.audio.now()
        self.sampler.submit(self.job)
        self.events.append((time.monotonic(), self.job.requested, "answer requested", target))
        if mode != "pause":
            self.say("answering...", quiet=True)
        return True

    def marker(self):
        """The last part and its length: a phrase is answered once, until it grows."""
        last = self.session.last_part()
        return (id(last), len(last.notes)) if last else None

    def pause_seconds(self) -> float:
        return self.pause if self.pause is not None else self.session.tempo_map.bar_seconds()

    def update(self) -> None:
        """Called by the window's loop: start, place, feed, finish or withdraw the answer."""
        now, session, job = self.audio.now(), self.session, self.job
        if job is None:
            if session.unanswered() and not session.held and self.marker() != self.tried:
                target = session.pause_end(self.pause_seconds())
                if now >= target - SPECULATE:
                    self.start(target=target, mode="pause")
            return
        played_since = session.last_note_on is not None and session.last_note_on > job.requested
        if job.part is None:
            if job.mode == "pause" and played_since:  # you went on playing: not the end of a phrase
                job.cancel()
                self.job, self.tried = None, None
            elif job.state == "failed":
                self.fail(job)
            elif job.state in ("done", "cancelled") and not job.incoming:
                if job.state == "done":
                    self.say("the model answered with silence (try another temperature or seed)", error=True)
                self.job = None
            elif job.incoming and (job.target is None or now >= job.target - COMMIT_LEAD):
                self.commit(job)
            return
        if job.mode == "pause" and played_since and now < job.origin:
            self.retract(job)  # you played before the answer began: it gives way
            return
        self.receive(job)
        if job.state != "sampling" and not job.incoming:
            if job.state == "failed":
                self.fail(job)
                return
            self.job = None
            self.say(f"answer {self.count}: {len(job.part.notes)} notes, seed {job.seed}", quiet=True)

    def commit(self, job) -> None:
        """The answer's place is fixed: on its target (the beat that ends the pause), in place
        after a loaded file, or as soon as the stream allows."""
        session = self.session
        earliest = self.audio.horizon() + MARGIN_S
        first = job.incoming[0]
        placement = None
        if job.in_place:
            placement = Placement(session.tempo_map, session.resolution, job.crop)
            if placement.place(first)[0] < earliest:
                placement = None
        if placement is None:
            origin = job.target if job.target is not None and job.target >= earliest else \
                session.tempo_map.next_step(earliest, session.resolution)
            placement = Placement(session.tempo_map, session.resolution, job.crop, origin)
        job.placement = placement
        job.origin = placement.place(first)[0]
        job.part = session.begin_answer(job.seed)
        self.count += 1
        self.events.append((time.monotonic(), job.origin, "answer placed", job.target))
        self.say(f"answer {self.count} (seed {job.seed})", quiet=True)
        self.receive(job)

    def receive(self, job) -> None:
        notes = job.placement.place_all(job.take())
        if notes:
            self.session.extend_answer(job.part, notes)
            self.audio.schedule(notes, job.part)

    def retract(self, job) -> None:
        job.cancel()
        self.audio.cancel(job.part)
        self.session.remove(job.part)
        self.count -= 1
        self.job, self.tried = None, None

    def fail(self, job) -> None:
        self.say(f"the model could not answer: {job.error}", error=True)
        if job.part is not None and not job.part.notes:
            self.session.remove(job.part)
        self.job = None

    def now(self) -> None:
        """Enter: answer the whole session now."""
        if self.job is not None and self.job.part is not None and self.job.state == "sampling":
            self.say("the model is still answering", error=True)
            return
        self.start(target=None, mode="now")

    def again(self) -> None:
        """Re-sample the last answer with a new seed, in its stead."""
        last = self.session.last_part()
        if last is None or last.kind != "answer":
            self.say("no answer to replace: the last part is yours (Backspace undoes it)", error=True)
            return
        self.cancel()
        self.audio.cancel(last)
        self.session.remove(last)
        self.count -= 1
        self.start(target=None, mode="again")

    def cancel(self) -> None:
        """Drop the job in progress (notes already placed stay)."""
        if self.job is not None:
            self.job.cancel()
            self.job = None

    def cancel_unplaced(self) -> bool:
        """Drop a job none of whose notes are placed yet (undo takes that back first)."""
        if self.job is None or self.job.part is not None:
            return False
        self.cancel()
        return True

    def undone(self, part) -> None:
        """A part the session's undo removed: silence it, and do not answer straight back."""
        if self.job is not None and self.job.part is part:
            self.cancel()
        self.audio.cancel(part)
        if part.kind == "answer":
            self.count -= 1
        self.tried = self.marker()

    def stop(self) -> None:
        """Esc: every answer falls silent, the one being sampled is dropped."""
        for part in self.session.parts:
            if part.kind == "answer":
                self.audio.cancel(part)
        self.cancel()

    def busy(self) -> bool:
        """An answer is on its way (asked for and not yet placed, or still sampling)."""
        return self.job is not None and (self.job.part is None or self.job.state == "sampling")
