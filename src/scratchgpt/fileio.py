"""Atomic file writes: temp file in the same directory, fsync, rename, then fsync the directory.

Owns `atomic_write_bytes`, `atomic_write_text`, `atomic_path` (a context manager for writers that need a
path, such as safetensors and matplotlib), `atomic_dir` (a whole directory, such as an export or a prepared
data directory), `append_text` (a log line), `writing` (the one place a refused write becomes one sentence),
`read_utf8` (a whole input file as text, or one clear `DataError`), `sha256_file` and `leftover_pattern` (the
names of what a killed writer leaves). A crash mid-write leaves the old file as it was and at worst a
stray `.<name>.<pid>.<random>.tmp` file, never a damaged target; `clean_stale(target)` removes such leftovers
of dead processes (every `atomic_dir` call does it first; training does it for its run directory's files).
Does not own what is written.

Disks: every writer here runs inside `writing`, which turns an OSError (ENOSPC, EROFS, EACCES, a parent
that cannot be created; also safetensors' own wrapping of one) into a `DiskError` naming the path, the
system's reason and what was kept: "could not write 'x': No space left on device; the previous 'x' is unchanged".

Directories: `atomic_dir` builds into `.<name>.<pid>.<random>.tmp` beside the target and swaps it in with
one `renameat2(RENAME_EXCHANGE)` where Linux offers it, so the target is always the old directory or the new
one, never absent or mixed (`staging_dir` and `swap_in` are its two halves, for a writer that builds over a
longer time, such as a training run replacing another). Elsewhere it renames the old one aside first
(`.<name>.<pid>.<random>.old/x`) and a crash between the two renames is repaired by the next call for the same
target. That next call also removes any staging left by a process that is no longer alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError, DiskError

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened for fsync
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(e: BaseException, target: Path) -> str | None:
    """The system's words for a failed write, or None when e is not about the filesystem."""
    if isinstance(e, OSError):
        if e.filename is not None and not _near(Path(e.filename), target):
            return None  # about another file (one being read, say): not this write's failure
        if e.strerror:
            return e.strerror
        probe = next((p for p in (target, *target.parents) if p.exists()), None)
        with contextlib.suppress(OSError):
            if probe is not None and shutil.disk_usage(probe).free == 0:  # numpy's tofile says only "n written"
                return os.strerror(errno.ENOSPC)
        return str(e) or type(e).__name__
    if type(e).__name__ == "SafetensorError" and (m := re.search(r"os error (\d+)", str(e))):
        return os.strerror(int(m.group(1)))
    return None


def _near(path: Path, target: Path) -> bool:
    """Whether path is one of target's ancestors (a parent that could not be made), target itself, or inside
    target or one of its temp files or staging directories (`.<name>.*` beside it)."""
    p, t = Path(os.path.abspath(path)), Path(os.path.abspath(target))
    return p in t.parents or any(q == t or (q.parent == t.parent and q.name.startswith(f".{t.name}."))
                                 for q in (p, *p.parents))


@contextlib.contextmanager
def writing(target: str | Path, kept: str | None = None) -> Iterator[None]:
    """Run a write; an OSError inside becomes a DiskError naming target and what was kept (by default: the
    previous target is unchanged when there was one, else nothing was written)."""
    target = Path(target)
    if kept is None:
        kept = f"the previous '{target}' is unchanged" if target.exists() else "nothing was written"
    try:
        yield
    except Exception as e:
        # a writer nested inside (a file in a staging directory) already said why; the outer target is what
        # the user asked for, so the outermost one names it
        why = e.reason if isinstance(e, DiskError) else _reason(e, target)
        if why is None:
            raise
        err = DiskError(f"could not write '{target}': {why}; {kept}")
        err.reason = why
        raise err from None


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside target; on success it is fsynced and renamed over target."""
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        # the pid in the name lets the next writer of target tell a dead process's leftover (`clean_stale`)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=f"{suffix}.tmp",
                                        dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a run's files should read like any other
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


# ---- whole directories ----------------------------------------------------------------------------------

def _libc_renameat2() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a libc without it
        return None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the system or filesystem cannot."""
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def leftover_pattern(name_regex: str) -> re.Pattern[str]:
    """The names of what a killed writer of a target named by name_regex leaves beside it (for `fullmatch`):
    `.<name>.<pid>.<random>[.ext].tmp` or `.<name>.<pid>.<random>.old`; groups: the pid, the `.ext`, tmp/old."""
    return re.compile(rf"\.{name_regex}\.(\d+)\.[^.]+(\.[^.]+)?\.(tmp|old)")


