"""The ASGI app (FastAPI): ``POST /predict``, ``GET /health``, ``GET /info``, the playground at ``/`` and
OpenAPI docs at ``/docs``, all served from this package (no CDN).

Every error goes back as ``{"error": message}``: 400 for bad input (with the message the Python API gives),
401 without the API key, 413 over a size limit, 415 for a body that is neither JSON nor multipart, 504 past
the per-request timeout, 500 for a failure of the model itself (which never stops the server).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from taskzoo.errors import TaskzooError
from taskzoo.predict_options import option_defaults
from taskzoo.serving.codec import (
    SERVER_OPTIONS,
    Limits,
    RequestError,
    check_parameters,
    decode_media,
    decode_request,
    example_input,
    media_of,
    to_json,
)
from taskzoo.serving.playground import form_of
from taskzoo.serving.request_batches import Batcher, LengthGroupedPredict, batch_key

logger = logging.getLogger("taskzoo.serve")
STATIC = Path(__file__).parent / "static"
PROTECTED = ("/predict", "/info")  # what the API key guards; the page, /health and /docs stay open
USER_ERRORS = (RequestError, TaskzooError, ValueError, TypeError, KeyError)


def create_app(task, *, max_batch_size: int = 32, max_wait_ms: float = 5.0, batch_size: int | None = None,
               api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The server's ASGI app for a loaded task (``taskzoo.load(...)``); run it with uvicorn, or use
    :func:`taskzoo.serve`, which does. Up to ``max_batch_size`` inputs of concurrent requests are gathered
    and run in batches of similar lengths, of at most ``batch_size`` inputs (default: the task's)."""
    limits = limits or Limits()
    form = form_of(task)  # the task's facts checked (a task of your own), before anything starts
    task.warn_if_untrained()  # as the server starts, rather than at its first request
    batcher = Batcher(LengthGroupedPredict(task, batch_size), max_batch_size, max_wait_ms)  # checks batch_size

    @asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()  # uvicorn has finished the requests in flight by now

    app = FastAPI(title=f"taskzoo: {task.name}", description=f"Predict with {task.source or 'a model'}.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.task, app.state.batcher, app.state.limits = task, batcher, limits

    @app.exception_handler(RequestError)
    async def refused(request, error: RequestError):
        return JSONResponse({"error": str(error)}, status_code=error.status)

    @app.exception_handler(Exception)
    async def failed(request, error: Exception):  # a bug of ours: still JSON, and logged with its traceback
        return JSONResponse({"error": f"Internal error: {type(error).__name__}: {error}"}, status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code, headers=error.headers)

    @app.get("/health", summary="200 once the model is loaded (503 while it loads)")
    async def health():
        return {"status": "ok", "task": task.name}

    @app.get("/info", summary="task, model, labels, predict options, limits and the playground's form")
    async def info():
        return {"task": task.name, "model": str(task.source) if task.source else None,
                "labels": getattr(task, "labels", None), "input": task.input_type, "form": form,
                "example": json.loads(example_input(task)), "predict_options": predict_options(task),
                "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "limits": asdict(limits),
                "predict_calls": batcher.calls, "inputs_predicted": batcher.inputs}

    @app.post("/predict", summary="predict one input or a list", openapi_extra=predict_schema(task))
    async def predict(request: Request):
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            items, single, parameters = await read_form(request, task, limits)
        elif content_type.startswith("application/json") or not content_type:
            try:
                body = json.loads(await request.body())
            except ValueError as error:
                raise RequestError(f"The request body is not valid JSON: {error}.") from None
            items, single, parameters = await guarded(offload(task, decode_request, task, body, limits))
        else:
            raise RequestError(f"Send JSON (application/json) or files (multipart/form-data), not {content_type}.",
                               415)
        try:
            outputs = await asyncio.wait_for(batcher.submit(items, parameters, batch_key(task, items, parameters)),
                                             limits.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(f"The prediction took longer than this server's limit of {limits.timeout_s:g} s.",
                               504) from None
        except USER_ERRORS as error:
            raise RequestError(str(error).strip("'\"") if isinstance(error, KeyError) else str(error)) from None
        except Exception as error:  # the model failed; the server and the other requests go on
            logger.exception("predict failed")
            raise RequestError(f"Prediction failed: {type(error).__name__}: {error}", 500) from None
        return JSONResponse(await offload(task, to_json, outputs[0] if single else outputs))

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_docs(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if api_key:
        app.add_middleware(APIKey, key=api_key)  # added last: checked first, before any body is read
    return app


async def offload(task, function, *arguments):
    """Decoding images and audio and encoding PNGs take long enough to stall the event loop: a thread does
    them. Text is quicker to handle in place than to hand over."""
    if task.input_type != "text" or task.outputs_images:
        return await run_in_threadpool(function, *arguments)
    return function(*arguments)


async def guarded(awaitable):
    """Await input decoding, turning the Python API's errors about the input into 400s."""
    try:
        return await awaitable
    except RequestError:
        raise
    except USER_ERRORS as error:
        raise RequestError(str(error)) from None


async def read_form(request: Request, task, limits: Limits):
    """A multipart upload: one file per input (one file: one input), optional ``parameters`` as JSON."""
    media = media_of(task)
    if media is None:
        raise RequestError(f'{task.name} takes text: send JSON {{"inputs": {example_input(task)}}}, not files.')
    try:
        form = await request.form(max_files=limits.max_inputs + 1, max_fields=8)
    except MultiPartException as error:
        raise RequestError(f"The multipart body could not be read: {error.message}") from None
    files = [(name, value) for name, value in form.multi_items() if not isinstance(value, str)]
    fields = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    if set(fields) - {"parameters"}:
        raise RequestError(f"Unknown form field(s) {sorted(set(fields) - {'parameters'})}; send files and, "
                           "optionally, 'parameters' (JSON).")
    if not files:
        raise RequestError(f"The multipart body holds no file: upload each {media} as a file field.")
    if len(files) > limits.max_inputs:
        raise RequestError(f"A request may hold at most {limits.max_inputs} inputs; this one holds {len(files)}.",
                           413)
    try:
        parameters = json.loads(fields.get("parameters") or "{}")
    except ValueError as error:
        raise RequestError(f"The 'parameters' field is not valid JSON: {error}.") from None
    try:
        parameters = check_parameters(task, parameters, limits)
    except (TypeError, ValueError) as error:  # an unknown option, or a value of the wrong type
        raise RequestError(str(error)) from None
    items = []
    for name, upload in files:
        raw = await upload.read()
        where = f"file {upload.filename or name!r}"
        items.append(await guarded(run_in_threadpool(decode_media, media, raw, where, limits)))  # media: slow
    return items, len(items) == 1, parameters


def predict_options(task) -> dict:
    """The options a request may pass in ``parameters``, with their defaults (those of the task's predict,
    less the server's own: batch size, progress...)."""
    return {name: default for name, default in option_defaults(task).items() if name not in SERVER_OPTIONS}


def predict_schema(task) -> dict:
    """The request bodies /predict takes, for the OpenAPI docs (the route reads its body itself)."""
    json_body = {"type": "object", "required": ["inputs"], "properties": {
        "inputs": {"description": "one input or a list of inputs", "example": json.loads(example_input(task))},
        "parameters": {"type": "object", "description": "predict options (see /info)", "example": {}}}}
    content = {"application/json": {"schema": json_body}}
    if media_of(task):
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
            "parameters": {"type": "string", "description": "predict options as JSON"}}}}
    return {"requestBody": {"required": True, "content": content}}


