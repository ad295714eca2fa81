"""Crash-safe file writes: write to a temp file beside the target, fsync, atomic rename."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile


class WriteError(OSError):
    """A write that failed (disk full, no permission...), said in one line that names the file."""

    def __init__(self, path, reason: str, code: int | None = None):
        super().__init__(code, reason)
        self.path = os.fspath(path)

    def __str__(self) -> str:
        return f"cannot write {self.path}: {self.strerror}"


def write_error(path, exc: BaseException) -> BaseException:
    """`exc` as a WriteError naming `path` when it is an I/O failure, else unchanged. Writers such
    as safetensors report I/O errors as their own exception type, with the errno in the text."""
    if isinstance(exc, WriteError):
        return exc
    if isinstance(exc, OSError):
        return WriteError(path, exc.strerror or str(exc), exc.errno)
    text = str(exc)
    if type(exc).__name__ == "SafetensorError" and "I/O error" in text:
        if "os error 28" in text:
            return WriteError(path, "No space left on device", errno.ENOSPC)
        return WriteError(path, text.split("I/O error:", 1)[1].strip())
    return exc


def make_folders(folder: str) -> list[str]:
    """os.makedirs that returns the folders it created, outermost first (to undo on failure)."""
    created = missing_folders(folder)
    found = os.path.dirname(created[0]) if created else os.path.abspath(folder)  # the nearest that exists
    if not os.path.isdir(found):  # makedirs would say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{os.path.relpath(found)} is a file, not a folder")
    os.makedirs(folder, exist_ok=True)
    return created


def remove_folders(created: list[str]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):  # only empty ones go
            os.rmdir(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path; on success it replaces `path` atomically, on failure it vanishes,
    with any folder made for it, and an I/O error becomes a WriteError naming `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    created = []
    try:
        created = make_folders(folder)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        remove_folders(created)
        raise write_error(path, exc) from None
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and some writers) make 0600; use the usual mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        remove_folders(created)
        error = write_error(path, exc)
        if error is exc:
            raise
        raise error from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def _fsync_dir(folder: str) -> None:
    with contextlib.suppress(OSError):  # not every OS/filesystem allows fsync on a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def same_file(a, b) -> bool:
    """True when two paths name the same existing file (guards against overwriting inputs)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


@contextlib.contextmanager
def outputs_or_nothing(paths):
    """The output files of one command: when writing any of them fails, those it created and the
    folders made for them are removed, so a failed command leaves no partial set behind."""
    paths = [os.path.abspath(p) for p in paths]
    new_files = [p for p in paths if not os.path.lexists(p)]
    new_folders = sorted({f for p in paths for f in missing_folders(os.path.dirname(p))}, key=len)
    try:
        yield
    except BaseException:
        for path in new_files:
            with contextlib.suppress(OSError):
                os.unlink(path)
        remove_folders(new_folders)
        raise


def missing_folders(path) -> list[str]:
    """`path` and its parents that do not exist yet, outermost first."""
    missing, path = [], os.path.abspath(path)
    while not os.path.exists(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing[::-1]


def remove_failed_run(out, made: list[str]) -> None:
    """A training run that failed in folders it made (`made`, from missing_folders) before any
    checkpoint: its own files go, then those folders if empty (anything else keeps them)."""
    from pathlib import Path

    out = Path(out)
    if not made or not out.is_dir() or any(out.glob("*.safetensors")):
        return
    for name in ("ingest.json", "plan.json", "metrics.jsonl", "loss.png"):
        with contextlib.suppress(OSError):
            (out / name).unlink()
    remove_folders(made)
