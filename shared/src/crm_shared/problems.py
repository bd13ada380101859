"""RFC 9457 problem details: every HTTP error names what went wrong and, where it can, the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from crm_shared.errors import FieldError, plain_reason
from crm_shared.logging import get_logger

PROBLEM_JSON = "application/problem+json"
# What the access log and the latency metric record for a request whose sender left early
# (nginx's convention; never sent, as nobody is there to read it).
CLIENT_CLOSED_REQUEST = 499

log = get_logger(__name__)


class Problem(StarletteHTTPException):
    """An HTTP error whose problem details carry extension members (RFC 9457 section 3.2),
    e.g. the balance and the cost of a refused redemption."""

    def __init__(self, status: int, detail: str, **extensions: object) -> None:
        super().__init__(status, detail)
        self.extensions = extensions


def problem(
    status: int,
    detail: str,
    *,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
    extensions: Mapping[str, object] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {
        **(extensions or {}),
        "type": "about:blank",
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    async def on_http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        extensions = exc.extensions if isinstance(exc, Problem) else None
        return problem(exc.status_code, str(exc.detail), headers=exc.headers, extensions=extensions)

    async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors: list[FieldError] = [
            {"field": ".".join(str(p) for p in e["loc"]), "reason": plain_reason(e["msg"])}
            for e in exc.errors()
        ]
        return problem(422, "the request is not valid", errors=errors)

    async def on_client_gone(request: Request, _: Exception) -> Response:
        # The sender closed the connection before its body arrived: nobody reads an answer,
        # and nothing of the request was accepted. Not a server error: one line, no traceback.
        log.info("client went away before its request was read", route=request.url.path)
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
