"""The server's application (FastAPI): the page, the API, and one handler for every error.

============================  ===========================================================
``GET /``                     the page (:mod:`tasks.serve.page`)
``GET /model``                ``model.json``, as the folder holds it
``GET /health``               ``{"status": "ok", "model": ..., "model_key": ..., ...}``
``POST /predict``             ``{"instances": [...]}`` -> ``{"predictions": [[p0, ...], ...],
                              "class_names": [...]}`` (:mod:`tasks.serve.instances`)
``POST /drawing``             the page's canvas: the same, each instance a drawing made into
                              an MNIST-style digit first; also ``"inputs"``, the digits
============================  ===========================================================

Every error becomes ``{"error": "<one line>"}``: bad input 400, a body over the bound 413,
an unknown path 404, another method 405; anything else 500, its traceback in the server's log
file, never in the answer or on the terminal (:func:`error_response`, the one handler,
reached from :class:`OneLineErrors` and from Starlette's HTTP errors). Nothing is written.
The model runs in a worker thread, one call at a time, so ``/health`` answers meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tasks.errors import UserError, one_line
from tasks.predict.model import MODEL_JSON, ModelFolder
from tasks.serve import instances as requests
from tasks.serve.drawing import drawable
from tasks.serve.page import render_page

LOG = logging.getLogger("tasks.serve")
ENDPOINTS = "GET /, GET /model, GET /health, POST /predict, POST /drawing"


def make_app(model: ModelFolder, predict: Callable[[np.ndarray], np.ndarray],
             max_body: int) -> FastAPI:
    """The application serving ``model``; ``predict``: class probabilities of raw inputs
    (:func:`tasks.predict.model.probabilities` of the loaded model); ``max_body``: the most
    bytes a request body may hold."""
    app = FastAPI(title=f"serve {model.name}", docs_url=None, redoc_url=None,
                  openapi_url=None)
    lock = threading.Lock()
    record = (model.folder / MODEL_JSON).read_bytes()
    page = render_page(model, max_body)
    classes = list(model.classes)

    def run(convert: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        x = convert()
        with lock:
            return x, np.asarray(predict(x), dtype=np.float64)

    @app.get("/")
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/model")
    async def model_record() -> Response:
        return Response(record, media_type="application/json")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model.name, "model_key": model.model_key,
                "takes": model.takes(), "classes": len(classes), "max_body": max_body}

    @app.post("/predict")
    async def predict_instances(request: Request) -> JSONResponse:
        body = await bounded_body(request, max_body)
        _, probabilities = await run_in_threadpool(
            run, lambda: requests.model_input(model, requests.parse_body(body)))
        return JSONResponse({"predictions": probabilities.tolist(), "class_names": classes})

    @app.post("/drawing")
    async def predict_drawings(request: Request) -> JSONResponse:
        if not drawable(model):
            raise HTTPException(404, "drawing")
        body = await bounded_body(request, max_body)
        x, probabilities = await run_in_threadpool(
            run, lambda: requests.drawing_inputs(model, requests.parse_body(body)))
        return JSONResponse({"predictions": probabilities.tolist(), "class_names": classes,
                             "inputs": x.reshape(len(x), *x.shape[1:3]).tolist()})

    for error in (HTTPException, RequestValidationError):
        app.add_exception_handler(error, error_response)
    app.add_middleware(OneLineErrors)
    return app


async def bounded_body(request: Request, limit: int) -> bytes:
    """The request's body, read up to ``limit`` bytes (a declared Content-Length over it is
    refused before reading anything); :class:`tasks.serve.instances.BodyTooLarge` beyond."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise requests.BodyTooLarge(f"the body is {int(declared):,} bytes, over this server's "
                                    f"bound of {limit:,} bytes (--max-body)")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise requests.BodyTooLarge(f"the body is over this server's bound of {limit:,} "
                                        "bytes (--max-body)")
        chunks.append(chunk)
    return b"".join(chunks)


def error_response(request: Request | None, error: BaseException) -> JSONResponse:
    """The one answer to every error: ``{"error": "<one line>"}`` with its status (module
    doc); an unexpected error's traceback goes to the log, not to the client."""
    if isinstance(error, requests.BodyTooLarge):
        status, line = 413, str(error)
    elif isinstance(error, UserError):
        status, line = 400, str(error)
    elif isinstance(error, HTTPException):
        status = error.status_code
        where = f"{request.method} {request.url.path}" if request is not None else "this"
        if status == 404:
            line = f"{where}: no such page or endpoint here ({ENDPOINTS})"
            if error.detail == "drawing":
                line = f"{where}: this model takes no drawings (grey images up to 64x64 do)"
        elif status == 405:
            line = f"{where}: method not allowed ({ENDPOINTS})"
        else:
            line = f"{where}: {error.detail}"
    elif isinstance(error, RequestValidationError):
        status, line = 400, f"bad request: {error.errors()[:1]}"
    else:
        LOG.error("unexpected error answering %s", request.url.path if request else "?",
                  exc_info=error)
        status = 500
        line = (f"internal error ({one_line(error)}); the server keeps serving, the details "
                "are in its log")
    return JSONResponse({"error": " ".join(str(line).split())}, status_code=status)


class OneLineErrors:
    """Every exception a request raises (beyond Starlette's own HTTP errors) answered by
    :func:`error_response` and ended here, so the server keeps serving and uvicorn neither
    prints a traceback nor closes the connection with a bare 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:  # the one place every error ends
            response = error_response(Request(scope), error)
            if not started:
                await response(scope, receive, send)
