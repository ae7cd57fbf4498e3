"""``gptclf download`` end to end: exit codes, stdout/stderr split, --json, mirrors, idempotency."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from gptclf.fetch.artefacts import TOKENIZER_URL_DIR, weights_file
from gptclf.model import config
from gptclf.model.config import valid_model_names
from gptclf.model.tokenizer import TOKENIZER_FILES
from tests.conftest import BPE_DIR
from tests.fetch.test_artefacts import MIRROR, needs_shared_mirror
from tests.fetch.test_http import TINY, WEIGHTS, FileServer, sha, tiny_checkpoint

runner = CliRunner()


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def tiny_gpt2_small(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Make ``gpt2-small`` expect the tiny shape: the real one is 548 MB, too big to serve in a test.

    The CLI takes no model config (only preset names), so the registry is the one place to do it.
    """
    monkeypatch.setitem(config.PRESETS, "gpt2-small", TINY)
    return tiny_checkpoint()


def test_wrong_model_name_exits_2_listing_valid_names(isolated_home: Path) -> None:
    result = runner.invoke(app, ["download", "--model", "gpt3-huge"])
    assert result.exit_code == 2
    assert "gpt3-huge" in result.stderr
    for name in valid_model_names():
        assert name in result.stderr
    assert list(isolated_home.iterdir()) == []  # nothing was fetched before the check


def test_wrong_dataset_exits_2_listing_valid_ones() -> None:
    result = runner.invoke(app, ["download", "--dataset", "imdb"])
    assert result.exit_code == 2
    assert "imdb" in result.stderr
    assert "sms-spam" in result.stderr


def test_missing_mirror_folder_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["download", "--mirror", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.stderr.split())


@pytest.mark.slow
def test_download_from_http_mirror_prints_path_then_skips(
    server: FileServer, tiny_gpt2_small: bytes, tmp_path: Path
) -> None:
    server.files[WEIGHTS] = tiny_gpt2_small
    home = tmp_path / "home"
    args = ["download", "--model", "124M", "--no-tokenizer", "--mirror", server.url, "--home", str(home)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    path = weights_file("gpt2-small", home)
    assert result.stdout.splitlines() == [str(path)]
    assert path.read_bytes() == tiny_gpt2_small
    assert "fetched gpt2-small weights" in result.stderr
    assert "downloading gpt2-small weights" in result.stderr  # plain lines: stderr is not a terminal

    again = runner.invoke(app, args)
    assert again.exit_code == 0
    assert again.stdout.splitlines() == [str(path)]
    assert "already present" in again.stderr
    assert len(server.requests) == 1


def test_mirror_from_the_environment(server: FileServer, tiny_gpt2_small: bytes, isolated_home: Path) -> None:
    server.files[WEIGHTS] = tiny_gpt2_small
    result = runner.invoke(app, ["download", "--no-tokenizer"], env={"GPTCLF_MIRROR": server.url})
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [str(weights_file("gpt2-small", isolated_home))]


def test_404_exits_1_with_one_line_naming_the_url(server: FileServer) -> None:
    result = runner.invoke(app, ["download", "--no-tokenizer", "--mirror", server.url])
    assert result.exit_code == 1
    assert "Traceback" not in result.output + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines  # CI logs and grep need the whole message on one line
    assert f"{server.url}{WEIGHTS}" in lines[0]
    assert "HTTP 404" in lines[0]
    assert "--mirror" in lines[0]
    assert result.stdout == ""


def test_checksum_mismatch_exits_1_and_removes_the_file(server: FileServer, tiny_gpt2_small: bytes) -> None:
    server.files["/blob"] = tiny_gpt2_small
    server.redirects[WEIGHTS] = ("/blob", {"X-Linked-Etag": f'"{sha(b"something else")}"'})
    result = runner.invoke(app, ["download", "--no-tokenizer", "--mirror", server.url])
    assert result.exit_code == 1
    assert "sha256" in result.stderr
    assert "Traceback" not in result.stderr
    path = weights_file("gpt2-small")
    assert not path.exists()
    assert not path.with_name(path.name + ".part").exists()


def test_default_is_tokenizer_and_gpt2_small_as_json(
    server: FileServer, tiny_gpt2_small: bytes, isolated_home: Path
) -> None:
    server.files[WEIGHTS] = tiny_gpt2_small
    for name in TOKENIZER_FILES:
        server.files[f"/{TOKENIZER_URL_DIR}/{name}"] = (BPE_DIR / name).read_bytes()
    result = runner.invoke(app, ["download", "--mirror", server.url, "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tokenizer"] == str(isolated_home / "tokenizer")
    assert report["models"] == {"gpt2-small": str(weights_file("gpt2-small", isolated_home))}
    assert report["datasets"] == {}
    assert [(f["name"], f["fetched"]) for f in report["files"]] == [
        ("encoder.json", True),
        ("vocab.bpe", True),
        ("gpt2-small weights", True),
    ]
    for name, digest in TOKENIZER_FILES.items():
        assert sha((isolated_home / "tokenizer" / name).read_bytes()) == digest


@needs_shared_mirror
def test_dataset_from_the_shared_mirror_folder(isolated_home: Path) -> None:
    result = runner.invoke(app, ["download", "--dataset", "sms-spam", "--mirror", str(MIRROR)])
    assert result.exit_code == 0, result.stderr
    data = isolated_home / "datasets" / "sms-spam" / "SMSSpamCollection"
    assert result.stdout.splitlines() == [str(isolated_home / "tokenizer"), str(data)]
    assert len(data.read_bytes().splitlines()) == 5574


@pytest.mark.slow
def test_a_local_model_folder_is_checked_not_fetched(tmp_path: Path, isolated_home: Path) -> None:
    from tests.hf_helpers import hf_folder

    hf_folder(tmp_path / "m", "GPT2LMHeadModel")
    result = runner.invoke(app, ["download", "--no-tokenizer", "--model", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.stderr
    models = json.loads(result.stdout)["models"]
    assert models == {str((tmp_path / "m").resolve()): str((tmp_path / "m" / "model.safetensors").resolve())}
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    result = runner.invoke(app, ["download", "--no-tokenizer", "--model", str(tmp_path / "m")])
    assert result.exit_code == 2 and "model_type 'bert' is not 'gpt2'" in " ".join(result.stderr.split())
    assert list(isolated_home.iterdir()) == []


def test_a_home_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    home = tmp_path / "afile"
    home.write_text("not a folder")
    result = runner.invoke(app, ["download", "--home", str(home), "--no-tokenizer", "--dataset", "sms-spam"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "cannot write into" in result.stderr and "Not a directory" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and home.read_text() == "not a folder"
