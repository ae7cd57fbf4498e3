from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from gptclf.errors import GptclfError
from gptclf.interop import export as exportdir
from gptclf.interop.export import export_run
from gptclf.rundir import load_run
from tests.inference.test_predict import make_run, nan_run
from tests.interop.test_transformers_export import export


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", max_length=12)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_incomplete_run_is_one_line_and_writes_nothing(tmp_path: Path, run: Path) -> None:
    (run / "vocab.bpe").unlink()
    code, err = export(run, tmp_path / "hf")
    assert code == 2 and "not a complete gptclf run (missing vocab.bpe)" in err
    assert names(tmp_path) == ["run"]


def test_a_newer_run_format_is_one_line(tmp_path: Path, run: Path) -> None:
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "format_version": 99}))
    code, err = export(run, tmp_path / "hf")
    assert code == 2 and "format_version 99 is newer than this gptclf reads: upgrade gptclf" in err
    assert names(tmp_path) == ["run"]


def test_an_existing_out_needs_force(tmp_path: Path, run: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    (out / "old.txt").write_text("old")
    code, err = export(run, out)
    assert code == 2 and "exists and is not empty" in err and "--force" in err
    assert names(out) == ["old.txt"]
    assert export(run, out, "--force")[0] == 0
    assert "old.txt" not in names(out) and "config.json" in names(out)  # replaced whole
    assert names(tmp_path) == ["hf", "run"]  # no work folder left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantize", "int8"], "--quantize int8 needs --format onnx"),
        (["--format", "tflite"], "unknown --format 'tflite'"),
        (["--quantize", "int4", "--format", "onnx"], "unknown --quantize 'int4'"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, run: Path, args: list[str], message: str) -> None:
    code, err = export(run, tmp_path / "hf", *args)
    assert code == 2 and message in err
    assert names(tmp_path) == ["run"]


def test_out_may_not_be_the_run_itself(tmp_path: Path, run: Path) -> None:
    code, err = export(run, run, "--force")
    assert code == 2 and "would replace the run" in err
    assert "run.json" in names(run)


def test_onnx_without_the_extra_is_one_line(
    tmp_path: Path, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "gptclf.engines.onnx_build", None)  # as if it could not be imported
    code, err = export(run, tmp_path / "onnx", "--format", "onnx")
    assert code == 2 and "pip install 'gptclf[onnx]'" in err
    assert names(tmp_path) == ["run"]


def test_onnx_is_written_by_its_module_into_the_work_folder(
    tmp_path: Path, run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def export_onnx(loaded: object, work_dir: Path, *, quantize: str | None) -> None:
        calls.append((work_dir.name, quantize))
        (work_dir / "model.onnx").write_bytes(b"onnx")

    fake = types.SimpleNamespace(export_onnx=export_onnx)
    monkeypatch.setitem(sys.modules, "gptclf.engines.onnx_build", fake)
    assert export(run, tmp_path / "onnx", "--format", "onnx", "--quantize", "int8")[0] == 0
    assert calls == [(".onnx.partial", "int8")] and names(tmp_path / "onnx") == ["model.onnx"]


@pytest.mark.parametrize("old", [False, True])
def test_an_interrupted_export_leaves_no_folder_or_the_old_one(
    tmp_path: Path, run: Path, monkeypatch: pytest.MonkeyPatch, old: bool
) -> None:
    out = tmp_path / "hf"
    if old:
        export_run(run, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()} if old else None

    def killed(loaded: object, work: Path) -> None:
        (work / "config.json").write_text("{half")
        raise KeyboardInterrupt

    monkeypatch.setattr(exportdir, "writer_for", lambda fmt, quantize: killed)
    with pytest.raises(KeyboardInterrupt):
        export_run(run, out, force=True)
    assert names(tmp_path) == (["hf", "run"] if old else ["run"])
    if old:
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_killed_exports_work_folder_is_removed_by_the_next(tmp_path: Path, run: Path) -> None:
    leftover = tmp_path / ".hf.partial"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    notes: list[str] = []
    export_run(run, tmp_path / "hf", note=notes.append)
    assert names(tmp_path) == ["hf", "run"] and "left by an export that did not finish" in notes[0]


def test_an_out_inside_the_run_is_refused_and_nothing_is_written(tmp_path: Path, run: Path) -> None:
    before = names(run)
    for out in (run / "exp", run / "deeper" / "exp"):
        code, err = export(run, out)
        assert code == 2 and f"--out {out} is inside the run" in err and err.count("error:") == 1
        assert names(run) == before  # no folder, no work folder
    assert names(tmp_path) == ["run"]


@pytest.mark.parametrize("fmt", ["transformers", "onnx"])
def test_a_run_with_nan_weights_is_refused_by_every_export(tmp_path: Path, fmt: str) -> None:
    if fmt == "onnx":
        for module in ("onnx", "onnxruntime", "onnxscript"):
            pytest.importorskip(module, reason="the onnx extra is not installed")
    run = nan_run(tmp_path / "run")
    code, err = export(run, tmp_path / "out", "--format", fmt)
    assert code == 1 and "NaN or infinite weights" in err and err.count("error:") == 1
    assert names(tmp_path) == ["run"]
    (tmp_path / "work").mkdir()
    with pytest.raises(GptclfError, match="NaN or infinite weights"):  # the writers check it too
        exportdir.writer_for(fmt, "none")(load_run(run), tmp_path / "work")
    assert names(tmp_path / "work") == []


# --- issue 18 items 7 and 8: full and read-only disks, a mount point, a folder another verb holds ----


@pytest.mark.parametrize("disk", ["full", "read-only"])
@pytest.mark.parametrize("verb", ["export", "import"])
@pytest.mark.slow
def test_a_full_or_read_only_disk_is_one_line_and_leaves_nothing(
    tmp_path: Path, run: Path, disk: str, verb: str
) -> None:
    from tests.fault_helpers import cli, fill, tmpfs

    source = run
    if verb == "import":
        assert export(run, tmp_path / "hf")[0] == 0
        source = tmp_path / "hf"
    with tmpfs(tmp_path / "disk", "8m", read_only=disk == "read-only") as mount:
        if disk == "full":
            fill(mount, keep=256 << 10)  # room for the work folder, not for the weights
        before = names(mount)
        code, _, stderr = cli(verb, str(source), "--out", str(mount / "out"))
        assert names(mount) == before  # no folder, no work folder, no temporary file
    assert code == (1 if disk == "full" else 2), stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert ("no space left" if disk == "full" else "cannot write") in stderr


@pytest.mark.parametrize("read_only", [False, True])
def test_an_out_that_is_a_mount_point_is_refused_before_any_work(
    tmp_path: Path, run: Path, read_only: bool
) -> None:
    from tests.fault_helpers import cli, tmpfs

    with tmpfs(tmp_path / "mnt", "1m", read_only=read_only) as mount:
        code, _, stderr = cli("export", str(run), "--out", str(mount), "--force")
        assert names(mount) == []
    assert code == 2 and "mount point" in stderr, stderr
    assert names(tmp_path) == ["mnt", "run"]  # no .mnt.partial either


@pytest.mark.slow
def test_the_message_names_the_verb_that_holds_the_folder(tmp_path: Path, run: Path) -> None:
    from gptclf.rundir import is_locked, work_dir
    from tests.fault_helpers import LEARN, cli, spawn, wait_for
    from tests.finetune_helpers import install_tokenizer, prepared_folder

    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=120)
    out = tmp_path / "busy"
    proc = spawn("finetune", "--data", str(data), *LEARN, "--out", str(out), cwd=tmp_path)
    try:
        assert wait_for(proc, lambda: is_locked(work_dir(out)))
        code, _, stderr = cli("export", str(run), "--out", str(out), "--force")
    finally:
        proc.kill()
        proc.wait()
    assert code == 2 and f"`gptclf finetune` (pid {proc.pid}) is writing" in " ".join(stderr.split())
