"""Rebuild datasets/tunes/ from two public-domain fiddle-tune collections in music21's corpus:
Ryan's Mammoth Collection (1883, folder ryansMammoth/) and O'Neill's Music of Ireland
(1903, folder oneills1850/).

    pip install music21 && python datasets/build_tunes.py [--jobs 2]

One MIDI file per tune, one melodic line each: repeats written out, pickups padded so
that the MIDI bar lines fall on the tune's bar lines, chord symbols dropped.
Deterministic: the same music21 version writes byte-identical files.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import re
import shutil
import sys
import time
import unicodedata
from collections import Counter
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path

OUT = Path(__file__).resolve().parent / "tunes"
BEATS_PER_MINUTE = 120  # default tempo: one beat of the metre (music21's beatDuration) per half second
MIN_NOTES = 8
# "(3{F}EDE": music21 counts a grace note that opens a tuplet as one of the tuplet's notes,
# which overfills the bar; "{F}(3EDE" is the same music (a few O'Neill's transcriptions)
GRACE_IN_TUPLET = re.compile(r"\((\d)(\{[^}]*\})")
# "Q:1/4 =50": music21 reads 250 quarters a minute; "Q:1/4=50" it reads right (one Ryan's tune)
SPACED_TEMPO = re.compile(r"(?m)^(Q:\s*\d+/\d+)\s+=\s*")


# ------------------------------------------------------------------ one tune

def convert_score(score) -> tuple[bytes, dict]:
    """MIDI bytes of one tune (a music21 Score or Part) and what was done to it.

    Raises on a tune music21 cannot handle; the caller counts it as failed.
    """
    from music21 import midi, stream

    part = _melody(score)
    info = {"repeats": "none"}
    if _has_repeats(part):
        part, info["repeats"], implied = _expand(part)
        if implied:
            info["implied start repeats added"] = implied
    line, more = _flat_line(part)
    info.update(more)
    out = stream.Score()
    out.insert(0, line)
    mf = midi.translate.streamToMidiFile(out)
    info["notes"] = sum(1 for track in mf.tracks for ev in track.events if ev.isNoteOn())
    return mf.writestr(), info


def _expand(part):
    """(part, what happened, implied start repeats added): repeats written out where music21 can."""
    marked = _add_implied_start_repeats(part)
    if marked:
        try:
            return part.expandRepeats(), "expanded", len(marked)
        except Exception:  # noqa: BLE001 - try again as music21 reads the repeats by itself
            for m, old in marked:
                m.leftBarline = old
    try:
        return part.expandRepeats(), "expanded", 0
    except Exception as exc:  # noqa: BLE001 - keep the tune as written, and count it
        return part, f"not expanded ({type(exc).__name__}: {str(exc)[:80]})", 0


def _melody(score):
    """The tune's first part (ABC voices beyond the first would be a second line)."""
    from music21 import stream

    if isinstance(score, stream.Score):
        if not score.parts:
            raise ValueError("no parts")
        return score.parts[0]
    return score


def _has_repeats(part) -> bool:
    from music21 import bar, spanner

    return bool(part.recurse().getElementsByClass((bar.Repeat, spanner.RepeatBracket)))


def _add_implied_start_repeats(part) -> list:
    """Mark where a repeated section starts when the ABC leaves it implicit.

    Returns [(measure, its left barline before)] for the measures marked.

    In fiddle-tune ABC a part after the first usually ends with ':|' but has no '|:':
    it repeats back to the previous ':|' (AABB). music21 would go back to the start of the
    tune (AABAAB), so a start repeat is put on the first bar after the previous ':|' (after
    its first and second endings).
    """
    from music21 import bar, spanner, stream

    measures = list(part.getElementsByClass(stream.Measure))
    in_ending = {id(m) for rb in part.spanners.getElementsByClass(spanner.RepeatBracket)
                 for m in rb.getSpannedElements()}
    added, pending = [], None  # pending: index of the first bar after the last ':|'
    for i, m in enumerate(measures):
        left, right = m.leftBarline, m.rightBarline
        if isinstance(left, bar.Repeat) and left.direction == "start":
            pending = None
        if isinstance(right, bar.Repeat) and right.direction == "end":
            if pending is not None and pending <= i:
                added.append((measures[pending], measures[pending].leftBarline))
                measures[pending].leftBarline = bar.Repeat(direction="start")
            pending = i + 1
            while pending < len(measures) and id(measures[pending]) in in_ending:
                pending += 1
    return added


def _q(x) -> Fraction:
    return Fraction(x).limit_denominator(10_000)


