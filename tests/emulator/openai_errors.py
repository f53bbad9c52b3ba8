"""OpenAI's error bodies: the same shape for every endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from tests.emulator.exchange import REJECTED_API_KEY, ErrorReply, Exchange, Failure

# Error type, code and message the real API uses for a status when nothing more specific applies.
_STATUS_ERRORS: Mapping[int, tuple[str, str | None, str]] = MappingProxyType(
    {
        400: ("invalid_request_error", None, "Invalid request (emulated)."),
        401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
        403: ("invalid_request_error", None, "You are not allowed to sample from this model"),
        404: (
            "invalid_request_error",
            "model_not_found",
            "The model does not exist or you do not have access to it.",
        ),
        409: ("invalid_request_error", None, "Another request is using this resource."),
        413: ("invalid_request_error", None, "Request too large."),
        422: ("invalid_request_error", None, "Unprocessable request."),
        429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
        500: (
            "server_error",
            None,
            "The server had an error while processing your request. Sorry about that!",
        ),
        502: ("server_error", None, "Bad gateway."),
        503: ("server_error", None, "The engine is currently overloaded, please try again later"),
        504: ("server_error", None, "Gateway timeout."),
    }
)

_MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username and password. You can "
    "obtain an API key from https://platform.openai.com/account/api-keys."
)
_MALFORMED_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. "
    "If you have trouble figuring out how to fix this, please contact us through our help center at "
    "help.openai.com.)"
)


def error_fields(error: ErrorReply) -> dict[str, Any]:
    """The inner ``error`` object for a failure: message, type, param, code."""
    default_type = "server_error" if error.status >= 500 else "invalid_request_error"
    kind, code, message = _STATUS_ERRORS.get(error.status, (default_type, None, "Emulated error."))
    param = None
    match error.failure:
        case Failure.MISSING_KEY:
            code, message = None, _MISSING_KEY_MESSAGE
        case Failure.REJECTED_KEY:
            code = "invalid_api_key"
            message = (
                f"Incorrect API key provided: {REJECTED_API_KEY[:7]}*****{REJECTED_API_KEY[-4:]}. "
                "You can find your API key at https://platform.openai.com/account/api-keys."
            )
        case Failure.MALFORMED_JSON:
            code, message = None, _MALFORMED_JSON_MESSAGE
        case Failure.UNKNOWN_ROUTE:
            code, message = None, f"Invalid URL ({error.detail})"
        case Failure.UNKNOWN_MODEL:
            code, param = "model_not_found", "model"
            message = f"The model `{error.detail}` does not exist or you do not have access to it."
        case Failure.INVALID_REQUEST:
            code, message = None, error.detail
        case Failure.SCENARIO:
            pass
    return {"message": message, "type": kind, "param": param, "code": code}


def stream_error_fields(status: int) -> dict[str, Any]:
    """The error object of a failure that happens after a stream started."""
    return error_fields(ErrorReply(status, Failure.SCENARIO))


def required_model(exchange: Exchange) -> str | ErrorReply:
    """The request's model, or the error the real API gives when it is missing."""
    model = exchange.body.get("model")
    if not isinstance(model, str) or not model:
        return ErrorReply(400, Failure.INVALID_REQUEST, "you must provide a model parameter")
    return model
