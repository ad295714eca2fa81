"""Hostile and absurd MIDI files, built byte by byte (so nothing refuses to write them)."""
from __future__ import annotations

import struct


def vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def chunk(kind: bytes, body: bytes, claimed: int | None = None) -> bytes:
    return kind + struct.pack(">I", len(body) if claimed is None else claimed) + body


def header(fmt=1, ntracks=1, division=480) -> bytes:
    return chunk(b"MThd", struct.pack(">HHH", fmt, ntracks, division & 0xFFFF))


def track(events: list[tuple[int, bytes]], end=True) -> bytes:
    body = b"".join(vlq(dt) + ev for dt, ev in events)
    if end:
        body += b"\x00\xff\x2f\x00"
    return chunk(b"MTrk", body)


def on(pitch=60, vel=90, ch=0):
    return bytes([0x90 | ch, pitch, vel])


def off(pitch=60, ch=0):
    return bytes([0x80 | ch, pitch, 0])


def tempo(us: int):
    return b"\xff\x51\x03" + us.to_bytes(3, "big")


def melody(n=16, step=240):
    events = []
    for i in range(n):
        events += [(0 if i == 0 else step, on(60 + i % 12)), (step, off(60 + i % 12))]
    return events


def name(text: bytes):
    return b"\xff\x03" + vlq(len(text)) + text


def cases() -> dict[str, bytes]:
    good = header() + track(melody())
    running = [(0, on(60)), (240, bytes([62, 90])), (240, bytes([60, 0])), (240, bytes([62, 0]))] + melody()
    many_tracks = header(1, 2000) + b"".join(track(melody(2)) for _ in range(2000))
    long_file = header(1, 1) + track([(0 if i == 0 else 1, on(40 + i % 40)) if i % 2 == 0 else (1, off(40 + (i - 1) % 40))
                                      for i in range(240_000)])
    return {
        "good.mid": good,
        "empty.mid": b"",
        "text.mid": b"this is not a midi file at all\n" * 10,
        "random.mid": bytes((i * 7919 + 13) % 256 for i in range(3000)),
        "truncated_header.mid": good[:10],
        "truncated_track.mid": good[: len(good) // 2],
        "more_tracks_claimed.mid": header(1, 9) + track(melody()),
        "chunk_length_lies.mid": header() + chunk(b"MTrk", track(melody())[8:], claimed=10**9),
        "running_status.mid": header() + track(running),
        "smpte.mid": header(1, 1, 0xE728) + track(melody()),
        "type2.mid": header(2, 2) + track(melody()) + track(melody()),
        "zero_division.mid": header(1, 1, 0) + track(melody()),
        "no_notes.mid": header() + track([(0, tempo(500000))]),
        "drums_only.mid": header() + track([(0, on(36, 100, 9)), (120, off(36, 9))] * 20),
        "never_off.mid": header() + track([(0, on(60)), (240, on(64)), (240, on(67))] + melody()),
        "zero_velocity_off.mid": header() + track([(0 if i == 0 else 240, on(60 + i % 5, 80 if i % 2 == 0 else 0)) for i in range(40)]),
        "same_pitch_overlaps.mid": header() + track([(0, on(60)), (120, on(60)), (120, off(60)), (120, off(60))] + melody()),
        "tempo_zero.mid": header() + track([(0, tempo(0))] + melody()),
        "tempo_huge.mid": header() + track([(0, tempo(0xFFFFFF))] + melody()),
        "tick_2_28.mid": header() + track(melody(8) + [(2**28 - 1, on(72)), (240, off(72))]),
        "many_tracks.mid": many_tracks,
        "long_120k_notes.mid": long_file,
        "non_utf8_names.mid": header() + track([(0, name(b"\xff\xfe\xc3\x28 caf\xe9"))] + melody()),
        "riff_wrapped.mid": b"RIFF" + struct.pack("<I", len(good) + 4) + b"RMID" + good,
        "unknown_chunk.mid": header(1, 2) + chunk(b"XFIH", b"\x00" * 16) + track(melody()),
    }


def write_all(folder) -> dict[str, str]:
    import os

    paths = {}
    for filename, data in cases().items():
        path = os.path.join(folder, filename)
        with open(path, "wb") as fh:
            fh.write(data)
        paths[filename] = path
    return paths