def _flat_line(part):
    """A measure-less Part: one note at a time, the pickup padded, tempo and metre at 0.

    Returns the Part and a dict: pickup (quarters), pad (quarters), tempo, metres, and the
    check: misaligned, the full bars that do not start on a MIDI bar line or do not start on a
    sixteenth-note position (after a bar of tuplet or 32nd-note length).
    """
    from music21 import chord, harmony, key, meter, note, stream, tempo, tie

    measures = list(part.getElementsByClass(stream.Measure))  # none if the ABC has < 2 plain bar lines
    first_ts = part.recurse().getElementsByClass(meter.TimeSignature).first()
    if first_ts is None:
        raise ValueError("no time signature")

    # the pickup: a first measure with music, shorter than the bar of its time signature
    bar0 = _q(first_ts.barDuration.quarterLength)
    first_len = _q(measures[0].highestTime) if measures else bar0
    pickup = first_len if 0 < first_len < bar0 else Fraction(0)
    pad = bar0 - pickup if pickup else Fraction(0)

    # the metre map, from the measures: a time signature where the metre changes (a repeated
    # section brings copies of unchanged ones), and where a full bar would start off the bar
    # lines (a short bar mid-tune, e.g. a part's pickup after a complete bar, or a
    # transcription slip), one for the short bar so that the grid follows the score's bar lines
    events = [(Fraction(0), first_ts.ratioString)]
    bars, ts, irregular = [], first_ts, 0
    for m in measures:
        ts = m.timeSignature or ts
        start, length, bar = _q(part.elementOffset(m)) + pad, _q(m.highestTime), _q(ts.barDuration.quarterLength)
        bars.append((start, length, bar))
        change = ts.ratioString != events[-1][1]
        if start > 0 and (change or length == bar) and not _on_grid(start, _grid(events)):
            line_before = _last_bar_line(start, _grid(events))
            short = _metre_of(start - line_before)
            if short is not None:  # else the check below finds the bar off the grid
                if events[-1][0] == line_before:
                    events.pop()
                if events[-1][1] != short:
                    events.append((line_before, short))
                irregular += 1
                change = ts.ratioString != events[-1][1]
        if change:
            events.append((start, ts.ratioString))

    line = stream.Part()
    notes, counts = [], Counter()
    tempos, last_key = [], None
    for el in part.flatten():
        offset = _q(el.offset)
        at = offset + pad if offset > 0 or isinstance(el, (note.Note, chord.Chord)) else Fraction(0)
        if isinstance(el, harmony.Harmony):  # chord symbols: music21 would sound them as chords
            counts["chord symbols dropped"] += 1
        elif isinstance(el, (note.Note, chord.Chord)):
            if el.duration.isGrace:
                counts["grace notes dropped"] += 1
                continue
            if el.duration.quarterLength == 0:
                counts["zero-length notes dropped"] += 1
                continue
            if isinstance(el, chord.Chord):
                if not el.pitches:
                    continue
                top = note.Note(max(el.pitches, key=lambda p: p.ps))
                top.duration = el.duration
                top.tie = el.tie
                counts["chords reduced to the top note"] += 1
                el = top
            notes.append((at, el))
        elif isinstance(el, tempo.MetronomeMark):
            tempos.append((at, el))
        elif isinstance(el, key.KeySignature):
            if last_key is None or el.sharps != last_key.sharps:
                line.insert(float(at), key.KeySignature(el.sharps))
                last_key = el

    # one note at a time: a note that starts with or under the previous one wins (highest pitch on ties)
    notes.sort(key=lambda item: (item[0], -item[1].pitch.ps))
    kept = []
    for at, n in notes:
        if kept and kept[-1][0] == at:
            counts["simultaneous notes dropped"] += 1
            continue
        if kept:
            prev_at, prev = kept[-1]
            if prev_at + _q(prev.duration.quarterLength) > at:
                prev.duration.quarterLength = float(at - prev_at)
                counts["overlapping notes shortened"] += 1
        kept.append((at, n))
    # a tie joins two notes of one pitch, one right after the other: ABC transcriptions also
    # write '-' between different notes (a3-b), which music21 would merge into one note (a4)
    for (a_at, a), (b_at, b) in zip(kept, kept[1:] + [(None, None)]):
        joined = (b is not None and a.tie is not None and a.tie.type in ("start", "continue")
                  and b.pitch.ps == a.pitch.ps and a_at + _q(a.duration.quarterLength) == b_at)
        if a.tie is not None and a.tie.type in ("start", "continue") and not joined:
            a.tie = tie.Tie("stop") if a.tie.type == "continue" else None
            counts["ties between different notes removed"] += 1
        if b is not None and b.tie is not None and b.tie.type in ("stop", "continue") and not joined:
            b.tie = tie.Tie("start") if b.tie.type == "continue" else None
    for at, n in kept:
        line.insert(float(at), n)

    for at, ratio in events:
        line.insert(float(at), meter.TimeSignature(ratio))

    if tempos:
        last = None
        for at, mm in sorted(tempos, key=lambda item: item[0]):
            if mm.getQuarterBPM() != last:
                line.insert(float(at), copy.deepcopy(mm))
                last = mm.getQuarterBPM()
        tempo_text = f"Q: quarter={tempos[0][1].getQuarterBPM():g}"
    else:
        beat = first_ts.beatDuration
        line.insert(0, tempo.MetronomeMark(number=BEATS_PER_MINUTE, referent=beat))
        tempo_text = f"default {'dotted ' * beat.dots}{beat.type}={BEATS_PER_MINUTE}"

    # check: every full bar starts on a bar line of the MIDI's time-signature map
    grid = _grid(events)
    misaligned = sum(1 for start, length, bar in bars
                     if length == bar and (not _on_grid(start, grid) or (start * 4).denominator != 1))
    if irregular:
        counts["short bars given their own time signature"] = irregular
    info = {
        "pickup": pickup, "pad": pad, "tempo": tempo_text,
        "metres": [ratio for _, ratio in events], "misaligned": misaligned, **counts,
    }
    return line, info


