"""Dataset pipeline: scan a folder, tokenize in parallel with a content-hash cache, report what
was used and why files were skipped, and store the corpus as compact memory-mapped arrays
from which training windows are drawn (with transposition augmentation)."""
from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import controls as ctl
from .fileio import atomic_path, atomic_write_bytes
from .midi import MidiError, read_midi_bytes, MAX_FILE_BYTES
from .tokenizer import Tokenizer

# The bundled corpus (datasets/ beside the package, in a checkout) and the folders checkpoints
# record relative to it, such as the default model's datasets/bach_chorales
BUNDLED_DATASETS = Path(__file__).resolve().parent.parent / "datasets"
MIDI_SUFFIXES = (".mid", ".midi", ".smf", ".kar")
MIN_NOTES = 8  # fewer notes than this teach nothing: the file is skipped as "too short"
CACHE_MAGIC = b"MLTK2"  # tokens, then their controls (every column but style)
N_FILE_CONTROLS = len(ctl.COLUMNS) - 1  # computed per file; style, the last, comes from the folder


def default_cache_dir() -> Path:
    import platformdirs

    return Path(os.environ.get("MELODYLSTM_CACHE") or platformdirs.user_cache_dir("melodylstm"))


# ---------------------------------------------------------------- scanning

def find_midi_files(root) -> tuple[list[Path], list[dict]]:
    """All MIDI files below `root` (or `root` itself), sorted; plus entries that look like MIDI but
    cannot be used (directories named x.mid, unreadable folders). Symlinked folders are not
    followed, so symlink loops cannot trap the scan."""
    root = Path(root)
    if root.is_file():
        return [root], []
    if not root.is_dir():
        raise FileNotFoundError(f"no such file or folder: {root}")
    found, skipped = [], []

    def on_error(err):
        skipped.append({"path": str(err.filename), "reason": f"cannot read folder ({err.strerror})"})

    for folder, dirs, files in os.walk(root, onerror=on_error):
        dirs.sort()
        for name in dirs:
            if name.lower().endswith(MIDI_SUFFIXES):
                skipped.append({"path": str(Path(folder) / name), "reason": "is a directory"})
        for name in sorted(files):
            if name.lower().endswith(MIDI_SUFFIXES):
                found.append(Path(folder) / name)
    return found, skipped


# ---------------------------------------------------------------- one file

@dataclass
class FileResult:
    path: str
    content_hash: str = ""
    tokens: np.ndarray | None = None
    controls: np.ndarray | None = None  # (len(tokens), len(ctl.COLUMNS) - 1) uint8, see controls.py
    reason: str = ""  # why the file was skipped; empty when used
    notes: int = 0
    seconds: float = 0.0
    lost: dict = field(default_factory=dict)  # counts of notes changed by lossy rules
    cached: bool = False


def config_fingerprint(tokenizer: Tokenizer) -> str:
    key = tokenizer.to_json() + f"controls{ctl.CONTROLS_VERSION}" + ",".join(ctl.COLUMNS)  # a new column: a new cache
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def tokenize_bytes(data: bytes, tokenizer: Tokenizer, path: str) -> FileResult:
    result = FileResult(path)
    try:
        song = read_midi_bytes(data, tokenizer.config.resolution, path)
        tokens, kept, lost = tokenizer.tokenize(song)
    except MidiError as exc:
        result.reason = str(exc)
        return result
    result.notes, result.lost = len(kept.notes), lost
    if result.notes == 0:
        result.reason = "no notes" if len(song.notes) == 0 else "no notes left in the tokenizer's range"
        return result
    if result.notes < MIN_NOTES:
        result.reason = f"too short ({result.notes} notes, need {MIN_NOTES})"
        return result
    result.tokens = tokens
    result.controls = ctl.controls_for(kept, tokens, tokenizer)
    result.seconds = float(kept.seconds())
    return result


