"""Arm (c) of ``serve_load.py``: the server a user writes by hand, FastAPI over ``transformers.pipeline``.

One request -> ``pipeline(request.texts)`` -> JSON, with no batching across requests. The route is an
``async def`` that calls the pipeline directly, the version most tutorials show: the forward pass
runs on the event loop, so requests are classified one at a time, in arrival order. (A sync ``def``
route runs in FastAPI's thread pool instead, up to 40 pipelines at once on the same model and the
same fast tokenizer, whose truncation setting is not safe to change from several threads; set
``SERVE_BASELINE_ROUTE=sync`` to measure that version too.)

The answer has the shape of ``gptclf serve``'s, so one load generator drives both::

    POST /v1/classify {"texts": ["..."]} -> {"results": [{"id", "text", "label", "probs"}]}
    GET /readyz -> {"status": "ready"} (the model is loaded at import, before uvicorn serves)

Run it as ``serve_load.py`` does (the model folder is ``gptclf export RUN --format transformers``)::

    SERVE_BASELINE_MODEL=DIR uvicorn serve_baseline:app --app-dir benchmarks --port 8001

Needs the dev and serve extras (transformers; fastapi, uvicorn).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from transformers import pipeline

MODEL_DIR = os.environ["SERVE_BASELINE_MODEL"]
ROUTE = os.environ.get("SERVE_BASELINE_ROUTE", "async")

# top_k=None: every class's probability (gptclf serve answers all of them too); device -1: CPU.
classifier = pipeline("text-classification", model=MODEL_DIR, top_k=None, device=-1)
app = FastAPI(title="transformers pipeline baseline")


class ClassifyBody(BaseModel):
    texts: list[str]


def classify_texts(texts: list[str]) -> dict[str, Any]:
    # truncation: texts longer than the model's max length are cut, as gptclf does by default.
    outputs = classifier(texts, truncation=True)
    results = []
    for i, (text, scores) in enumerate(zip(texts, outputs, strict=True)):
        best = max(scores, key=lambda s: s["score"])
        probs = {s["label"]: s["score"] for s in scores}
        results.append({"id": i, "text": text, "label": best["label"], "probs": probs})
    return {"results": results}


if ROUTE == "sync":

    @app.post("/v1/classify")
    def classify(body: ClassifyBody) -> dict[str, Any]:
        return classify_texts(body.texts)

elif ROUTE == "async":

    @app.post("/v1/classify")
    async def classify(body: ClassifyBody) -> dict[str, Any]:
        return classify_texts(body.texts)

else:
    raise SystemExit(f"SERVE_BASELINE_ROUTE must be async or sync (got {ROUTE!r})")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}
