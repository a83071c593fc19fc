"""Atomic outputs: write under a unique temporary name in the same folder, fsync, then rename.

A kill at any moment leaves either the old output or the complete new one under the final name,
never a half-written one and never neither. Files: :func:`atomic_path`. Directories (exported
models, converted checkpoints): :func:`atomic_dir`, which swaps the new directory in with one
``renameat2(RENAME_EXCHANGE)`` where the kernel has it, and keeps the old directory until the new
one is in place. It replaces only a directory that is empty or holds its marker (an earlier output
of this package): never a user's file or folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path; on success fsync and rename it onto ``path``, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """One JSON value per line, UTF-8 (non-ASCII kept as is)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def remove_stale_tmp(path: str | Path) -> int:
    """Remove the temporaries of ``path`` that killed writers left (a live writer's are kept); returns how
    many. :func:`atomic_path` calls it, so a rerun after a kill leaves no litter beside its output."""
    path = Path(path)
    n = 0
    for p in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[1]
        if not pid.isdigit() or not p.is_file() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue  # not one of tmp_name's files, or a live writer's work in progress
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def clean_stale_tmp(folder: str | Path) -> int:
    """Remove temporary files left by killed writers; returns how many."""
    n = 0
    for p in Path(folder).glob(".*.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (before it is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(folder))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2``); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # old kernel or a filesystem without it
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def recover_dir(path: str | Path) -> None:
    """Finish what a killed :func:`atomic_dir` left: put a set-aside old directory back when the
    final name is missing, and remove temporaries of writers that are gone."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not path.exists():
        os.replace(olds.pop(), path)
        fsync_dir(path.parent)
    for stale in [*olds, *path.parent.glob(f".{path.name}.tmp-*")]:
        pid = stale.name.rsplit("-", 2)[-2] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another live writer's work in progress
        shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


DIR_MARKER = ".megatron_ipt_output"  # written into every atomic_dir output: only such a folder is replaced


class OutputRefused(ValueError):
    """The output path holds something this package did not write (bad input: the command line names it)."""


def _check_parents(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a folder."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputRefused(f"{path}: cannot write under {parent}: a file stands where a folder must be")
            break


def check_output_file(path: str | Path) -> None:
    """Refuse, before any compute, an output file that could not be written: a folder standing at
    ``path``, or a file standing where one of its folders must be. Touches nothing."""
    path = Path(os.path.abspath(path))
    _check_parents(path)
    if path.is_dir():
        raise OutputRefused(f"{path}: a folder stands where the output must be")


def check_replaceable_dir(path: str | Path) -> None:
    """Refuse an output directory that :func:`atomic_dir` must not replace: a file, a symlink, or a
    folder that holds files but not :data:`DIR_MARKER`; also a path under a file. Touches nothing."""
    path = Path(os.path.abspath(path))
    _check_parents(path)
    if path.is_symlink():
        raise OutputRefused(f"{path}: a symlink stands there; refusing to replace it (give the real directory)")
    if not path.exists():
        return
    if not path.is_dir():
        raise OutputRefused(f"{path}: a file stands there; refusing to replace it (give a new or empty directory)")
    if (path / DIR_MARKER).is_file() or not any(path.iterdir()):
        return
    raise OutputRefused(f"{path}: the folder holds files this tool did not write (no {DIR_MARKER} of an earlier "
                        "output); refusing to replace it (give a new or empty directory)")


def _normal_permissions(root: Path, mode: int) -> None:
    """Give every file under ``root`` the mode a plain ``open`` gives (some writers, safetensors among
    them, create 0600 files)."""
    for folder, _, files in os.walk(root):
        for name in files:
            os.chmod(os.path.join(folder, name), mode)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``path``; on success fsync it and swap it in.

    ``path`` must be new, an empty folder or an earlier output (holding :data:`DIR_MARKER`), else
    :class:`OutputRefused` is raised before anything is written. The old ``path`` stays in place
    until the new directory is complete and fsynced; it is then exchanged with the new one in a
    single step and removed. On an exception the temporary is removed and ``path`` is untouched.
    """
    path = Path(os.path.abspath(path))
    check_replaceable_dir(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        marker = tmp / DIR_MARKER
        marker.write_text("written by megatron_ipt: a later output of the same command may replace this folder\n")
        _normal_permissions(tmp, stat.S_IMODE(marker.stat().st_mode))
        fsync_tree(tmp)
        check_replaceable_dir(path)  # something may have landed there while this output was written
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # tmp now holds the old directory
        else:  # no atomic exchange: set the old one aside, move the new in, then drop the old
            old = _old_name(path)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class OutputLocked(ValueError):
    """Another live process is writing the same output (bad input: the command line names it)."""


@contextlib.contextmanager
def output_lock(output: str | Path) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``OUTPUT.lock`` (beside the output) while writing it.

    A second writer of the same output gets :class:`OutputLocked` at once (a one-line message with
    the holder's pid) instead of the two runs tearing each other's temporary files. The kernel drops
    the lock when its holder exits, even by kill -9, so a stale lock file never blocks a rerun; a
    finished holder removes the file.
    """
    import fcntl

    lock = Path(f"{output}.lock")
    for parent in lock.parents:  # name the file that stands where a folder must be
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "a file stands where a folder must be", str(parent))
            break
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputLocked(f"{output}: another run (pid {holder}) is writing this output now "
                               f"(lock {lock}); wait for it or choose another output") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder finished and removed the file between our open and flock: retry
    else:
        raise OutputLocked(f"{output}: the lock {lock} keeps changing hands; another run is writing this output")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # before releasing: a waiter that opened the old file sees it is gone
        os.close(fd)