class TokenCache:
    """Per-file tokens keyed by file content hash + tokenizer config: one small binary file each
    (magic, JSON header length, JSON header, raw uint16 tokens)."""

    def __init__(self, root, tokenizer: Tokenizer):
        self.dir = Path(root) / "tokens" / config_fingerprint(tokenizer)

    def _path(self, content_hash: str) -> Path:
        return self.dir / content_hash[:2] / (content_hash + ".tok")

    def get(self, content_hash: str, path: str) -> FileResult | None:
        try:
            raw = self._path(content_hash).read_bytes()
        except OSError:
            return None
        try:
            if not raw.startswith(CACHE_MAGIC):
                return None
            (size,) = struct.unpack_from("<I", raw, len(CACHE_MAGIC))
            start = len(CACHE_MAGIC) + 4
            meta = json.loads(raw[start:start + size])
            result = FileResult(path, content_hash, reason=meta["reason"], notes=meta["notes"],
                                seconds=meta["seconds"], lost=meta["lost"], cached=True)
            if not result.reason:
                body = raw[start + size:]
                n = len(body) // (2 + N_FILE_CONTROLS)
                result.tokens = np.frombuffer(body, dtype=np.uint16, count=n)
                result.controls = np.frombuffer(body, dtype=np.uint8, offset=2 * n).reshape(n, N_FILE_CONTROLS)
            return result
        except (ValueError, KeyError, struct.error):
            return None  # a damaged entry is simply recomputed

    def put(self, result: FileResult) -> None:
        meta = json.dumps({"reason": result.reason, "notes": result.notes,
                           "seconds": result.seconds, "lost": result.lost}).encode()
        body = (result.tokens.astype("<u2").tobytes() + result.controls.astype(np.uint8).tobytes()
                if result.tokens is not None else b"")
        try:
            atomic_write_bytes(self._path(result.content_hash),
                               CACHE_MAGIC + struct.pack("<I", len(meta)) + meta + body)
        except OSError:
            pass  # a read-only or full cache only costs speed


def _process_file(args) -> FileResult:
    path, tokenizer, cache_root = args
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except IsADirectoryError:
        return FileResult(path, reason="is a directory")
    except OSError as exc:
        return FileResult(path, reason=f"cannot read ({exc.strerror or exc})")
    content_hash = hashlib.blake2b(data, digest_size=16).hexdigest()
    cache = TokenCache(cache_root, tokenizer) if cache_root else None
    if cache:
        hit = cache.get(content_hash, path)
        if hit is not None:
            return hit
    result = tokenize_bytes(data, tokenizer, path)
    result.content_hash = content_hash
    if cache:
        cache.put(result)
    return result