def add_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the swagger-ui-bundle package's files, not from a CDN (the server may be
    offline); without that package, the OpenAPI schema is still at /openapi.json. The page reads the schema
    as OpenAPI 3.0 (/docs/openapi.json): the Swagger UI releases before 5 render no 3.1 document."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return
    from fastapi.openapi.docs import get_swagger_ui_html

    app.mount("/docs-assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url="docs/openapi.json", title=app.title,
                                   swagger_js_url="docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="docs-assets/swagger-ui.css",
                                   swagger_favicon_url="docs-assets/favicon-32x32.png")

    @app.get("/docs/openapi.json", include_in_schema=False)
    async def docs_schema():
        return openapi_3_0(app.openapi())


def openapi_3_0(document: dict) -> dict:
    """An OpenAPI 3.1 document (FastAPI's) as 3.0: JSON Schema's ``"type": "null"`` becomes ``nullable``,
    ``const`` a one-value ``enum``, numeric exclusive bounds the 3.0 flags and ``examples`` lists an ``example``."""
    names = ("properties", "patternProperties", "$defs", "schemas", "paths", "responses", "content")

    def schema(node, named: bool = False):
        if isinstance(node, list):
            return [schema(item) for item in node]
        if not isinstance(node, dict):
            return node
        node = {key: schema(value, key in names) for key, value in node.items()}
        if named:  # a map of names (properties, paths...): its keys are not schema keywords
            return node
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and {"type": "null"} in options:
                rest = [option for option in options if option != {"type": "null"}]
                del node[key]
                node.update(rest[0] if len(rest) == 1 else {key: rest}, nullable=True)
        kinds = node.get("type")
        if isinstance(kinds, list):  # ["string", "null"]
            del node["type"]
            node.update({"nullable": True} if "null" in kinds else {})
            kinds = [kind for kind in kinds if kind != "null"]
            node.update({"type": kinds[0]} if len(kinds) == 1 else {"anyOf": [{"type": kind} for kind in kinds]})
        if "const" in node:
            node["enum"] = [node.pop("const")]
        for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if isinstance(node.get(exclusive), (int, float)) and not isinstance(node[exclusive], bool):
                node[bound], node[exclusive] = node[exclusive], True
        if isinstance(node.get("examples"), list):
            examples = node.pop("examples")
            if examples:
                node.setdefault("example", examples[0])
        return node

    return {**schema(document), "openapi": "3.0.3"}


