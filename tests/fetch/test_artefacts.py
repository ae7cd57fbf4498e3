"""The artefacts: what comes from where, the mirror rule, the tokenizer, the SMS set, the checks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gptclf.errors import BadInputError, DownloadError
from gptclf.fetch.artefacts import (
    SMS_HOSTS,
    SMS_URL_PATH,
    TOKENIZER_URL_DIR,
    base_weights,
    ensure_sms_spam,
    ensure_tokenizer,
    ensure_weights,
    mirror_location,
    resolve_mirror,
    sms_spam_path,
    tokenizer_artefacts,
    weights_artefact,
    weights_file,
)
from gptclf.model.config import GPTConfig
from gptclf.model.tokenizer import TOKENIZER_FILES
from tests.conftest import BPE_DIR, SHARED
from tests.fetch.test_archive import DATA, make_zip
from tests.fetch.test_http import (
    FAST,
    TINY,
    WEIGHTS,
    FileServer,
    Recorder,
    cached_weights,
    dead_url,
    sha,
    tiny_checkpoint,
)

MIRROR = SHARED / "mirror"
needs_shared_mirror = pytest.mark.skipif(
    not (MIRROR / SMS_URL_PATH).is_file(), reason=f"no local mirror at {MIRROR} (../shared is absent)"
)


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def checkpoint() -> bytes:
    return tiny_checkpoint()


def test_checkpoint_of_another_shape_is_refused(server: FileServer, checkpoint: bytes) -> None:
    server.files[WEIGHTS] = checkpoint
    wider = GPTConfig(vocab_size=256, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    with pytest.raises(DownloadError, match="does not fit"):
        ensure_weights("gpt2-small", config=wider, hosts=[server.url], retry=FAST)
    assert not cached_weights().exists()


def test_truncated_checkpoint_is_refused_when_no_size_is_stated(tmp_path: Path, checkpoint: bytes) -> None:
    # A folder mirror states no size or hash: the safetensors header's extent catches the cut.
    mirror = tmp_path / "mirror"
    (mirror / WEIGHTS.lstrip("/")).parent.mkdir(parents=True)
    (mirror / WEIGHTS.lstrip("/")).write_bytes(checkpoint[:-64])
    with pytest.raises(DownloadError, match="header describes"):
        ensure_weights("gpt2-small", mirror=str(mirror), config=TINY)
    assert not cached_weights().exists()


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(BadInputError, match="gpt2-small, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2, 124M"):
        ensure_weights("gpt3")


# --- mirrors ------------------------------------------------------------------------------------


def test_mirror_rule_maps_public_urls_to_mirror_paths(tmp_path: Path) -> None:
    zip_url = f"https://archive.ics.uci.edu/{SMS_URL_PATH}"
    assert mirror_location(zip_url, "http://m.example/x") == f"http://m.example/x/{SMS_URL_PATH}"
    assert mirror_location(zip_url, str(tmp_path)) == tmp_path / "static/public/228/sms+spam+collection.zip"
    vocab = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"
    assert mirror_location(vocab, str(tmp_path)) == tmp_path / "gpt-2" / "encodings" / "main" / "vocab.bpe"


def test_resolve_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_mirror(None) is None
    assert resolve_mirror("http://m.example/x/") == "http://m.example/x"
    monkeypatch.setenv("GPTCLF_MIRROR", str(tmp_path))
    assert resolve_mirror(None) == str(tmp_path.resolve())
    assert resolve_mirror(f"file://{tmp_path}") == str(tmp_path.resolve())
    assert resolve_mirror("https://other.example") == "https://other.example"  # the argument wins
    with pytest.raises(BadInputError, match="does not exist"):
        resolve_mirror(str(tmp_path / "nope"))


def test_mirror_folder_serves_weights(
    tmp_path: Path, checkpoint: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    source = mirror / WEIGHTS.lstrip("/")
    source.parent.mkdir(parents=True)
    source.write_bytes(checkpoint)
    monkeypatch.setenv("GPTCLF_MIRROR", str(mirror))  # the environment alone selects the mirror
    path = ensure_weights("gpt2-small", config=TINY, hosts=[dead_url()])
    assert path.read_bytes() == checkpoint
    assert source.read_bytes() == checkpoint  # copied, not moved


def test_mirror_folder_without_the_file_explains_the_layout(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        ensure_weights("gpt2-small", mirror=str(tmp_path), config=TINY)
    message = str(info.value)
    assert str(tmp_path / WEIGHTS.lstrip("/")) in message
    assert "<mirror>/<its path on the public host>" in message


def test_mirror_url_replaces_the_public_hosts(server: FileServer, checkpoint: bytes) -> None:
    server.files["/m" + WEIGHTS] = checkpoint
    path = ensure_weights("gpt2-small", mirror=f"{server.url}/m/", config=TINY, hosts=[dead_url()])
    assert path.read_bytes() == checkpoint
    assert server.requests == [("/m" + WEIGHTS, None)]


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_over_http_by_sha256_then_not_again(server: FileServer, isolated_home: Path) -> None:
    for name in TOKENIZER_FILES:
        server.files[f"/{TOKENIZER_URL_DIR}/{name}"] = (BPE_DIR / name).read_bytes()
    folder = ensure_tokenizer(mirror=server.url)
    assert folder == isolated_home / "tokenizer"
    for name, digest in TOKENIZER_FILES.items():
        assert sha((folder / name).read_bytes()) == digest
    assert len(server.requests) == 2
    ensure_tokenizer(mirror=server.url)
    assert len(server.requests) == 2


def test_tokenizer_file_with_wrong_bytes_is_refused(server: FileServer, isolated_home: Path) -> None:
    for name in TOKENIZER_FILES:
        server.files[f"/{TOKENIZER_URL_DIR}/{name}"] = b"not the GPT-2 file"
    with pytest.raises(DownloadError, match=r"encoder\.json has sha256"):
        ensure_tokenizer(hosts=[server.url], retry=FAST)
    assert not any((isolated_home / "tokenizer").iterdir())


@needs_shared_mirror
def test_real_shared_mirror_gives_tokenizer_and_sms(isolated_home: Path) -> None:
    folder = ensure_tokenizer(mirror=str(MIRROR))
    for name, digest in TOKENIZER_FILES.items():
        assert sha((folder / name).read_bytes()) == digest
    path = ensure_sms_spam(mirror=str(MIRROR))
    assert path == sms_spam_path(isolated_home)
    assert len(path.read_bytes().splitlines()) == 5574
    assert (path.parent / "readme").is_file()
    assert (path.parent / "sms+spam+collection.zip").is_file()


@needs_shared_mirror
def test_sms_over_http_then_not_again(server: FileServer) -> None:
    server.files["/" + SMS_URL_PATH] = (MIRROR / SMS_URL_PATH).read_bytes()
    progress = Recorder()
    path = ensure_sms_spam(progress=progress, hosts=[server.url], retry=FAST, placed=progress.ended)
    assert path.is_file()
    assert [fetched for _, _, fetched in progress.ended] == [True, True]  # the zip, then the data
    ensure_sms_spam(progress=progress, hosts=[server.url], retry=FAST, placed=progress.ended)
    assert len(server.requests) == 1
    assert progress.ended[-1] == ("SMSSpamCollection", path, False)


def test_hostile_archive_from_a_mirror_is_not_kept(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (mirror / SMS_URL_PATH).parent.mkdir(parents=True)
    (mirror / SMS_URL_PATH).write_bytes(make_zip({"SMSSpamCollection": DATA, "../../evil": b"x"}))
    with pytest.raises(DownloadError, match="would land outside"):
        ensure_sms_spam(mirror=str(mirror))
    assert not sms_spam_path().exists()
    assert not (sms_spam_path().parent / "sms+spam+collection.zip").exists()  # the next run refetches


@needs_shared_mirror
def test_every_artefact_is_where_the_mirror_rule_puts_it(isolated_home: Path) -> None:
    # The shared mirror was laid out by hand from the public URLs: the table must agree with it.
    archive = f"{SMS_HOSTS[0]}/{SMS_URL_PATH}"
    for artefact in tokenizer_artefacts():
        source = mirror_location(f"{artefact.hosts[0]}/{artefact.url_path}", str(MIRROR))
        assert isinstance(source, Path) and sha(source.read_bytes()) == artefact.sha256
        assert artefact.dest.parent == isolated_home / "tokenizer"
    assert Path(mirror_location(archive, str(MIRROR))).is_file()
    weights = weights_artefact("124M")
    assert weights.url_path == "openai-community/gpt2/resolve/main/model.safetensors"
    assert weights.dest == isolated_home / "models" / "gpt2-small" / "model.safetensors"
    assert weights.label == "gpt2-small weights" and weights.check is not None


def test_distilgpt2_comes_from_its_hub_repository_by_the_mirror_rule(
    tmp_path: Path, checkpoint: bytes
) -> None:
    # The public URL: https://huggingface.co/distilbert/distilgpt2/resolve/main/model.safetensors
    assert weights_artefact("distilgpt2").url_path == "distilbert/distilgpt2/resolve/main/model.safetensors"
    mirror = tmp_path / "mirror"
    source = mirror / "distilbert/distilgpt2/resolve/main/model.safetensors"
    source.parent.mkdir(parents=True)
    source.write_bytes(checkpoint)
    path = ensure_weights("distilgpt2", mirror=str(mirror), config=TINY, hosts=[dead_url()])
    assert path == weights_file("distilgpt2") and path.read_bytes() == checkpoint


def test_a_local_model_folder_is_its_own_weights(tmp_path: Path) -> None:
    # No download for --model DIR: the folder's own file (gptclf.model.hfconfig checked it).
    assert base_weights(str(tmp_path)) == tmp_path / "model.safetensors"
