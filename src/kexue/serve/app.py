"""The HTTP routes of `kexue serve` (Starlette, which MLflow's own scoring server runs on).

A request is parsed and answered by MLflow's scoring server code (`invocations`), so each
model takes and returns exactly what `mlflow models serve` of it does; errors are its JSON
`{"error_code", "message"}` with the message on one line."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kexue.serve.slots import Slot
from kexue.tracking import one_line

# MLflow wraps a model's own error as "Failed to predict data '<the whole input>'. \nError: ...".
_PREDICT_ERROR = "\nError: "


@dataclass(frozen=True)
class Settings:
    """The `serve` block of params.yaml."""

    host: str  # 127.0.0.1: this machine only
    port: int
    max_body_bytes: int  # larger request bodies are refused with HTTP 413
    poll_seconds: float  # 0: follow `champion` only on POST /models/<model>/reload
    preload: bool  # load every model at start-up, else on its first request


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# MLflow's error codes for the refusals this server makes itself.
_ERROR_CODES = {
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "REQUEST_LIMIT_EXCEEDED",
    503: "TEMPORARILY_UNAVAILABLE",
}


def error(status: int, message: str, code: str | None = None) -> JSONResponse:
    """MLflow's error JSON, the message on one line."""
    code = code or _ERROR_CODES.get(status, "BAD_REQUEST")
    return JSONResponse({"error_code": code, "message": one_line(message)}, status_code=status)


def create_app(slots: dict[str, Slot], settings: Settings) -> Starlette:
    def slot_of(request: Request) -> Slot:
        name = request.path_params["model"]
        if name not in slots:
            raise RequestError(404, f"no model '{name}'; served: {', '.join(slots)}")
        return slots[name]

    async def index(request: Request) -> Response:
        page = resources.files("kexue.serve").joinpath("static/index.html").read_text("utf-8")
        return Response(page, media_type="text/html; charset=utf-8")

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Response:
        return JSONResponse([slot.describe() for slot in slots.values()])

    async def invocations(request: Request) -> Response:
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc import scoring_server

        try:
            slot = slot_of(request)
            body = await read_body(request, settings.max_body_bytes)
            content_type = request.headers.get("content-type")
            if not content_type:
                raise RequestError(415, "no Content-Type; send application/json or text/csv")
            try:
                loaded = await asyncio.to_thread(slot.get)
            except LookupError as err:
                raise RequestError(503, f"model '{slot.model}' is unavailable: {err}") from None
            answer = await asyncio.to_thread(
                scoring_server.invocations, body, content_type, loaded.model, loaded.input_schema
            )
        except RequestError as err:
            return error(err.status, str(err))
        except MlflowException as err:
            message = err.message.rpartition(_PREDICT_ERROR)[2]
            return error(err.get_http_status_code(), message, err.error_code)
        except Exception as err:  # the request could not be parsed (MLflow raises it bare)
            return error(400, f"malformed request: {type(err).__name__}: {err}")
        return Response(answer.response, status_code=answer.status, media_type=answer.mimetype)

    async def reload(request: Request) -> Response:
        try:
            slot = slot_of(request)
        except RequestError as err:
            return error(err.status, str(err))
        changed = await asyncio.to_thread(slot.reload)
        return JSONResponse({**slot.describe(), "changed": changed})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if settings.preload:
            await asyncio.gather(*(asyncio.to_thread(slot.reload) for slot in slots.values()))
        poller = asyncio.create_task(poll(slots, settings.poll_seconds))
        yield
        poller.cancel()

    return Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/models", models),
            Route("/models/{model}/invocations", invocations, methods=["POST"]),
            Route("/models/{model}/reload", reload, methods=["POST"]),
        ],
        lifespan=lifespan,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) once it is over `limit` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def poll(slots: dict[str, Slot], seconds: float) -> None:
    """Every `seconds`, serve each loaded champion's newer version, if the alias moved."""
    if seconds <= 0:
        return
    while True:
        await asyncio.sleep(seconds)
        for slot in slots.values():
            if slot.loaded is not None and slot.source is None:
                await asyncio.to_thread(slot.reload)