def json_error(message: str, status: int, headers: dict | None = None, fields: dict | None = None):
    """A raw ASGI response ``{**fields, "error": message}``, for the middlewares and the loading app below
    (they run outside FastAPI)."""
    body = json.dumps({**(fields or {}), "error": message}).encode()
    extra = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def respond(send):
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
        await send({"type": "http.response.body", "body": body})
    return respond


class BodyLimit:
    """Refuses bodies over ``max_bytes`` with 413, from Content-Length or while reading a chunked body;
    the app then reads the body from memory."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = json_error(f"The request body is over this server's limit of {self.max_bytes:,} bytes.", 413)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await too_large(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large(send)
            if not message.get("more_body"):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class APIKey:
    """Requests to the protected routes need ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].rstrip("/").endswith(PROTECTED):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key") or headers.get(b"authorization", b"").removeprefix(b"Bearer ").strip()
        if not given:
            message = "This server needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'."
        elif not secrets.compare_digest(given, self.key):  # constant time: no guessing the key byte by byte
            message = "The API key is wrong."
        else:
            return await self.app(scope, receive, send)
        await json_error(message, 401, {"WWW-Authenticate": "Bearer"})(send)


class LoadingApp:
    """The server while its model loads, in a thread: ``/health`` answers 503 ``{"status": "loading"}`` and
    every other route 503 with Retry-After, until the app for the loaded task (``make_app(load())``) takes
    over. A load that fails calls ``on_failure`` (which stops the server) and is kept in ``error``."""

    def __init__(self, load, make_app):
        self.load, self.make_app = load, make_app
        self.app, self.error = None, None

    def start(self, on_failure) -> None:
        def run():
            try:
                self.app = self.make_app(self.load())
            except BaseException as error:  # noqa: BLE001 - raised again by serve() once the server has stopped
                self.error = error
                on_failure()
        threading.Thread(target=run, name="taskzoo-load", daemon=True).start()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":  # uvicorn's start and stop, which come to this app, loaded or not
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if self.app is not None:
                await self.app.state.batcher.close()  # what the loaded app's own lifespan does on shutdown
            return await send({"type": "lifespan.shutdown.complete"})
        if self.app is not None:
            return await self.app(scope, receive, send)
        if scope["type"] == "http":
            await json_error("The model is still loading; try again in a moment.", 503, {"Retry-After": "5"},
                             {"status": "loading"} if scope["path"].rstrip("/") == "/health" else None)(send)
