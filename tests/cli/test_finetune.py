"""`gptclf finetune` end to end: learnable data, the default SMS job, a real Ctrl-C, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli.main import app
from gptclf.model.config import GPTConfig, resolve_model
from gptclf.model.weights import expected_hf_shapes
from gptclf.rundir import work_dir
from tests.conftest import REPO, SHARED
from tests.finetune_helpers import TINY_SPEC, install_tokenizer, prepared_folder

MIRROR = SHARED / "mirror"
TINY = ["--model", TINY_SPEC, "--weights", "random", "--device", "cpu"]
LEARN = [*TINY, "--trainable", "all", "--lr", "2e-3", "--epochs", "5"]
runner = CliRunner()


def finetune(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["finetune", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "classes", [["spam", "ham"], ["spam", "ham", "other"]], ids=["2 classes", "3 classes"]
)
@pytest.mark.slow
def test_a_tiny_model_learns_and_evaluate_agrees(tmp_path: Path, classes: list[str]) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, classes, n=300)
    out = tmp_path / "run"
    code, stdout, stderr = finetune("--data", str(data), *LEARN, "--out", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["best_val_acc"] >= 0.95 and summary["test_accuracy"] >= 0.9
    assert summary["classes"] == classes and summary["run_dir"] == str(out.resolve())
    assert "trainable scope all" in stderr and "val acc" in stderr  # progress lines on stderr
    evaluated = runner.invoke(app, ["evaluate", str(out), "--split", "test", "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["accuracy"] == pytest.approx(summary["test_accuracy"])


@pytest.mark.slow
def test_human_summary_on_stdout(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    code, stdout, _ = finetune("--data", str(data), *TINY, "--epochs", "1", "--out", str(tmp_path / "run"))
    assert code == 0
    assert "test: accuracy" in stdout and "trained 6 steps" in stdout and "cache of 1 block in" in stdout


def test_tokenising_shows_its_progress_on_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptclf.inference import token_ids

    monkeypatch.setattr(token_ids, "SHOW_AFTER", 0.0)  # shown at once, not only after two seconds
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    code, _, stderr = finetune("--data", str(data), *TINY, "--epochs", "1", "--out", str(tmp_path / "run"))
    assert code == 0, stderr
    lines = stderr.splitlines()
    # Off a terminal: the step's first line (its total known), between the model line and training.
    begin = lines.index("tokenising (60 texts)")
    assert any(line.startswith("model custom") for line in lines[:begin])


@pytest.mark.skipif(
    not (MIRROR / "static" / "public" / "228" / "sms+spam+collection.zip").is_file(),
    reason=f"no download mirror with the SMS archive at {MIRROR} (../shared is absent)",
)
@pytest.mark.slow
def test_the_default_job_downloads_and_prepares_the_sms_set(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code, stdout, stderr = finetune(
        "--classes", "spam,ham", *TINY, "--epochs", "1", "--out", str(out), "--mirror", str(MIRROR), "--json"
    )
    assert code == 0, stderr
    info = json.loads((out / "run.json").read_text())
    assert info["data"]["sizes"] == {"train": 1045, "validation": 149, "test": 300}  # the book's split
    assert info["data"]["dir"] == str(out / "data") and info["classes"] == ["spam", "ham"]
    assert json.loads(stdout)["test"]["n"] == 300


@pytest.mark.skipif(
    not (MIRROR / "gpt-2" / "encodings" / "main" / "encoder.json").is_file(),
    reason=f"no download mirror with the tokenizer files at {MIRROR} (../shared is absent)",
)
@pytest.mark.slow
def test_downloads_show_the_same_progress_as_gptclf_download(tmp_path: Path) -> None:
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    args = ["--data", str(data), *TINY, "--epochs", "1", "--mirror", str(MIRROR)]
    code, _, stderr = finetune(*args, "--out", str(tmp_path / "run"))
    assert code == 0, stderr
    for name in ("encoder.json", "vocab.bpe"):  # the plain lines of `gptclf download` off a terminal
        assert f"downloading {name} (" in stderr and f"fetched {name}: " in stderr
        assert f"{name}: 100% " in stderr
    code, _, stderr = finetune(*args, "--out", str(tmp_path / "again"))
    assert code == 0 and "downloading" not in stderr and "already present" not in stderr  # nothing new


@pytest.mark.slow
def test_ctrl_c_then_resume_gives_the_same_weights(tmp_path: Path, isolated_home: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=300)
    common = ["--data", str(data), *LEARN, "--eval-every", "2"]
    run = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "finetune", *common, "--out", str(run)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("epoch 1/5 step"):  # training is under way
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "SIGINT at step" in stderr and "--resume" in stderr
    # --out stays as it was (absent); the interrupted run waits in its work folder beside it.
    assert not run.exists() and (work_dir(run) / "checkpoint.pt").is_file()
    code, _, stderr = finetune("--out", str(run), "--resume")
    assert code == 0, stderr
    assert not (run / "checkpoint.pt").exists()
    code, _, _ = finetune(*common, "--out", str(tmp_path / "straight"))
    assert code == 0
    resumed, straight = (
        load_file(run / "model.safetensors"),
        load_file(tmp_path / "straight" / "model.safetensors"),
    )
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    code, _, stderr = finetune("--out", str(run), "--resume")
    assert code == 2 and "that run has finished" in stderr


@pytest.mark.slow
def test_lora_options_without_lora_are_a_warning(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    args = ["--data", str(data), *TINY, "--epochs", "1", "--lora-rank", "4"]
    code, _, stderr = finetune(*args, "--out", str(tmp_path / "run"))
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("gptclf: warning:")]
    assert warnings == [
        "gptclf: warning: --lora-rank applies only with --trainable lora; ignored for --trainable last-block"
    ]
    code, _, stderr = finetune(*args, "--trainable", "lora", "--out", str(tmp_path / "lora"))
    assert code == 0 and "warning" not in stderr


@pytest.mark.slow
def test_config_file_and_command_line(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    config = tmp_path / "job.toml"
    config.write_text(f'data = "{data}"\nepochs = 1\nbatch-size = 4\nlr = 1e-3\nmodel = "{TINY_SPEC}"\n')
    code, _, stderr = finetune(
        "--config", str(config), "--weights", "random", "--epochs", "2", "--out", str(tmp_path / "r")
    )
    assert code == 0, stderr
    train = json.loads((tmp_path / "r" / "run.json").read_text())["train"]
    assert (train["epochs"], train["batch_size"], train["lr"]) == (2, 4, 1e-3)


@pytest.mark.slow
def test_an_existing_run_is_not_overwritten_without_force(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["--data", str(data), *TINY, "--epochs", "1", "--out", str(out)]
    code, _, stderr = finetune(*args)
    assert code == 2 and "not empty" in stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    code, _, _ = finetune(*args, "--force")
    assert code == 0 and (out / "model.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trainable", "most"], "unknown trainable scope"),
        (["--precision", "fp16"], "fp16 needs a CUDA GPU"),
        (["--pooling", "first"], "unknown pooling"),
        (["--pad-to", "longest"], "--pad-to 'longest'"),
        (["--max-length", "0"], "--max-length must be in"),
        (["--model", "gpt2-tiny"], "unknown model"),
        (["--classes", "up,down"], "does not match the classes"),
        (["--data", "no-such-folder"], "no such folder"),
        (["--cache-memory", "lots"], "not a size"),
        (["--cache-memory", "3ib"], "--cache-memory '3ib' is not a size"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--config", "UNKNOWN_KEYS"], "unknown keys learning-rate"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    if args == ["--config", "UNKNOWN_KEYS"]:
        (tmp_path / "bad.toml").write_text("learning-rate = 0.1\n")
        args = ["--config", str(tmp_path / "bad.toml")]
    out = tmp_path / "run"
    code, stdout, stderr = finetune("--data", str(data), *TINY, *args, "--out", str(out))
    assert code == 2, stderr
    assert message in stderr and stderr.startswith("gptclf: error:") and "Traceback" not in stderr
    assert stdout == "" and not out.exists()


def test_cuda_without_a_gpu_exits_2(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, stderr = finetune("--device", "cuda", "--out", str(tmp_path / "run"))
    assert code == 2 and "no CUDA GPU" in stderr and not (tmp_path / "run").exists()


def test_nan_loss_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    # Weights with a NaN final norm: every option is in range (a huge --lr is refused up front), yet
    # the loss is NaN from the first step.
    _, cfg = resolve_model(TINY_SPEC)
    tensors = {name: torch.randn(shape) * 0.02 for name, shape in expected_hf_shapes(cfg).items()}
    tensors["transformer.ln_f.weight"].fill_(float("nan"))
    save_file(tensors, tmp_path / "nan.safetensors")
    out = tmp_path / "run"
    code, _, stderr = finetune(
        "--data", str(data), *TINY, "--weights", str(tmp_path / "nan.safetensors"), "--trainable", "all",
        "--out", str(out),
    )  # fmt: skip
    assert code == 1 and "loss became nan at step" in stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "messages"),
    [
        (["--warmup", "nan"], ["--warmup must be >= 0 and finite (got nan)"]),
        (["--warmup", "inf"], ["--warmup must be >= 0 and finite (got inf)"]),
        (["--warmup", "2.5"], ["--warmup must be a fraction (< 1) or a whole number"]),
        (["--weight-decay", "nan"], ["--weight-decay must be >= 0 and finite (got nan)"]),
        (["--weight-decay", "inf"], ["--weight-decay must be >= 0 and finite (got inf)"]),
        (["--weight-decay", "1e5"], ["keep weight-decay below 1 / lr"]),
        (["--lr", "inf"], ["--lr must be > 0 and <= 1 (got inf)"]),
        (["--lr", "1e30"], ["--lr must be > 0 and <= 1 (got 1e+30)"]),
        (["--lr", "nan"], ["--lr must be > 0 and <= 1 (got nan)"]),
        (["--clip-grad", "nan"], ["--clip-grad must be > 0 and finite (got nan)"]),
        (["--clip-grad", "inf"], ["--clip-grad must be > 0 and finite (got inf)"]),
        (["--dist-timeout", "nan"], ["--dist-timeout must be > 0 and finite (got nan)"]),
        (["--dist-timeout", "inf"], ["--dist-timeout must be > 0 and finite (got inf)"]),
        (["--dist-timeout", "0"], ["--dist-timeout must be > 0 and finite (got 0)"]),
        (["--lora-alpha", "nan"], ["--lora-alpha must be a finite number > 0 (got nan)"]),
        (["--trainable", "lora", "--lora-rank", "0"], ["--lora-rank must be >= 1"]),
        (
            ["--lr", "inf", "--warmup", "nan", "--dist-timeout", "nan", "--clip-grad", "-1"],
            ["--dist-timeout must be", "--lr must be", "--warmup must be", "--clip-grad must be"],
        ),
        (
            ["--config", "TOML"],
            ["--lr must be > 0 and <= 1 (got inf)", "--warmup must be >= 0 and finite (got nan)"],
        ),
    ],
)
def test_every_number_is_checked_up_front(tmp_path: Path, args: list[str], messages: list[str]) -> None:
    """Bad numbers (NaN, infinities, out of range, on the command line or in TOML) are one line, exit 2."""
    install_tokenizer()
    data = prepared_folder(tmp_path, ["spam", "ham"], n=40)
    if args == ["--config", "TOML"]:
        (tmp_path / "config-file.toml").write_text("lr = inf\nwarmup = nan\n")  # TOML has both literals
        args = ["--config", str(tmp_path / "config-file.toml")]
    out = tmp_path / "run"
    code, stdout, stderr = finetune("--data", str(data), *TINY, *args, "--out", str(out))
    assert code == 2, stderr
    assert stderr.startswith("gptclf: error:") and stderr.count("\n") == 1, stderr  # one line
    assert all(m in stderr for m in messages), stderr
    assert stdout == "" and not out.exists()


@pytest.mark.slow
def test_a_transformers_gpt2_folder_is_a_base_model(tmp_path: Path) -> None:
    from gptclf.model.weights import load_pretrained
    from tests.hf_helpers import TINY_HF, hf_folder

    install_tokenizer()
    hf_folder(tmp_path / "base", "GPT2LMHeadModel")
    data = prepared_folder(tmp_path, ["spam", "ham"], n=60)
    out = tmp_path / "run"
    args = ["--data", str(data), "--model", str(tmp_path / "base"), "--device", "cpu", "--epochs", "1"]
    code, _, stderr = finetune(*args, "--trainable", "head", "--out", str(out))
    assert code == 0, stderr
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["name"] == str((tmp_path / "base").resolve()) and info["weights"] == "pretrained"
    config = info["model"]["config"]
    assert (config["n_positions"], config["layer_norm_epsilon"]) == (48, 1e-6) and info["max_length"] == 48
    # The folder's weights were trained from (--trainable head leaves the trunk as it was loaded).
    base = load_pretrained(GPTConfig(**{**TINY_HF}), tmp_path / "base" / "model.safetensors")
    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(
        saved["transformer.h.1.mlp.c_fc.weight"], base.state_dict()["transformer.h.1.mlp.c_fc.weight"]
    )
    predicted = runner.invoke(app, ["predict", str(out), "--device", "cpu", "win a prize"])
    assert predicted.exit_code == 0, predicted.stderr


def test_a_folder_that_is_not_gpt2_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from tests.hf_helpers import hf_folder

    hf_folder(tmp_path / "base", "GPT2Model", activation_function="relu")
    code, _, stderr = finetune("--model", str(tmp_path / "base"), "--out", str(tmp_path / "run"))
    assert code == 2 and "activation_function 'relu'" in " ".join(stderr.split())
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()
