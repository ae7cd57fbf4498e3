"""An ONNX export folder as the ONNX Runtime engine reads it: :func:`read_export` checks its record
(``gptclf-onnx.json``) and the graph's sha256, and returns an :class:`OnnxExport`.

The folder is written by :func:`gptclf.engines.onnx_build.export_onnx`; what it holds is described
there. The names and the record's format live here, with the reader, so that the engine that runs
an export needs nothing of the exporter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tiktoken

from gptclf.engines.onnx_session import INPUTS, OUTPUT
from gptclf.errors import BadInputError
from gptclf.fileio import sha256_file
from gptclf.model.tokenizer import load_tokenizer
from gptclf.rundir import run_info_problems
from gptclf.rundir.files import RunInfoFields

ONNX_FILE = "model.onnx"
#: Where a graph over protobuf's limit keeps its weights.
DATA_FILE = f"{ONNX_FILE}.data"
EXPORT_INFO_FILE = "gptclf-onnx.json"
EXPORT_FORMAT = "gptclf-onnx"
#: The newest export layout this code reads and the one it writes.
EXPORT_FORMAT_VERSION = 1
QUANTIZATIONS = ("int8",)


def digests(folder: Path) -> dict[str, str]:
    """The sha256 of ``model.onnx`` (``sha256``) and of its external weights where it has them
    (``data_sha256``), as the record keeps them."""
    digests = {"sha256": sha256_file(folder / ONNX_FILE)}
    data = folder / DATA_FILE
    if data.is_file():
        digests["data_sha256"] = sha256_file(data)
    return digests


def verify_graph(path: Path, record: dict[str, Any]) -> None:
    """Check ``model.onnx`` (and its external weights) against the sha256 the record keeps, as
    run.json's ``weights_sha256`` is checked; a record without them (written before they were
    kept) is trusted as it was.

    Raises:
        BadInputError: A file's sha256 differs: it was damaged, or replaced by another export's.
    """
    onnx_part = record.get("onnx") or {}
    for key, name in (("sha256", ONNX_FILE), ("data_sha256", DATA_FILE)):
        expected = onnx_part.get(key)
        if expected is None:
            continue
        file = path / name
        if not file.is_file() or sha256_file(file) != expected:
            raise BadInputError(
                f"{file} does not match the sha256 recorded in {EXPORT_INFO_FILE} (the file is damaged "
                "or was replaced, e.g. by another export's): export the run again"
            )


@dataclass
class OnnxExport(RunInfoFields):
    """An export folder read back: its record, the run's run.json (``info``) and the tokenizer.

    It answers what :class:`gptclf.inference.predict.Predictor` asks of a run (``path``, ``info``,
    ``tokenizer``, ``classes``, ``max_length``, ``pad_length``); the model is ``model_path``.
    """

    path: Path
    record: dict[str, Any]
    info: dict[str, Any]
    tokenizer: tiktoken.Encoding

    @property
    def model_path(self) -> Path:
        return self.path / ONNX_FILE

    @property
    def quantize(self) -> str | None:
        return self.record.get("quantize")


def is_export(path: Path) -> bool:
    """Whether ``path`` is an ONNX export folder (it has gptclf-onnx.json)."""
    return (Path(path) / EXPORT_INFO_FILE).is_file()


def _record_problems(record: Any) -> list[str]:
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        return [f"it is not a gptclf ONNX export (format must be {EXPORT_FORMAT!r})"]
    version = record.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= EXPORT_FORMAT_VERSION:
        return [f"format_version {version!r} is not one this gptclf reads (1..{EXPORT_FORMAT_VERSION})"]
    problems = []
    if record.get("quantize") not in (None, *QUANTIZATIONS):
        problems.append(f"quantize must be null or one of {', '.join(QUANTIZATIONS)}")
    onnx_part = record.get("onnx")
    if not isinstance(onnx_part, dict) or onnx_part.get("inputs") != list(INPUTS):
        problems.append(f"onnx.inputs must be {list(INPUTS)}")
    elif onnx_part.get("output") != OUTPUT:
        problems.append(f"onnx.output must be {OUTPUT!r}")
    else:
        problems += [
            f"onnx.{key} must be a sha256 (64 hex digits)"
            for key in ("sha256", "data_sha256")
            if key in onnx_part and not _is_sha256(onnx_part[key])
        ]
    problems += [f"run.{p}" for p in run_info_problems(record.get("run"))]
    return problems


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def read_export(path: Path) -> OnnxExport:
    """Read an export folder's record and tokenizer; the graph is checked against the record's
    sha256 here (:func:`verify_graph`) and its inputs and outputs when a session opens it.

    Raises:
        BadInputError: The record is unreadable or malformed, a file is missing, or the graph is
            not the one the record was written with.
    """
    path = Path(path)
    info_file = path / EXPORT_INFO_FILE
    try:
        record = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{info_file} is unreadable ({exc}): export the run again") from None
    problems = _record_problems(record)
    if problems:
        raise BadInputError(f"{info_file} is not a valid export record: {'; '.join(problems)}")
    if not (path / ONNX_FILE).is_file():
        raise BadInputError(f"{path / ONNX_FILE} is missing: export the run again")
    verify_graph(path, record)
    return OnnxExport(path, record, record["run"], load_tokenizer(path))
