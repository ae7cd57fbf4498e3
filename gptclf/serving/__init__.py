"""``gptclf serve``: a run behind HTTP (FastAPI on uvicorn), texts of concurrent requests batched.

:mod:`~gptclf.serving.batcher` gathers texts into batches, :mod:`~gptclf.serving.requests` reads and
checks a request, :mod:`~gptclf.serving.service` turns it into ``predict``'s records,
:mod:`~gptclf.serving.app` is the HTTP application and :mod:`~gptclf.serving.server` binds and runs it.
Needs the ``serve`` extra (fastapi, uvicorn, prometheus-client).
"""
