"""Reading a request body, the settings that travel to worker processes, and the address rule."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")

from gptclf.option_groups import DecisionOptions, DeviceOptions, LongTextOptions
from gptclf.serving.requests import RequestError, field_words, parse_body, with_options
from gptclf.serving.server import Listen, check, is_loopback
from gptclf.serving.service import ServeSettings, read_api_key


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_a_request_splits_into_texts_ids_and_the_two_option_groups() -> None:
    got = parse_body(body(texts=["a", "b"], ids=[1, "x"], threshold=0.4, positive="spam", stride=8), 10)
    assert got.texts == ["a", "b"] and got.ids == [1, "x"]
    assert got.decide == {"threshold": 0.4, "positive": "spam"} and got.long == {"stride": 8}
    base = DecisionOptions(min_confidence=0.7)
    assert with_options(base, got.decide) == DecisionOptions(
        threshold=0.4, positive="spam", min_confidence=0.7
    )
    assert with_options(LongTextOptions(), {}) == LongTextOptions()
    assert parse_body(body(texts=["a"], threshold=None), 1).decide == {}  # null: not given


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"\xff", 400, "UTF-8"),
        (b"", 400, "JSON"),
        (b"3", 422, "object"),
        (body(texts=["a"] * 3), 413, "at most 2"),
        (body(texts=["a"], head_tokens=2.5), 422, "head_tokens must be an integer"),
        (body(texts=["a"], no_calibration="yes"), 422, "true or false"),
        (body(texts=["a"], aggregate="sum"), 422, "mean, max"),
        (body(texts=["a"], ids=[True]), 422, "ids[0]"),
        (body(texts=["a"], positive=3), 422, "positive must be a string"),
    ],
)
def test_bad_bodies(raw: bytes, status: int, words: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_body(raw, 2)
    assert caught.value.status == status and words in caught.value.message


def test_core_messages_name_the_fields_not_the_flags() -> None:
    assert field_words("--min-confidence must be in (0, 1]; see --threshold") == (
        "min_confidence must be in (0, 1]; see threshold"
    )


def test_settings_travel_to_workers_whole() -> None:
    settings = ServeSettings(
        run="r", device=DeviceOptions(device="cpu"), decide=DecisionOptions(threshold=0.2, positive="a"),
        long=LongTextOptions(long_texts="window", stride=4), max_batch_size=8, threads=3,
    )  # fmt: skip
    assert ServeSettings.from_json(settings.to_json()) == settings


def test_loopback_addresses_and_the_key_rule(tmp_path: object) -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "example.com"]))
    with pytest.raises(Exception, match="--api-key-file"):
        check(ServeSettings(run="r"), Listen(host="0.0.0.0"))
    check(ServeSettings(run="r", api_key_file="k"), Listen(host="0.0.0.0"))


def test_api_key_file_rules(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    folder = Path(str(tmp_path))
    (folder / "k").write_text("  a-long-enough-token-1234  \nsecond line ignored\n")
    assert read_api_key(str(folder / "k")) == "a-long-enough-token-1234"
    (folder / "empty").write_text("\n")
    with pytest.raises(Exception, match="empty"):
        read_api_key(str(folder / "empty"))


def test_the_listening_socket_says_it_is_tcp() -> None:
    """asyncio sets TCP_NODELAY on accepted connections only for a socket made with IPPROTO_TCP:
    without it every keep-alive answer waited ~40 ms for the client's delayed ACK."""
    import socket

    from gptclf.serving.server import bind

    sock = bind(Listen(port=0))
    try:
        assert sock.proto == socket.IPPROTO_TCP
    finally:
        sock.close()


def test_the_command_line_and_the_service_default_to_the_same_pass_size() -> None:
    from cli.serve import PASS_SIZE
    from gptclf.serving import service

    assert PASS_SIZE == service.PASS_SIZE == ServeSettings(run="r").device.batch_size
