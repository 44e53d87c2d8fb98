"""The one atomic file writer: every file hwnas writes goes through here.

A write goes to a temporary file in the target's folder (so the rename cannot cross file
systems), is flushed and fsynced, renamed over the target with ``os.replace`` and the folder
is fsynced, so a crash leaves either the old file or the new one, never a torn mix.  The new
file keeps the previous file's mode; a new file gets 0o666 less the umask, as a plain
``open`` would give it (``mkstemp`` alone would leave 0o600).  Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator


def mode_for(path: Path) -> int:
    """The mode a file written at ``path`` gets: the previous file's, else 0o666 less the
    umask (what a plain ``open`` would give)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, a race between
    threads) where Linux shows it in /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # some file systems do not open folders; the rename itself is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: Path | str, mode: str = "w", newline: str | None = None) -> Iterator[IO]:
    """A file object for ``path`` that replaces it atomically when the block ends without an
    exception (the previous file is untouched otherwise).  ``mode`` is ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": newline})) as fh:
            os.fchmod(fh.fileno(), mode_for(path))
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically (see the module docstring)."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def ensure_writable_folder(folder: Path | str, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and prove it writable by creating and removing a file
    there (permission bits alone say nothing for root or a read-only mount), so a command
    can refuse before any work.  Raises ValueError with one line naming the folder."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{folder}: cannot write the {what}: {exc.strerror or exc}") from None
    return folder


def stamped_free_path(folder: Path, prefix: str) -> Path:
    """``folder/<prefix>-<time>`` for setting old data aside, with ``-2``, ``-3``... when that
    name is taken already (two set-asides in one second)."""
    import time

    base = folder / f"{prefix}-{time.strftime('%Y%m%dT%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (what a supernet checkpoint or a
    LUT that derived data depends on is identified by)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Busy(OSError):
    """Another process holds the lock of a file or folder this one is about to write."""


class ExclusiveLock:
    """An advisory lock (``flock``) on ``path``, a folder or a lock file (created if missing,
    never written), for as long as it is held: a second process that asks for it gets
    ``Busy`` naming ``what`` and, where ``/proc/locks`` tells, the holder's pid and command
    line.  The kernel drops the lock when its process ends however it ends, so a killed run
    leaves nothing to clean up, and locking a folder changes nothing in it.  On a file system
    without ``flock`` no lock is taken (nothing can be promised there)."""

    def __init__(self, path: Path | str, what: str):
        import fcntl

        self._fd: int | None = None
        folder = os.path.isdir(path)
        try:
            fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY if folder else os.O_RDWR | os.O_CREAT) | os.O_CLOEXEC,
                         0o644)
        except OSError as exc:
            raise OSError(f"{what}: cannot open {path} to lock it: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(fd)
            os.close(fd)
            raise Busy(f"{what} is in use by another process{f' ({holder})' if holder else ''}; "
                       "wait for it to end or stop it") from None
        except OSError:  # no flock here (some network file systems)
            os.close(fd)
            return
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # a lock held by a local variable goes with it
        self.close()

    def __enter__(self) -> "ExclusiveLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_folder_lock(out: Path) -> ExclusiveLock:
    """The lock of a run folder that ``supernet.train`` holds while it trains there."""
    return ExclusiveLock(out, f"run folder {out}")


def _flock_holder(fd: int) -> str:
    """``pid N: command line`` of the process holding a flock on ``fd``'s file, from Linux's
    ``/proc/locks``; '' where that cannot be told (another OS, another pid namespace)."""
    try:
        st = os.fstat(fd)
        ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                parts = line.split()  # "1: FLOCK  ADVISORY  WRITE 4321 08:01:123456 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident:
                    with open(f"/proc/{int(parts[4])}/cmdline", "rb") as c:
                        cmd = c.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                    return f"pid {parts[4]}: {cmd}"[:400]
    except (OSError, ValueError):
        pass
    return ""


def lock_path(path: Path | str) -> Path:
    """The lock file of a file hwnas writes: a hidden ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")
