"""Where a run is built: a work folder beside the run directory, swapped in whole at the end.

``finetune --out runs/sms`` never writes into ``runs/sms`` while it works. Everything it writes
(the checkpoints, the SMS data it prepares, then the run's files) goes into the work folder
``runs/.sms.partial``, and only when the run is complete is that folder swapped in as ``runs/sms``
with one atomic rename (``renameat2(RENAME_EXCHANGE)`` where the system has it). So at every
instant ``runs/sms`` is absent, the old complete run, or the new complete run, and a run that was
stopped (a signal, kill -9, a power cut, a full disk) leaves its work folder, which ``--resume``
continues and ``--force`` discards. Files of the user's own in ``--out`` (anything that is not part
of a run) are carried over into the new run by hard links before the swap, so they survive it.

The work folder is locked (``flock``) by the process that uses it: a second ``finetune`` on the
same ``--out`` is refused while the first runs, and an unlocked work folder is known to be a
leftover of a process that is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gptclf.errors import BadInputError, write_error
from gptclf.fileio import exchange_paths, fsync_folder, link_tree
from gptclf.rundir.layout import CHECKPOINT_NAME, INFO_FILE, RUN_FILES, TUNE_JOURNAL

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a second run on the same --out is not detected
    fcntl = None  # type: ignore[assignment]

#: Suffix of the work folder: ``runs/sms`` is built in ``runs/.sms.partial``.
WORK_SUFFIX = ".partial"
#: Where the old run waits for removal on systems without an atomic exchange.
OLD_SUFFIX = ".old"

Note = Callable[[str], None]


def work_dir(out: Path) -> Path:
    """The work folder of the run directory ``out``: ``<parent>/.<name>.partial``."""
    return out.with_name(f".{out.name}{WORK_SUFFIX}")


def _old_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}{OLD_SUFFIX}")


def _is_temp_file(name: str) -> bool:
    """A temporary file of an atomic write (``.<file>.<random>.tmp``), ours by its pattern."""
    return name.startswith(".") and name.endswith(".tmp")


def user_entries(out: Path) -> list[str]:
    """Names in ``out`` that are not part of a run (the user's own files), sorted."""
    if not out.is_dir():
        return []
    names = (p.name for p in out.iterdir())
    return sorted(n for n in names if n not in RUN_FILES and n != "data" and not _is_temp_file(n))


def has_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` holds a checkpoint to resume (a finetune's, or a tune's study)."""
    return (folder / CHECKPOINT_NAME).is_file() or (folder / TUNE_JOURNAL).is_file()


def recover(out: Path, note: Note) -> None:
    """Finish or undo a swap that a killed process left half done (systems without an exchange).

    Between the two renames of the fallback swap, ``out`` is absent and the old run waits in
    ``.<name>.old``: put it back (the new run's work folder is still there to resume). An old
    folder beside a present ``out`` is the remains of a finished swap: remove it.
    """
    old = _old_dir(out)
    if not old.is_dir():
        return
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(old, out)
        note(f"put back {out}, which an interrupted run had moved aside")


class WorkLock:
    """An exclusive ``flock`` on a folder, held while a process builds a run in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock; False when another process holds it."""
        if fcntl is None:
            return True
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """Let go of the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: The verbs that build a folder under a :class:`WorkLock`, as their command line names them.
_BUILDING_VERBS = ("finetune", "import", "export")


def lock_holder(folder: Path) -> str:
    """Who holds ``folder``'s lock, for a message: ``gptclf finetune (pid 123)`` where Linux's
    /proc tells it, else ``another gptclf process``."""
    try:
        st = os.stat(folder)
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "another gptclf process"
    where = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"  # as /proc/locks has it
    for line in locks:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == where:
            pid = fields[4]
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                break
            verb = next((a for a in argv if a in _BUILDING_VERBS), None)
            return f"`gptclf {verb}` (pid {pid})" if verb else f"another process (pid {pid})"
    return "another gptclf process"


def is_locked(folder: Path) -> bool:
    """Whether a live process holds ``folder``'s lock (it is building a run there)."""
    if not folder.is_dir():
        return False
    lock = WorkLock(folder)
    if lock.acquire():
        lock.release()
        return False
    return True


def check_not_a_source(out: Path, sources: dict[str, str | Path | None]) -> None:
    """Refuse an ``out`` that would replace or write into what the command reads.

    ``out`` is replaced whole when it is finished, so it may not be an input, hold one, or lie
    inside an input folder (an import into its own Hugging Face folder would overwrite the model).

    Args:
        out: The folder to write.
        sources: The inputs by the option that names them (None or a name that is not a path on
            disk, such as a preset, is skipped).

    Raises:
        BadInputError: Naming the option whose input would be lost (nothing written).
    """
    target = Path(out).expanduser().resolve()
    for flag, source in sources.items():
        if source is None or not Path(source).expanduser().exists():
            continue
        src = Path(source).expanduser().resolve()
        if target == src or target in src.parents:
            raise BadInputError(
                f"--out {target} would replace {flag} {src}, which this command reads: choose another --out"
            )
        if src.is_dir() and src in target.parents:
            raise BadInputError(
                f"--out {target} is inside {flag} {src}, which this command reads: choose a folder outside it"
            )


def nothing_to_resume(out: Path) -> bool:
    """Whether ``--resume`` finds no interrupted run of ``out`` to continue: no checkpoint (a run
    killed before its first one, or never started), no finished run, and no process building it."""
    work = work_dir(out)
    if has_checkpoint(work) or has_checkpoint(out) or is_locked(work):
        return False
    return not (out / INFO_FILE).is_file()


def check_out(out: Path, *, force: bool, resume: bool) -> None:
    """Refuse what cannot work, writing nothing (also used before ``--devices`` starts processes).

    Raises:
        BadInputError: ``out`` is a file; it holds something and neither ``--force`` nor
            ``--resume`` is given; another process is building this run; ``--resume`` without an
            interrupted run; an interrupted run that would be lost without ``--force``.
    """
    work = work_dir(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder")
    if out.is_dir() and os.path.ismount(out):  # the finished run is renamed onto --out: not a mount
        raise BadInputError(
            f"--out {out} is a mount point, which gptclf cannot replace with the finished run: "
            "name a folder inside it"
        )
    if is_locked(work):
        raise BadInputError(
            f"{lock_holder(work)} is writing {out} right now (its work folder {work} is in use): "
            "wait for it to end or choose another --out"
        )
    interrupted = has_checkpoint(work) or has_checkpoint(out)
    if resume:
        if not interrupted:
            done = (out / INFO_FILE).is_file()
            what = (
                "that run has finished"
                if done
                else f"{work} holds no {CHECKPOINT_NAME} (the whole command with --resume starts the run)"
            )
            raise BadInputError(f"nothing to resume for {out}: {what}")
        return
    if interrupted and not force:
        raise BadInputError(
            f"an interrupted run of {out} is waiting in {work}: pass --resume to continue it, "
            "or --force to discard it and start again"
        )
    if out.is_dir() and not force and any(not _is_temp_file(p.name) for p in out.iterdir()):
        raise BadInputError(
            f"--out {out} is not empty: choose another folder, or pass --force to overwrite it"
        )


class RunBuild:
    """The work folder of one ``finetune`` process: locked while it lives, swapped in by
    :meth:`commit`, kept for ``--resume`` or removed by :meth:`close`.

    Attributes:
        out: The run directory being made.
        path: The work folder (``<parent>/.<name>.partial``).
    """

    def __init__(self, out: Path, path: Path, lock: WorkLock, resumable_at_open: bool) -> None:
        self.out = out
        self.path = path
        self._lock = lock
        self._resumable_at_open = resumable_at_open
        self.committed = False

    @property
    def checkpoint(self) -> Path:
        """Where this run saves its resumable state."""
        return self.path / CHECKPOINT_NAME

    @classmethod
    def open(cls, out: Path, *, force: bool, resume: bool, note: Note) -> RunBuild:
        """Check ``out``, then create (or, for ``--resume``, take over) its work folder and lock it.

        Leftovers are cleaned on the way, each with a note: a half-done swap is finished or undone,
        a dead process's work folder is removed unless ``--resume`` continues it, and stale
        temporary files inside a resumed one are deleted.

        Raises:
            BadInputError: As :func:`check_out`, or the folder cannot be created or written
                (read-only, under a file, no permission): one line, nothing left behind.
        """
        out = Path(out)
        recover(out, note)
        check_out(out, force=force, resume=resume)
        work = work_dir(out)
        if resume and not work.is_dir() and has_checkpoint(out):
            os.rename(out, work)  # a run interrupted by an older gptclf kept its checkpoint in --out
        if work.is_dir() and not resume:
            try:
                shutil.rmtree(work)
            except OSError as exc:  # a read-only folder, no permission: said as any unwritable place
                raise write_error(exc, out.parent) from None
            note(f"removed {work}, left by an earlier run that did not finish")
        created = not work.is_dir()
        lock: WorkLock | None = None
        try:  # whatever stops this (a full disk, a signal), a folder made here goes with it
            work.mkdir(parents=True, exist_ok=True)
            _probe(work)
            lock = WorkLock(work)
            if not lock.acquire():  # another process took it in the moment since check_out
                lock, created = None, False  # theirs: neither released nor removed here
                raise BadInputError(
                    f"{lock_holder(work)} is writing {out} right now: choose another --out"
                )
            # The folder was unlocked: every temporary file in it is a dead process's half write.
            for name in sorted(os.listdir(work)):
                if _is_temp_file(name):
                    _remove(work / name)
                    note(f"removed {work / name}, a temporary file of an interrupted write")
            return cls(out, work, lock, resumable_at_open=has_checkpoint(work))
        except BaseException as exc:
            if lock is not None:
                lock.release()
            if created:
                shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, OSError):
                raise write_error(exc, out.parent) from None
            raise

    def free_bytes(self) -> int:
        """Free space on the work folder's file system."""
        return shutil.disk_usage(self.path).free

    def commit(self) -> None:
        """Swap the finished work folder in as the run directory, keeping the user's own files.

        Raises:
            GptclfError: The swap failed (one line; the work folder is kept for ``--resume``).
        """
        out, work = self.out, self.path
        try:
            if out.is_dir() and any(out.iterdir()):
                for name in user_entries(out):
                    if not (work / name).exists():
                        link_tree(out / name, work / name)
                _swap(work, out)
            else:
                with contextlib.suppress(FileNotFoundError):
                    out.rmdir()  # empty: rename() onto a folder needs it gone on some systems
                os.rename(work, out)
            fsync_folder(out.parent)  # the swap itself must survive a power cut
            (out / CHECKPOINT_NAME).unlink(missing_ok=True)  # kept until now: the run is whole
        except OSError as exc:
            raise write_error(exc, out) from None
        self.committed = True

    def close(self, failed: BaseException | None = None) -> None:
        """Release the lock; after a failure, remove the work folder unless it can be resumed.

        It is kept when it holds a checkpoint (an interrupt, a full disk, a crash after some
        epochs: ``--resume`` goes on), except after a NaN loss in a run that started afresh
        (resuming it would meet the same NaN).
        """
        self._lock.release()
        if self.committed or failed is None:
            return
        from gptclf.errors import TrainingError  # a NaN loss: nothing worth resuming

        keep = has_checkpoint(self.path) and (
            self._resumable_at_open or not isinstance(failed, TrainingError)
        )
        if not keep:
            shutil.rmtree(self.path, ignore_errors=True)


def _remove(path: Path) -> None:
    """Remove a file or a folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _probe(folder: Path) -> None:
    """Write and remove a small file: a read-only or full file system fails here, before work."""
    probe = folder / ".write-test.tmp"
    with open(probe, "wb") as fh:
        fh.write(b"gptclf")
        fh.flush()
        os.fsync(fh.fileno())
    probe.unlink()


def replace_folder(work: Path, out: Path) -> None:
    """Make the finished folder ``work`` the folder ``out`` whole (an old ``out`` is removed), with
    one atomic exchange where the system has it; for outputs other than a run (an export folder).

    Raises:
        OSError: The rename failed (``work`` is left as it was).
    """
    recover(out, lambda _: None)
    if out.exists():
        _swap(work, out)
    else:
        os.rename(work, out)
    fsync_folder(out.parent)


def _swap(work: Path, out: Path) -> None:
    """Make ``work`` the run directory ``out`` and remove the old one."""
    if exchange_paths(work, out):
        shutil.rmtree(work, ignore_errors=True)  # now the old run
        return
    old = _old_dir(out)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)  # a kill here leaves the old run in .<name>.old: recover() puts it back
    os.rename(work, out)
    shutil.rmtree(old, ignore_errors=True)
