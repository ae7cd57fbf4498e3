"""The real server over HTTP: records equal ``gptclf predict``'s, concurrency, every bad input of the
issue, metrics, probes and docs (one server per run, started once for the module)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
from cli.main import app
from tests.conftest import REPO
from tests.inference.test_predict import make_run
from tests.serving.server_helpers import Server, running

pytestmark = pytest.mark.slow
RUN_ML = REPO / "tests" / "fixtures" / "run-ml"
TEXTS = ["Win a FREE prize now!!!", "see you at lunch", "", "ok", "Call 0800 now, claim your £1000 cash"]
LONG = ["word " * 40 + "prize", "short one", "tail " * 25]


def predict_records(run: Path, texts: list[str], *flags: str) -> list[dict[str, Any]]:
    """What ``gptclf predict --format jsonl`` writes for ``texts``."""
    args = ["predict", str(run), *texts, "--format", "jsonl", "--device", "cpu", "--precision", "fp32"]
    result = CliRunner().invoke(app, [*args, *flags])
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve") / "run", max_length=12)


@pytest.fixture(scope="module")
def three_class_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve3") / "run", classes=["neg", "neu", "pos"], max_length=12)


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[Server]:
    with running(run_dir, "--max-wait-ms", "20", "--max-texts", "512") as s:
        yield s


def test_records_equal_predicts_for_the_same_texts_and_options(server: Server, run_dir: Path) -> None:
    answer = server.classify({"texts": TEXTS})
    assert answer.status_code == 200
    assert answer.json() == {"results": predict_records(run_dir, TEXTS)}
    # Per-request options are predict's flags, with the same records.
    for body, flags in [
        ({"threshold": 0.3, "positive": "spam"}, ["--threshold", "0.3", "--positive", "spam"]),
        ({"min_confidence": 0.9}, ["--min-confidence", "0.9"]),
        ({"no_calibration": True}, ["--no-calibration"]),
    ]:
        got = server.classify({"texts": TEXTS, **body}).json()["results"]
        assert got == predict_records(run_dir, TEXTS, *flags), body
    ids = server.classify({"texts": TEXTS[:2], "ids": ["a", 7]}).json()["results"]
    assert [r["id"] for r in ids] == ["a", 7]


def test_long_texts_are_read_in_windows_as_predict_reads_them(server: Server, run_dir: Path) -> None:
    flags = ["--long-texts", "window", "--stride", "4", "--aggregate", "max"]
    got = server.classify({"texts": LONG, "long_texts": "window", "stride": 4, "aggregate": "max"})
    assert got.status_code == 200
    assert got.json()["results"] == predict_records(run_dir, LONG, *flags)
    # The windows change the answer (the same texts truncated differ), so they were used.
    assert got.json()["results"] != server.classify({"texts": LONG}).json()["results"]


def test_a_multi_label_run_answers_label_sets() -> None:
    texts = ["my invoice is wrong and the app crashes", "please add dark mode", "login fails"]
    with running(RUN_ML) as s:
        got = s.classify({"texts": texts})
        assert got.json()["results"] == predict_records(RUN_ML, texts)
        assert all(isinstance(r["labels"], list) for r in got.json()["results"])
        one = s.classify({"texts": texts, "threshold": 0.2}).json()["results"]
        assert one == predict_records(RUN_ML, texts, "--threshold", "0.2")
        info = s.client().get("/v1/model").json()
        assert info["task"] == "multi_label" and info["thresholds"]


def test_concurrent_clients_each_get_their_own_answers_in_order(server: Server, run_dir: Path) -> None:
    """32 clients x 20 requests of 3 texts each: every answer is the request's, in its order."""
    pool = [f"message {i} " + "win cash " * (i % 7) + "see you" * (i % 3) for i in range(97)]
    expected = {r["text"]: r for r in predict_records(run_dir, pool)}

    async def client(k: int, c: httpx.AsyncClient) -> list[tuple[list[str], dict[str, Any]]]:
        out = []
        for j in range(20):
            texts = [pool[(k * 31 + j * 7 + m) % len(pool)] for m in range(3)]
            answer = await c.post(
                "/v1/classify", json={"texts": texts, "ids": [f"{k}-{j}-{m}" for m in range(3)]}
            )
            assert answer.status_code == 200, answer.text
            out.append((texts, answer.json()))
        return out

    async def main() -> list[list[tuple[list[str], dict[str, Any]]]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
            return await asyncio.gather(*(client(k, c) for k in range(32)))

    batches_before = server.metric("gptclf_batch_size_texts_count")
    answers = asyncio.run(main())
    for k, per_client in enumerate(answers):
        for j, (texts, body) in enumerate(per_client):
            results = body["results"]
            assert [r["id"] for r in results] == [f"{k}-{j}-{m}" for m in range(3)]
            assert [r["text"] for r in results] == texts
            for r in results:
                want = expected[r["text"]]
                assert r["label"] == want["label"]
                assert r["probs"] == pytest.approx(want["probs"], abs=2e-6)
    # 640 requests went through far fewer batches: texts of concurrent requests shared them.
    batches = server.metric("gptclf_batch_size_texts_count") - batches_before
    assert batches < 640 / 2, batches


BAD = [
    (b"{not json", 400, "not valid JSON"),
    (b'{"texts": ["a"]', 400, "not valid JSON"),
    (b'{"texts": [NaN]}', 400, "not valid JSON"),
    (b'["a", "b"]', 422, "JSON object"),
    (b"{}", 422, '"texts" is missing'),
    (b'{"texts": "hello"}', 422, "must be a list"),
    (b'{"texts": []}', 422, "is empty"),
    (b'{"texts": ["a", 3]}', 422, "texts[1] is not a string"),
    (b'{"texts": ["a", null]}', 422, "texts[1] is not a string"),
    (b'{"texts": ["a\\u0000b"]}', 422, "null byte"),
    (b'{"texts": ["caf\xe9"]}', 400, "not valid UTF-8"),
    (b'{"texts": ["a"], "temperature": 2}', 422, "unknown field 'temperature'"),
    (
        b'{"texts": ["a"], "threshold": 1.5, "positive": "spam"}',
        422,
        "threshold must be a probability in [0, 1]",
    ),
    (
        b'{"texts": ["a"], "threshold": -0.1, "positive": "spam"}',
        422,
        "threshold must be a probability in [0, 1]",
    ),
    (b'{"texts": ["a"], "threshold": "high"}', 422, "threshold must be a number"),
    (b'{"texts": ["a"], "threshold": true}', 422, "threshold must be a number"),
    (b'{"texts": ["a"], "threshold": 0.5}', 422, "positive"),
    (b'{"texts": ["a"], "min_confidence": 0}', 422, "min_confidence"),
    (b'{"texts": ["a"], "long_texts": "all"}', 422, "long_texts must be one of"),
    (b'{"texts": ["a"], "ids": [1, 2]}', 422, "one id per text"),
    (b'{"texts": ["a"], "ids": [[1]]}', 422, "ids[0]"),
    (b'{"texts": ["\\ud800"]}', 422, "lone surrogate"),
    (b'{"texts": ["a"], "ids": ["x\\udfffy"]}', 422, "lone surrogate"),
    (b'{"texts": ["a"], "texts": ["b", "c"]}', 400, "appears twice"),
    (b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
    (b'{"texts": ["a"], "ids": [' + b"9" * 5000 + b"]}", 400, "number too long"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD, ids=[b[2] for b in BAD])
def test_bad_input_gets_one_json_line_and_the_server_keeps_serving(
    server: Server, body: bytes, status: int, words: str
) -> None:
    with server.client() as c:
        answer = c.post("/v1/classify", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == status, answer.text
        assert list(answer.json()) == ["error"] and words in answer.json()["error"], answer.text
        assert (
            "\n" not in answer.text and "Traceback" not in answer.text and "/" not in answer.json()["error"]
        )
        assert c.post("/v1/classify", json={"texts": ["still here"]}).status_code == 200


def test_an_option_the_mode_ignores_is_a_warning_as_in_predict(server: Server) -> None:
    body = server.classify({"texts": ["a"], "stride": 3}).json()
    assert body["warnings"] == ["stride applies only with long_texts window; ignored for long_texts truncate"]
    assert "warnings" not in server.classify({"texts": ["a"]}).json()


def test_too_big_requests_get_413(server: Server) -> None:
    answer = server.classify({"texts": ["x" * 1_100_000]})
    assert answer.status_code == 413 and "bytes" in answer.json()["error"]
    answer = server.classify({"texts": ["a"] * 100_000})
    assert answer.status_code == 413
    answer = server.classify({"texts": ["a"] * 513})
    assert answer.status_code == 413 and "at most 512" in answer.json()["error"]
    assert server.classify({"texts": ["a"] * 512}).status_code == 200
    # Windows: a few long texts with a small stride may not hold the model for minutes.
    answer = server.classify({"texts": ["word " * 3000], "long_texts": "window", "stride": 1})
    assert answer.status_code == 413 and "--max-windows" in answer.json()["error"]
    assert server.classify({"texts": ["word " * 30], "long_texts": "window", "stride": 1}).status_code == 200


def test_a_multi_class_option_the_run_refuses_is_422(three_class_run: Path) -> None:
    with running(three_class_run) as s:
        answer = s.classify({"texts": ["a"], "threshold": 0.5, "positive": "pos"})
        assert answer.status_code == 422 and "two classes" in answer.json()["error"]
        assert "--" not in answer.json()["error"]
        assert s.classify({"texts": ["a"]}).status_code == 200


def test_probes_model_metrics_docs_and_errors_are_json(server: Server, run_dir: Path) -> None:
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.head("/healthz").status_code == 200 and c.head("/readyz").status_code == 200
        assert c.get("/readyz").json()["status"] == "ready"
        info = c.get("/v1/model").json()
        assert info["classes"] == ["ham", "spam"] and info["task"] == "single_label"
        assert info["max_length"] == 12 and info["engine"] == "torch" and "calibration" in info
        assert c.get("/docs").status_code == 200
        assert "/v1/classify" in c.get("/openapi.json").json()["paths"]
        missing = c.get("/v1/nothing")
        assert missing.status_code == 404 and list(missing.json()) == ["error"]
        assert c.get("/v1/classify").status_code == 405
        text = c.get("/metrics").text
    for name in (
        "gptclf_requests_total",
        "gptclf_texts_classified_total",
        "gptclf_request_duration_seconds_bucket",
        "gptclf_batch_size_texts_bucket",
        "gptclf_queue_depth_texts",
    ):
        assert name in text, name
    assert 'status="422"' in text or 'status="200"' in text


def test_the_queue_bound_gives_503_with_retry_after(run_dir: Path) -> None:
    """A queue of 16 texts: 60 concurrent requests of 8 texts cannot all wait; those refused get 503 +
    Retry-After at once, every accepted one its right answer."""
    expected = {r["text"]: r for r in predict_records(run_dir, [f"t{i} win" for i in range(480)])}

    async def main(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=60)) as c:
            bodies = [{"texts": [f"t{k * 8 + m} win" for m in range(8)]} for k in range(60)]
            return await asyncio.gather(*(c.post("/v1/classify", json=b) for b in bodies))

    with running(
        run_dir, "--max-queue", "16", "--max-texts", "8", "--max-batch-size", "4", "--max-wait-ms", "50"
    ) as s:
        answers = asyncio.run(main(s.url))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        for a in answers:
            if a.status_code == 503:
                assert int(a.headers["retry-after"]) >= 1 and "queue is full" in a.json()["error"]
            else:
                for r in a.json()["results"]:
                    assert r["label"] == expected[r["text"]]["label"]
        assert s.metric("gptclf_queue_depth_texts") == 0
        assert s.metric("gptclf_batch_size_texts_bucket", None) >= 0
        assert s.classify({"texts": ["after the storm"]}).status_code == 200


def test_a_request_that_waits_too_long_gets_504(run_dir: Path) -> None:
    with running(run_dir, "--request-timeout", "0.001", "--max-wait-ms", "200") as s:
        answer = s.classify({"texts": ["slow"] * 50})
        assert answer.status_code == 504 and "--request-timeout" in answer.json()["error"]
        assert s.client().get("/healthz").status_code == 200
