"""Atomic file writes: a temporary file in the same folder, fsync, then rename over the target.

A killed process therefore leaves either the old file or the new one, never half of either.

Temporary files (and the private folders of :func:`atomic_path`) are named
``.<name>.gptclf-<pid>-<random>.tmp``: the writer's process id in the name lets a later run tell
its own kind of leftovers (from a process that was killed) from those of a live process
(:func:`remove_stale_temp_files`).

Files get the permissions of an ordinary ``open()``, ``0o666`` less the user's umask (not
``mkstemp``'s ``0o600``), so that a run on a shared machine is as readable as the user's other files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Marks a temporary file as written by gptclf; the pid after it says by which process.
TEMP_MARK = ".gptclf-"
_TEMP_RE = re.compile(r"^\..+\.gptclf-(?P<pid>[0-9]+)-[0-9a-f]+\.tmp$")
#: What earlier gptclf versions left (``mkstemp``'s ``.<name>.<random>.tmp``, safetensors'
#: ``.tmpXXXXXX``): no pid tells whose they are, so only a caller that owns the folder removes them.
_LEGACY_TEMP_RE = re.compile(r"^\.(?:.+\.[A-Za-z0-9_]{6,8}\.tmp|tmp[A-Za-z0-9]{6})$")


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create a new, empty temporary sibling of ``path``; return its descriptor and path.

    ``os.open`` with mode ``0o666`` lets the kernel apply the umask, as ``open()`` does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = _temp_name(path)
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # 32 random bits: practically never, but never overwrite
            continue


def temp_dir_for(path: Path) -> Path:
    """A new, empty private folder beside ``path``, named as temporary files are.

    :func:`remove_stale_temp_files` removes it (with its content) once its process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = _temp_name(path)
        try:
            tmp.mkdir()  # 0o777 less the umask
            return tmp
        except FileExistsError:
            continue


def fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable, where the platform allows it (not on Windows)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot sync a folder; the data itself is synced
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """Sync ``tmp`` to disk, rename it over ``path`` and sync the folder.

    Without the first sync a power cut after the rename can leave ``path`` empty or partial on
    file systems that reorder data and metadata writes (ext4 ``data=writeback``, XFS).
    """
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_folder(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A path to write ``path``'s new content to, for writers that take a path (safetensors, matplotlib).

    The path lies in a private temporary folder beside ``path``, so that whatever the writer
    creates there itself (safetensors writes a ``.tmpXXXXXX`` of its own) has a name
    :func:`remove_stale_temp_files` recognises after a kill -9. On success the file gets the
    umask's permissions, is synced and renamed to ``path``; on an exception (or a signal turned
    into one) it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    folder = temp_dir_for(path)
    tmp = folder / path.name
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        wanted = stat.S_IMODE(tmp.stat().st_mode)  # what the umask gives a new file
        yield tmp
        if stat.S_IMODE(tmp.stat().st_mode) != wanted:
            os.chmod(tmp, wanted)  # safetensors renames its own 0600 file over ours
        _commit(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": ""}
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb", encoding=None) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON (with a final newline) to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def temp_path_for(path: Path) -> Path:
    """A new, empty temporary file beside ``path`` for writers that need a path.

    The caller renames it into place or removes it; :func:`atomic_path` does both, and syncs.
    """
    fd, tmp = _create_temp(Path(path))
    os.close(fd)
    return tmp


def remove_own_temp_files(path: Path) -> None:
    """Remove this process's temporary files for ``path`` (``.<name>.gptclf-<pid>-*.tmp`` beside
    it): a cleanup that needs no name, so it also covers a stop between a file's making and the
    moment its writer learnt its name."""
    path = Path(path)
    for entry in path.parent.glob(f".{glob.escape(path.name)}.gptclf-{os.getpid()}-*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


def temp_file_pid(path: Path) -> int | None:
    """The process id in the name of a gptclf temporary file, or None for any other name."""
    match = _TEMP_RE.match(Path(path).name)
    return int(match["pid"]) if match else None


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one of another user's counts too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: no signal is sent, only the existence check is made
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists but belongs to someone else
    except OSError:
        return True  # cannot tell (e.g. Windows): keep the file rather than remove a live one
    return True


def remove_stale_temp_files(folder: Path, *, legacy: bool = False) -> list[Path]:
    """Remove the temporary files and folders that gptclf writers left in ``folder`` when killed.

    Only entries named by this module (``.<name>.gptclf-<pid>-<random>.tmp``) whose writer
    process is gone are removed; those of a live process (this one included) are never touched.
    A pid reused by an unrelated live process keeps its entry: removal errs on the safe side.

    Args:
        folder: The folder to clean (entries directly in it). A missing folder has nothing to clean.
        legacy: Also remove the pid-less temporaries of earlier versions (``.<name>.<random>.tmp``,
            ``.tmpXXXXXX``). Only for a caller that owns ``folder`` (no other process writes there),
            since nothing tells whether their writer is alive.

    Returns:
        The entries removed, sorted by name (for a note on stderr).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not _is_stale(entry, legacy):
            continue
        try:
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another cleaner got there first
            continue
        removed.append(entry)
    return removed


def _is_stale(entry: Path, legacy: bool) -> bool:
    pid = temp_file_pid(entry)
    if pid is not None:
        return not process_alive(pid)
    return legacy and entry.is_file() and _LEGACY_TEMP_RE.match(entry.name) is not None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable(folder: Path) -> None:
    """Write, sync and remove a small temporary file in ``folder``: permission bits say nothing of
    a read-only mount or a full disk, so this is found out by writing, before long work starts.

    Raises:
        OSError: The folder cannot be written (:func:`gptclf.errors.write_error` words it).
    """
    fd, tmp = _create_temp(Path(folder) / "write-test")
    try:
        os.write(fd, b"gptclf")
        os.fsync(fd)  # a full disk may refuse the data only here
    finally:
        os.close(fd)
        tmp.unlink(missing_ok=True)


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src`` (a file or a folder tree) to ``dst``; copy where links are not allowed."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        link(str(src), str(dst))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's ``renameat2``; False where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