def _grid(events):
    """[(time, bar length)] of a metre map [(time, 'n/d')]."""
    return [(at, Fraction(4 * int(r.split("/")[0]), int(r.split("/")[1]))) for at, r in events]


def _last_bar_line(t: Fraction, grid) -> Fraction:
    """The last bar line at or before t. Bars run from each time signature to the next, as the
    project's reader (melodylstm.midi.BarGrid) and the tokenizer's BAR tokens count them."""
    start, length = grid[0]
    for s, bar in grid:
        if s <= t:
            start, length = s, bar
    return start + (t - start) // length * length


def _on_grid(t: Fraction, grid) -> bool:
    return _last_bar_line(t, grid) == t


def _metre_of(length: Fraction) -> str | None:
    """A time signature for a bar of `length` quarters (3/8 for 1.5), None if none fits.

    Down to sixteenths only: a bar of 32nd-note length would put the next bar line between
    two steps of the tokenizer's grid (12 steps per quarter), where no BAR token can go.
    """
    for den in (4, 8, 16):
        num = length * den / 4
        if num.denominator == 1 and 1 <= num <= 64:
            return f"{num.numerator}/{den}"
    return None


# ------------------------------------------------------------------ naming

def slug(title: str, limit: int = 48) -> str:
    text = unicodedata.normalize("NFKD", title or "").encode("ascii", "ignore").decode()
    text = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(text) > limit:
        text = text[:limit].rsplit("-", 1)[0]
    return text or "untitled"


def oneills_headers(path: str) -> list[tuple[int, str]]:
    """(O'Neill's number, title) of every tune in an ABC file, in file order.

    The number is the one in the B: field ("O'Neill's 700"), else the X: number: a few X:
    fields are wrong (X: 800 for No. 700, X: 0 for No. 1646, X: 1781 for No. 1780).
    """
    text = Path(path).read_text(encoding="utf-8")
    heads = []
    for chunk in re.split(r"(?m)^(?=X:)", text)[1:]:
        x = int(re.match(r"X:\s*(\d+)", chunk).group(1))
        b = re.search(r"(?m)^B:[^\n\d]*(\d+)", chunk)
        t = re.search(r"(?m)^T:\s*(.*)", chunk)
        heads.append((int(b.group(1)) if b else x, t.group(1).strip() if t else ""))
    return heads


# ------------------------------------------------------------------ one source file

def fix_abc(text: str) -> str:
    """ABC text with two constructs that music21 misreads rewritten."""
    text = GRACE_IN_TUPLET.sub(r"\2(\1", text)
    return SPACED_TEMPO.sub(r"\1=", text)


def parse_file(path: str) -> list:
    """The tunes (music21 Scores) of one ABC file of the corpus, in file order."""
    from music21 import converter, corpus, stream

    text = Path(path).read_text(encoding="utf-8")  # as music21 reads it
    fixed = fix_abc(text)
    parsed = corpus.parse(path) if fixed == text else converter.parse(fixed, format="abc")
    return list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]