def clean_stale(target: str | Path) -> None:
    """Remove what a killed writer of target left beside it: an `atomic_dir` staging or set-aside directory
    (`.<name>.<pid>.<random>.tmp` / `.old`) or an `atomic_path` temp file (`.<name>.<pid>.<random>[.ext].tmp`),
    of processes that are no longer alive; put back an old directory that a crash between two renames left
    aside (only where the rename could not be one atomic exchange). Nothing else is touched: not a live
    process's files, not a name that does not follow this pattern."""
    target = Path(target)
    pattern = leftover_pattern(re.escape(target.name))
    with contextlib.suppress(OSError):
        for p in sorted(target.parent.iterdir(), key=lambda p: p.name.endswith(".tmp")):  # .old first
            m = pattern.fullmatch(p.name)
            if not m or p.is_symlink() or _alive(int(m.group(1))):
                continue
            if p.is_file() and m.group(3) == "tmp":
                p.unlink()
                continue
            if not p.is_dir() or m.group(2):
                continue
            if m.group(3) == "old" and (p / "x").exists() and not (target.exists() or target.is_symlink()):
                os.replace(p / "x", target)
                _fsync_dir(target.parent)
            shutil.rmtree(p, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def staging_dir(target: str | Path) -> Path:
    """A new empty directory beside target (`.<name>.<pid>.<random>.tmp`) to build its replacement in, made
    after removing what dead processes left there (`clean_stale`). `swap_in` puts it in target's place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(target)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))


def swap_in(staging: Path, target: Path, carry: Callable[[str], bool] | None = None) -> None:
    """Make the finished `staging` directory target, in one atomic exchange where Linux offers it (target is
    always the old directory or the new one), then remove the old one. `carry(name)` picks entries of the old
    target to bring along (hard links where possible); staging's files are fsynced first."""
    if carry is not None and target.is_dir():
        for entry in target.iterdir():
            if carry(entry.name) and not (staging / entry.name).exists():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
                elif entry.is_symlink():
                    os.symlink(os.readlink(entry), staging / entry.name)
                else:
                    _link_or_copy(str(entry), str(staging / entry.name))
    for f in staging.rglob("*"):
        if f.is_file() and not f.is_symlink():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            if f.stat().st_nlink == 1:  # a carried hard link keeps its own mode
                os.chmod(f, 0o666 & ~_umask())  # some writers (safetensors) make 0600
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
    _fsync_dir(staging)
    old = None
    try:
        if not (target.exists() or target.is_symlink()):
            os.rename(staging, target)
        elif not _exchange(staging, target):  # else staging now holds the old directory, removed below
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(staging, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path, carry: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """Yield an empty staging directory beside target; on success its files are fsynced and it takes target's
    place. On failure (or a kill) target is untouched. `carry(name)` picks entries of the old target to bring
    into the new one (hard links where possible), for directories that hold more than what is written.

    A symlinked target is followed: the real directory is the one replaced.
    """
    target = Path(os.path.realpath(target)) if Path(target).is_symlink() else Path(target)
    kept = f"the previous contents of '{target}' are unchanged" if target.exists() else "nothing was written"
    with writing(target, kept):
        tmp = staging_dir(target)
        try:
            yield tmp
            swap_in(tmp, target, carry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# ---- files ----------------------------------------------------------------------------------------------

def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_text(target: str | Path, text: str) -> None:
    """Append to a log. A refused write is cut back off (a kill may still leave a cut last line, which
    readers skip); what was there before is kept."""
    with writing(target, f"the lines already in '{target}' are kept"):
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start, rest = os.fstat(fd).st_size, memoryview(text.encode("utf-8"))
            try:
                while rest:
                    rest = rest[os.write(fd, rest):]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_utf8(path: str | Path) -> str:
    """Read a whole file as UTF-8; missing, empty or undecodable files (or a directory) are a DataError."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"input file '{path}' is a directory; give a file")
    if not path.is_file():
        raise DataError(f"input file '{path}' not found")
    raw = path.read_bytes()
    if not raw:
        raise DataError(f"input file '{path}' is empty")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"input file '{path}' is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}") from None