def tokenize_files(paths, tokenizer: Tokenizer, cache_root=None, jobs: int = 0, progress: bool = False):
    """Tokenize files in parallel (jobs=0: all cores). Cache hits are served in this process
    first, so a fully cached corpus never pays for starting worker processes."""
    paths = [str(p) for p in paths]
    results: dict[int, FileResult] = {}
    todo = []
    bar = _progress(len(paths), progress)
    for i, path in enumerate(paths):
        hit = _cached_only(path, tokenizer, cache_root) if cache_root else None
        if hit is not None:
            results[i] = hit
            bar.update(1)
        else:
            todo.append(i)
    jobs = jobs or os.cpu_count() or 1
    work = [(paths[i], tokenizer, cache_root) for i in todo]
    if jobs > 1 and len(work) > 4:
        with ProcessPoolExecutor(max_workers=min(jobs, len(work)), initializer=_one_blas_thread) as pool:
            for i, result in zip(todo, pool.map(_process_file, work, chunksize=max(1, len(work) // (jobs * 8)))):
                results[i] = result
                bar.update(1)
    elif work:
        with one_blas_thread():
            for i, args in zip(todo, work):
                results[i] = _process_file(args)
                bar.update(1)
    bar.close()
    return [results[i] for i in range(len(paths))]


def one_blas_thread():
    """Ingest's matrix products are tiny (a piece's beats x 12 pitch classes x 84 chords): a
    second BLAS thread cannot speed them up, and with other work on the machine its spinning made
    a 0.3 ms product take 13 ms. The work is spread over processes instead (--jobs)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


_worker_limits = None


def _one_blas_thread():  # ProcessPoolExecutor initializer: for the worker's whole life
    global _worker_limits
    _worker_limits = one_blas_thread()


def _cached_only(path, tokenizer, cache_root):
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    return TokenCache(cache_root, tokenizer).get(hashlib.blake2b(data, digest_size=16).hexdigest(), path)


def _progress(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, unit="file", disable=not enabled, leave=False, dynamic_ncols=True)


# ---------------------------------------------------------------- report

def ingest_report(results, extra_skipped=()) -> dict:
    used = [r for r in results if r.reason == ""]
    lost = {}
    for r in used:
        for key, count in r.lost.items():
            lost[key] = lost.get(key, 0) + count
    skipped = list(extra_skipped) + [{"path": r.path, "reason": r.reason} for r in results if r.reason]
    return {
        "files_found": len(results) + len(extra_skipped),
        "files_used": len(used),
        "files_skipped": skipped,
        "notes": sum(r.notes for r in used),
        "tokens": int(sum(len(r.tokens) for r in used)),
        "seconds": round(sum(r.seconds for r in used), 3),
        "notes_changed": lost,
        "cache_hits": sum(r.cached for r in results),
    }


def format_report(report: dict, show_skipped: int = 20) -> str:
    minutes = report["seconds"] / 60
    lines = [f"files: {report['files_found']} found, {report['files_used']} used, "
             f"{len(report['files_skipped'])} skipped",
             f"music: {report['notes']:,} notes, {report['tokens']:,} tokens, {minutes:.1f} minutes"]
    changed = {k: v for k, v in report.get("notes_changed", {}).items() if v}
    if changed:
        lines.append("tokenizer rules applied: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in sorted(changed.items())))
    for item in report["files_skipped"][:show_skipped]:
        lines.append(f"  skipped {item['path']}: {item['reason']}")
    more = len(report["files_skipped"]) - show_skipped
    if more > 0:
        lines.append(f"  ... and {more} more skipped (see --json)")
    return "\n".join(lines)


# ---------------------------------------------------------------- split and store

def is_validation(content_hash: str, val_fraction: float) -> bool:
    """Stable split: depends only on the file's own bytes, so adding files never moves others."""
    return int(content_hash[:8], 16) / 0xFFFFFFFF < val_fraction


def split_results(used, val_fraction: float):
    val = [r for r in used if is_validation(r.content_hash, val_fraction)]
    if not val and len(used) >= 2 and val_fraction > 0:  # tiny corpus: still hold one file out
        val = [min(used, key=lambda r: r.content_hash)]
    val_ids = {id(r) for r in val}
    train = [r for r in used if id(r) not in val_ids]
    return train, val


class TokenStore:
    """A corpus split as flat arrays (documents concatenated, each BOS ... EOS): uint16 tokens and
    uint8 controls (controls.COLUMNS per token), memory-mapped from disk so
    memory does not grow with the corpus."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.styles = self.meta.get("styles", [])
        self.train, self.train_controls = self._open("train")
        self.val, self.val_controls = self._open("val")

    def _open(self, name):
        path = self.folder / f"{name}.u16"
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=np.uint16), np.zeros((0, len(ctl.COLUMNS)), dtype=np.uint8)
        tokens = np.memmap(path, dtype=np.uint16, mode="r")
        controls = np.memmap(self.folder / f"{name}.ctl", dtype=np.uint8, mode="r").reshape(len(tokens), len(ctl.COLUMNS))
        return tokens, controls

    @classmethod
    def build(cls, folder, used, val_fraction: float, extra_meta: dict | None = None,
              file_styles: dict | None = None, styles=()) -> "TokenStore":
        """file_styles: path -> style name (None: no style); styles: the names, in id order."""
        folder = Path(folder)
        file_styles = file_styles or {}
        style_id = {name: i for i, name in enumerate(styles)}
        unknown_style = len(styles)
        train, val = split_results(sorted(used, key=lambda r: r.content_hash), val_fraction)
        key = hashlib.blake2b(json.dumps([[r.content_hash for r in train], [r.content_hash for r in val],
                                          [file_styles.get(r.path) for r in train + val], list(styles),
                                          extra_meta or {}]).encode(), digest_size=12).hexdigest()
        target = folder / key
        if (target / "meta.json").exists():
            return cls(target)
        target.mkdir(parents=True, exist_ok=True)
        for name, part in (("train", train), ("val", val)):
            with atomic_path(target / f"{name}.u16") as tmp:
                with open(tmp, "wb") as fh:
                    for r in part:
                        fh.write(r.tokens.astype("<u2").tobytes())
            with atomic_path(target / f"{name}.ctl") as tmp:
                with open(tmp, "wb") as fh:
                    for r in part:
                        style = style_id.get(file_styles.get(r.path), unknown_style)
                        column = np.full((len(r.tokens), 1), style, dtype=np.uint8)
                        fh.write(np.concatenate([r.controls.astype(np.uint8), column], axis=1).tobytes())
        meta = {"train_files": [r.path for r in train], "val_files": [r.path for r in val],
                "train_tokens": int(sum(len(r.tokens) for r in train)),
                "val_tokens": int(sum(len(r.tokens) for r in val)),
                "train_notes": sum(r.notes for r in train), "val_notes": sum(r.notes for r in val),
                "val_seconds": sum(r.seconds for r in val), "styles": list(styles),
                "style_files": {name: sum(file_styles.get(r.path) == name for r in train + val) for name in styles},
                **(extra_meta or {})}
        atomic_write_bytes(target / "meta.json", json.dumps(meta).encode())
        return cls(target)


# ---------------------------------------------------------------- training windows

HIDE_PROBABILITY = 0.2  # each control of each training window is hidden ("unknown") this often


class WindowSampler:
    """Random (input, target) windows from a token array and its controls, with optional
    transposition (which moves the key and chord labels too) and randomly hidden controls.
    All randomness comes from `self.rng`; training re-seeds it from (seed, rank, step) before
    every batch, so a resumed run draws exactly the batches an uninterrupted run would."""

    def __init__(self, tokens: np.ndarray, tokenizer: Tokenizer, seq_len: int, batch_size: int,
                 seed: int = 0, transpose: int = 0, controls: np.ndarray | None = None,
                 unknown: np.ndarray | None = None, hide: float = HIDE_PROBABILITY, transpose_share: float = 1.0,
                 names=ctl.COLUMNS, velocity_shift: int = 0, velocity_share: float = 1.0):
        """names: the controls of the columns of `controls` (a model's, in its order)."""
        if len(tokens) < 2:
            raise ValueError("not enough training tokens")
        self.tokens, self.tok, self.controls = tokens, tokenizer, controls
        self.unknown, self.hide, self.names = unknown, hide, tuple(names)
        self.seq_len = min(seq_len, len(tokens) - 1)
        self.batch_size, self.transpose, self.transpose_share = batch_size, transpose, transpose_share
        self.velocity_shift, self.velocity_share = velocity_shift, velocity_share
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.offsets = np.arange(self.seq_len + 1)

    def next_batch(self):
        """tokens (B, T+1) int64, or (tokens, controls (B, T+1, C) int64) with controls."""
        starts = self.rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)
        index = starts[:, None] + self.offsets
        batch = self.tokens[index].astype(np.int64)
        shift = (transpose_pitches(batch, self.tok, self.transpose, self.rng, self.transpose_share)
                 if self.transpose else None)
        if self.velocity_shift:
            shift_velocities(batch, self.tok, self.velocity_shift, self.rng, self.velocity_share)
        if self.controls is None:
            return batch
        controls = self.controls[index].astype(np.int64)
        if shift is not None:
            ctl.transpose(controls, shift, self.names)
        if self.hide:
            ctl.hide(controls, self.rng, self.hide, self.unknown)
        return batch, controls


def transpose_pitches(batch: np.ndarray, tok: Tokenizer, max_semitones: int, rng, share: float = 1.0) -> np.ndarray:
    """Shift every pitched note of each row by one random interval that keeps the row in range
    (in place; returns the shifts); only a `share` of the rows move, the rest keep their key.
    Drum tokens are separate, so drums are never transposed."""
    n_pitches = tok.config.pitch_high - tok.config.pitch_low + 1
    # a row without pitches still gets a shift: its key and chord labels move with it
    return shift_in_range(batch, tok.pitch0, n_pitches, max_semitones, rng, share, empty=max_semitones)


def shift_velocities(batch: np.ndarray, tok: Tokenizer, max_bins: int, rng, share: float = 1.0) -> np.ndarray:
    """Make every note of each row louder or softer by one random number of velocity bins that
    keeps the row in range (in place; returns the shifts), on a `share` of the rows. A corpus
    played at one velocity would otherwise teach that every other velocity never happens: the
    model then learns to keep the dynamics of the music before it, whatever they are."""
    return shift_in_range(batch, tok.velocity0, len(tok.velocities), max_bins, rng, share, empty=0)


def shift_in_range(batch: np.ndarray, first: int, count: int, most: int, rng, share: float, empty: int) -> np.ndarray:
    """Add one random offset in [-most, most] to each row's tokens in [first, first + count), chosen
    so that none leaves that range (rows without such tokens: within +-`empty`); only a `share`
    of the rows move. In place; returns the offsets."""
    offset = batch - first
    inside = (offset >= 0) & (offset < count)
    lowest = np.where(inside, offset, count).min(axis=1)
    highest = np.where(inside, offset, -1).max(axis=1)
    down = np.minimum(most, np.where(highest >= 0, lowest, empty))
    up = np.minimum(most, np.where(highest >= 0, count - 1 - highest, empty))
    shift = np.floor(rng.random(len(batch)) * (down + up + 1)).astype(np.int64) - down
    if share < 1.0:
        shift = np.where(rng.random(len(batch)) < share, shift, 0)
    batch += np.where(inside, shift[:, None], 0)
    return shift


def validation_index(n_tokens: int, seq_len: int, max_tokens: int = 0) -> np.ndarray:
    """Positions of non-overlapping windows covering the validation tokens (deterministic);
    with `max_tokens`, an evenly spaced subset of them. (windows, seq_len + 1)."""
    n = (n_tokens - 1) // seq_len
    if n <= 0:
        return np.zeros((0, seq_len + 1), dtype=np.int64)
    starts = np.arange(n)
    if max_tokens and n * seq_len > max_tokens:
        starts = np.unique(np.linspace(0, n - 1, max(1, max_tokens // seq_len)).astype(np.int64))
    return starts[:, None] * seq_len + np.arange(seq_len + 1)



# ---------------------------------------------------------------- all together

MAX_STYLE_NAME = 64


def check_style_name(name: str, given: bool = True) -> str:
    """A style name names the run folder (checkpoints/NAME) and is printed: it must be a safe
    file name. Subfolder names (given=False) are file names already; only their characters are checked."""
    import unicodedata

    shown = repr(name if len(name) <= MAX_STYLE_NAME else name[:MAX_STYLE_NAME] + "...")
    if any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in name):  # would break printed lines
        raise ValueError(f"style name {shown} holds a control character or line break")
    if given and (len(name) > MAX_STYLE_NAME or name.strip() in ("", ".", "..") or "/" in name or "\\" in name
                  or name != name.strip()):
        raise ValueError(f"style name {shown} is not a safe folder name: use at most {MAX_STYLE_NAME} characters, "
                         f"no / or \\, not . or .., no spaces at the ends")
    return name


def scan_sources(sources) -> tuple[list, list, dict]:
    """(MIDI files, skipped entries, file path -> style name or None) of parse_sources' folders."""
    files, skipped_entries, file_styles = [], [], {}
    for root, fixed in sources:
        found, skipped = find_midi_files(root)
        files += found
        skipped_entries += skipped
        file_styles.update({str(f): style_of(f, root, fixed) for f in found})
    return files, skipped_entries, file_styles


def style_rests(files: list[str], sources, resolution: int, sample: int = 200, share: float = 0.9) -> dict:
    """Per style name ("" for music without a style): the longest silence inside a piece (steps)
    that `share` of the style's pieces stay within, from up to `sample` evenly spaced files.
    `generate` holds its pieces to it: a model that ends a bar early (a 2/4 reel heard in a 4/4
    grid) leaves a hole its corpus never has. The bundled corpora: tunes half a beat, chorales a
    beat (their phrases breathe); the 99% quantile (a beat for both) left tunes 5.8% silent
    against the corpus's 0.5%, this 0.2% (chorales 1.0% against 1.0%)."""
    from .phrase import inner_rest

    styles = scan_sources(sources)[2]
    by_style = {}
    for path in files:
        by_style.setdefault(styles.get(str(path)) or "", []).append(path)
    out = {}
    for name, paths in by_style.items():
        rests = []
        for path in paths[::max(1, len(paths) // sample)][:sample]:
            try:
                rests.append(inner_rest(read_midi_bytes(Path(path).read_bytes(), resolution, path).notes))
            except (OSError, MidiError, ValueError):
                continue
        if rests:
            out[name] = int(np.quantile(rests, share))
    return out


def unmatched_styles_note(unmatched: dict, styles) -> str:
    """The line `train --init-from` prints for folders that are none of the checkpoint's styles."""
    found = ", ".join(f"{name} ({count} files)" for name, count in unmatched.items())
    return (f"note: {found}: not a style of the checkpoint ({', '.join(styles)}); these files train with no "
            f"style (name their folder after one of its styles, or use NAME=FOLDER)")


def parse_sources(paths, style: str | None = None) -> list[tuple[Path, str | None]]:
    """Training folders as (folder, style): 'NAME=FOLDER' names a folder's style, `style` names
    every plain folder's; otherwise styles are the first-level subfolders (None: no style)."""
    sources = []
    if style is not None:
        check_style_name(style)
    for item in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        text = str(item)
        name, sep, folder = text.partition("=")
        if sep and name and not Path(text).exists():
            sources.append((Path(folder), check_style_name(name)))
        else:
            sources.append((Path(text), style))
    for folder, _ in sources:
        if not folder.exists():
            raise FileNotFoundError(f"no such file or folder: {folder}")
    return sources


def style_of(path: Path, root: Path, fixed: str | None) -> str | None:
    """The style of a file: the folder's given style, else its first-level subfolder's name."""
    if fixed:
        return fixed
    try:
        parts = Path(path).relative_to(root).parts
    except ValueError:
        return None
    return parts[0] if len(parts) > 1 else None


def load_corpus(path, tokenizer: Tokenizer, cache_dir=None, use_cache: bool = True, jobs: int = 0,
                progress: bool = False, val_fraction: float = 0.1, style: str | None = None, styles=None,
                sources=None):
    """Scan, tokenize (cached) and store a corpus. Returns (report, TokenStore or None).

    path: a folder, or several (see parse_sources for 'NAME=FOLDER'); styles: the style names
    in id order (a resumed or fine-tuned model's), default: those found, sorted; sources:
    parse_sources(path, style), when the caller has it already."""
    started = time.perf_counter()
    sources = sources if sources is not None else parse_sources(path, style)
    files, skipped_entries, file_styles = scan_sources(sources)
    names = list(styles) if styles is not None else sorted({s for s in file_styles.values() if s})
    for name in names if styles is None else ():
        check_style_name(name, given=False)
    cache_root = None
    if use_cache:
        cache_root = Path(cache_dir) if cache_dir else default_cache_dir()
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
        except OSError:
            cache_root = None
    manifest = corpus_manifest(cache_root, files, skipped_entries, tokenizer, val_fraction,
                               [file_styles, names]) if cache_root else None
    if manifest is not None and manifest.exists():  # nothing changed since the last run: no file is opened
        try:
            saved = json.loads(manifest.read_text())
            report = {**saved["report"], "elapsed_s": round(time.perf_counter() - started, 3),
                      "cache_hits": saved["report"]["files_found"]}
            return report, TokenStore(cache_root / "corpora" / saved["store"]) if saved["store"] else None
        except (OSError, ValueError, KeyError):
            pass  # a damaged manifest: rebuild
    results = tokenize_files(files, tokenizer, str(cache_root) if cache_root else None, jobs, progress)
    report = ingest_report(results, skipped_entries)
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    used = [r for r in results if not r.reason]
    if not used:
        return report, None
    if cache_root is None:
        import tempfile

        store_root = Path(tempfile.mkdtemp(prefix="melodylstm-corpus-"))
    else:
        store_root = cache_root / "corpora"
    store = TokenStore.build(store_root, used, val_fraction, {"tokenizer": config_fingerprint(tokenizer)},
                             file_styles, names)
    report["train_files"] = len(store.meta["train_files"])
    report["val_files"] = len(store.meta["val_files"])
    report["styles"] = store.meta["style_files"]
    unmatched = [file_styles.get(r.path) for r in used if file_styles.get(r.path) not in (None, *names)]
    if unmatched:  # a fine-tuned model's styles are its checkpoint's: these files learn no style
        report["styles_unmatched"] = {name: unmatched.count(name) for name in sorted(set(unmatched))}
    if manifest is not None:
        try:
            atomic_write_bytes(manifest, json.dumps({"report": report, "store": store.folder.name}).encode())
        except OSError:
            pass
    return report, store


def corpus_manifest(cache_root: Path, files, skipped, tokenizer: Tokenizer, val_fraction: float, extra=None) -> Path:
    """Where the result of a whole corpus run is remembered, keyed by every file's path, size and
    modification time (and the tokenizer): an unchanged folder is served without opening a file."""
    entries = []
    for f in files:
        try:
            st = os.stat(f)
            entries.append((os.path.abspath(f), st.st_size, st.st_mtime_ns))
        except OSError:
            entries.append((str(f), -1, -1))
    key = hashlib.blake2b(json.dumps([config_fingerprint(tokenizer), val_fraction, entries, skipped, extra]).encode(),
                          digest_size=16).hexdigest()
    return cache_root / "corpora" / "manifests" / f"{key}.json"
