"""Every error leaves the server in OpenAI's shape: {"error": {message, type, param, code}}.

This is the one place errors are mapped: `OwnLLMError` subclasses carry their
status; request-validation errors become 400 with `param` naming the field
(never FastAPI's default 422 body), and so does a malformed multipart upload;
anything unexpected is a 500 that says nothing about internals (the traceback
goes to the log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ownllm.errors import OwnLLMError

log = logging.getLogger("ownllm.api")

_HTTP_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


INTERNAL_ERROR_MESSAGE = "The server had an error while processing your request."


def error_body(exc: OwnLLMError) -> dict:
    """The OpenAI body of `exc`; a 500 says nothing about internals (the log has them)."""
    body = exc.to_body()
    if exc.status_code == 500:
        log.error("server error: %s", exc.message)
        body["error"]["message"] = INTERNAL_ERROR_MESSAGE
    return body


def ownllm_error_response(exc: OwnLLMError) -> JSONResponse:
    headers = None
    retry_after = exc.retry_after
    if retry_after is None and exc.status_code in (429, 503):
        retry_after = 1  # overload and rate limits always say when to come back
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, int(round(retry_after))))}
    return JSONResponse(error_body(exc), status_code=exc.status_code, headers=headers)


# pydantic names the member of a union it tried in `loc` ("str", "list[TextPart]",
# "TextPart"); wire field names are snake_case, so these are told apart and dropped.
_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})
# Errors that only say "not this member of a union": a more specific one explains better.
_SHAPE_ERRORS = frozenset(
    {
        "string_type",
        "int_type",
        "float_type",
        "bool_type",
        "list_type",
        "dict_type",
        "model_type",
        "model_attributes_type",
        "none_required",
        "int_from_float",
    }
)


def _is_type_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or part[:1].isupper())


def _param_of(loc: tuple) -> str | None:
    if loc and loc[0] in ("body", "query", "path", "header"):  # where, not a field (a body
        loc = loc[1:]  # field may be named `query`, as vector store search's is)
    parts = [str(p) for p in loc if not _is_type_tag(p)]
    if not parts:
        return None
    out = parts[0]
    for part in parts[1:]:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = next((e for e in errors if e.get("type") not in _SHAPE_ERRORS), errors[0])
    param = _param_of(tuple(first.get("loc", ())))
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    where = f"'{param}'" if param else "the request body"
    return f"Invalid value for {where}: {msg}.", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OwnLLMError)
    async def _ownllm(_request: Request, exc: OwnLLMError) -> JSONResponse:
        return ownllm_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc)
        return error_response(400, message, "invalid_request_error", param, "invalid_value")

    @app.exception_handler(MultipartParseError)
    async def _multipart(_request: Request, exc: MultipartParseError) -> JSONResponse:
        message = f"The multipart/form-data body is malformed: {exc}."
        return error_response(400, message, "invalid_request_error", "file", "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(
            exc.status_code, "server_error" if exc.status_code >= 500 else "invalid_request_error"
        )
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and message == "Not Found":
            message = "Unknown route. See /docs for the API."
        code = "not_found" if exc.status_code == 404 else None
        return error_response(exc.status_code, message, type_, None, code, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            500,
            INTERNAL_ERROR_MESSAGE,
            "server_error",
            None,
            "internal_error",
        )
