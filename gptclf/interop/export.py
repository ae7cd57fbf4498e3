"""Writing an export folder safely: ``gptclf export RUN --format transformers|onnx --out DIR``.

Every check comes before anything is written: the run must load (complete, a format this gptclf
reads, weights matching run.json), the format must be able to express it, and ``--out`` must be
free (or ``--force`` given). The folder is then written into a work folder beside it
(``<parent>/.<name>.partial``, locked while it is written) and renamed into place whole at the end
(an old ``--out`` is swapped out atomically where the system allows). So an interrupted export
leaves no ``DIR`` (or the old one), and the next export removes the work folder a killed one left.

The formats' writers own their files: :func:`gptclf.interop.transformers_export.export_transformers` and
``gptclf.engines.onnx_build.export_onnx`` (the onnx extra), each writing into the work folder it is given.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptclf.data.long_texts import stored_long_texts
from gptclf.errors import BadInputError, write_error
from gptclf.rundir import (
    METRICS_FILE,
    LoadedRun,
    WorkLock,
    check_finite_weights,
    is_locked,
    load_run,
    lock_holder,
    replace_folder,
    work_dir,
)

FORMATS = ("transformers", "onnx")
QUANTIZE = ("none", "int8")
ONNX_HINT = "--format onnx needs the onnx extra: pip install 'gptclf[onnx]'"

Writer = Callable[[LoadedRun, Path], None]
Note = Callable[[str], None]


def option_problems(fmt: str, quantize: str) -> list[str]:
    """What is wrong with ``--format`` and ``--quantize`` (empty: nothing)."""
    problems = []
    if fmt not in FORMATS:
        problems.append(f"unknown --format {fmt!r}: use one of {', '.join(FORMATS)}")
    if quantize not in QUANTIZE:
        problems.append(f"unknown --quantize {quantize!r}: use one of {', '.join(QUANTIZE)}")
    elif quantize != "none" and fmt == "transformers":
        problems.append(f"--quantize {quantize} needs --format onnx (a transformers folder is fp32)")
    return problems


def long_texts_warning(run: LoadedRun, fmt: str) -> str | None:
    """The warning for a transformers export of a run that reads long texts other than by
    truncation (transformers' pipeline truncates; config.json records the setting), else None."""
    long = stored_long_texts(run.info)
    if fmt != "transformers" or long.mode == "truncate":
        return None
    return (
        f"gptclf: warning: the run reads texts longer than {run.max_length} tokens as {long.describe()}; "
        "plain transformers truncates them, so its predictions of long texts differ (`gptclf import` "
        "restores the setting from config.json's gptclf.long_texts)"
    )


def _read_metrics(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # the card then says the run recorded none
    return data if isinstance(data, dict) else None


def writer_for(fmt: str, quantize: str) -> Writer:
    """The function that writes ``fmt`` into a work folder (the onnx one is imported here, so a
    missing extra is said before anything is written).

    Raises:
        BadInputError: ``onnx`` without the onnx extra installed.
    """
    if fmt == "transformers":
        from gptclf.interop.transformers_export import export_transformers

        return lambda run, folder: export_transformers(run, folder, _read_metrics(run.path))
    try:
        module = importlib.import_module("gptclf.engines.onnx_build")
    except ModuleNotFoundError as exc:
        raise BadInputError(f"{ONNX_HINT} ({exc.name} is not installed)") from None
    export_onnx = module.export_onnx
    return lambda run, folder: export_onnx(run, folder, quantize=None if quantize == "none" else quantize)


def check_export_out(out: Path, run_dir: Path, *, force: bool) -> None:
    """Refuse an ``--out`` that cannot or may not be written (writes nothing).

    Raises:
        BadInputError: ``out`` is a file; it is the run itself, holds it or is inside it; another
            export is writing it; it is not empty and ``--force`` is not given.
    """
    out, run_dir = Path(out).resolve(), Path(run_dir).resolve()
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} is a file, not a folder: choose a folder")
    if out == run_dir or out in run_dir.parents:
        raise BadInputError(f"--out {out} would replace the run {run_dir} itself: choose another folder")
    if run_dir in out.parents:
        raise BadInputError(
            f"--out {out} is inside the run {run_dir}: a run folder holds only its own files; "
            "choose a folder outside it"
        )
    if out.is_dir() and os.path.ismount(out):  # the finished folder is renamed onto --out
        raise BadInputError(
            f"--out {out} is a mount point, which gptclf cannot replace with the export: "
            "name a folder inside it"
        )
    if is_locked(work_dir(out)):
        raise BadInputError(
            f"{lock_holder(work_dir(out))} is writing {out} right now: wait for it or choose another --out"
        )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise BadInputError(
            f"--out {out} exists and is not empty: choose another folder, or pass --force to replace it"
        )


def export_run(
    run_dir: Path,
    out: Path,
    *,
    fmt: str = "transformers",
    quantize: str = "none",
    force: bool = False,
    note: Note | None = None,
) -> Path:
    """Export the run ``run_dir`` into the folder ``out``, all or nothing.

    Args:
        run_dir: A finished run directory.
        out: The folder to write (replaced whole with ``force``).
        fmt: ``transformers`` or ``onnx``.
        quantize: ``none`` or ``int8`` (onnx only).
        force: Replace a non-empty ``out``.
        note: Told about leftovers removed on the way.

    Returns:
        ``out``, resolved.

    Raises:
        BadInputError: A bad option, a run that does not load or cannot be expressed, an ``out``
            that may not be written (one line each; nothing is written).
        GptclfError: The run's weights hold NaN or infinite values (nothing is written).
    """
    note = note or (lambda _: None)
    if problems := option_problems(fmt, quantize):
        raise BadInputError("; ".join(problems))
    run = load_run(Path(run_dir))  # incomplete, newer, damaged: refused here
    if fmt == "transformers":
        from gptclf.interop.transformers_export import export_problems

        if problems := export_problems(run):  # said before any folder is made
            raise BadInputError("; ".join(problems))
    writer = writer_for(fmt, quantize)
    out = Path(out).expanduser().resolve()
    check_export_out(out, run.path, force=force)
    check_finite_weights(run)  # the writers check too (for library use): here before any folder
    if warning := long_texts_warning(run, fmt):
        note(warning)
    work = work_dir(out)
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
        note(f"removed {work}, left by an export that did not finish")
    lock = WorkLock(work)
    done = made = False
    try:  # from the folder's making on, whatever stops the export (a signal too) removes it
        made = True  # before the mkdir: a signal that lands just after it must find the flag set
        try:
            work.mkdir(parents=True)
        except FileExistsError:  # another export made it in the moment since the check
            made = False
            busy = f"{lock_holder(work)} is writing {out} right now: choose another --out"
            raise BadInputError(busy) from None
        except OSError as exc:
            raise write_error(exc, out.parent) from None
        if not lock.acquire():
            made = False  # another process's folder: not ours to remove
            raise BadInputError(f"{lock_holder(work)} is writing {out} right now: choose another --out")
        writer(run, work)
        replace_folder(work, out)
        done = True
    except OSError as exc:
        raise write_error(exc, out) from None
    finally:
        lock.release()
        if made and not done:
            shutil.rmtree(work, ignore_errors=True)
    return out