def convert_file(path: str) -> list[tuple[str, str, object, dict]]:
    """[(key, file name, MIDI bytes or reason it was dropped, info)] for every tune in one ABC file.

    key names the tune across transcriptions (O'Neill's number), for the duplicate check.
    """
    collection = "ryans" if "ryansMammoth" in path else "oneills"
    stem = Path(path).stem
    try:
        scores = parse_file(path)
    except Exception as exc:  # noqa: BLE001
        name = f"{collection}-{stem}.mid"
        return [(name, name, f"conversion failed ({type(exc).__name__}: {str(exc)[:80]})", {})]
    if collection == "ryans":
        names = [f"ryans-{stem}.mid" if i == 0 else f"ryans-{stem}-{i + 1}.mid" for i in range(len(scores))]
        keys = names
    else:
        heads = oneills_headers(path)
        if len(heads) != len(scores):  # cannot pair headers with scores: fall back to music21's own
            heads = [(int(s.metadata.number or 0), s.metadata.title or "") for s in scores]
        names = [f"oneills-{num:04d}-{slug(title)}.mid" for num, title in heads]
        keys = [f"oneills-{num:04d}" for num, _ in heads]
    results = []
    for score, name, key in zip(scores, names, keys):
        try:
            data, info = convert_score(score)
        except Exception as exc:  # noqa: BLE001 - a tune that fails to convert is skipped, with its reason
            results.append((key, name, f"conversion failed ({type(exc).__name__}: {str(exc)[:80]})", {}))
            continue
        if info["notes"] < MIN_NOTES:
            data = f"fewer than {MIN_NOTES} notes ({info['notes']})"
        elif info["misaligned"]:
            data = (f"bar lines cannot follow the score ({info['misaligned']} bars start off the "
                    "MIDI bar lines or the 16th-note grid, after bars of tuplet or 32nd-note length)")
        results.append((key, name, data, info))
    return results


def sources() -> list[str]:
    from music21 import corpus

    paths = []
    for composer in ("ryansMammoth", "oneills1850"):
        paths += sorted(str(p) for p in corpus.getComposer(composer, fileExtensions=("abc",)))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    args = parser.parse_args()

    import music21

    started = time.time()
    paths = sources()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    found, written, did, dropped, log = Counter(), Counter(), Counter(), [], []
    notes = size = 0
    seen_bytes, seen_keys = {}, {}
    with Pool(max(1, args.jobs)) as pool:
        for results in pool.imap(convert_file, paths, chunksize=1):
            for key, name, result, info in results:
                collection = name.split("-")[0]
                found[collection] += 1
                if isinstance(result, str):
                    dropped.append((result.split(" (")[0], f"{name}: {result}"))
                    continue
                digest = hashlib.sha256(result).hexdigest()
                if key in seen_keys:  # O'Neill's: two transcriptions of one tune, keep the first
                    dropped.append(("second transcription of a tune", f"{name}: second transcription of {seen_keys[key]}"))
                    continue
                if digest in seen_bytes:
                    dropped.append(("duplicate (same MIDI bytes)", f"{name}: same MIDI bytes as {seen_bytes[digest]}"))
                    continue
                seen_keys[key] = seen_bytes[digest] = name
                (OUT / name).write_bytes(result)
                written[collection] += 1
                notes += info["notes"]
                size += len(result)
                did["repeats " + re.sub(r":.*", ")", info["repeats"])] += 1
                if info["repeats"].startswith("not"):
                    log.append(f"{name}: repeats {info['repeats']}")
                did["tempo " + ("from Q:" if info["tempo"].startswith("Q:") else info["tempo"])] += 1
                if info["pad"]:
                    did["pickup padded"] += 1
                if len(set(info["metres"])) > 1:
                    did["more than one metre"] += 1
                for k in info:
                    if k not in ("repeats", "pickup", "pad", "notes", "tempo", "metres", "misaligned"):
                        did[k] += 1
                if "chord symbols dropped" in info:
                    log.append(f"{name}: {info['chord symbols dropped']} chord symbols dropped")
    by_reason = Counter(reason for reason, _ in dropped)
    print(f"music21 {music21.__version__}: {sum(found.values())} tunes found "
          f"({', '.join(f'{k} {v}' for k, v in sorted(found.items()))})")
    print(f"wrote {sum(written.values())} files to {OUT} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(written.items()))}): "
          f"{notes:,} notes, {size / 1e6:.1f} MB")
    print(f"dropped {len(dropped)}: " + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())))
    print("tunes written, by what the build did to them:")
    for k, v in sorted(did.items()):
        print(f"  {v:5d}  {k}")
    print(f"took {time.time() - started:.0f} s")
    for line in log:
        print("  note", line, file=sys.stderr)
    for _, line in dropped:
        print("  dropped", line, file=sys.stderr)


if __name__ == "__main__":
    main()
