"""The input rules of both front doors, in one place: HTTP (`gateway/api/http.py`), gRPC (`gateway/api/grpc_service.py`)
and the core call these, so a value is accepted or refused the same way whichever door it came through.

Every function raises `InvalidParameter` (HTTP 422, gRPC INVALID_ARGUMENT) with a message that quotes at most a short
excerpt of what was sent: a 1 MB label is never echoed back.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

from gateway.errors import InvalidParameter

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # model names and version labels: they name things, never files
_NAME = re.compile(NAME_PATTERN)
# ASCII digits only: str.isdigit() and int() also accept "²", "①", "٣", "1_000", " 3". At most 100 digits, far below
# the length where int() itself raises (4300).
_ASCII_INT = re.compile(r"-?[0-9]{1,100}")
_VISIBLE = re.compile(r"[\x20-\x7e]+")  # printable ASCII: what an HTTP header and gRPC metadata both carry
MAX_ROUTING_KEY = 256
MAX_REQUEST_ID = 128
MAX_CLASS_LABEL = 128
MAX_OPTION = 32  # CAM method and colormap names
EXCERPT = 40
# Names a CAM method is also known by. `gradcampp` needs no URL encoding; `gradcam  ` is what an unencoded
# `gradcam++` in a query string decodes to (`+` means a space there), so that common spelling works too.
METHOD_ALIASES = {"gradcampp": "gradcam++", "gradcam  ": "gradcam++"}


def excerpt(value: object) -> str:
    """A value as an error message may quote it: repr of at most EXCERPT characters, with the full length if cut."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= EXCERPT:
        return repr(text) if isinstance(value, str) else text
    return f"{text[:EXCERPT]!r}... ({len(text)} characters)"


def out_of_range(name: str, value: object, low: float, high: float | None = None) -> InvalidParameter:
    """The one wording of every range error, from either door and the core."""
    bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
    return InvalidParameter(f"{name} must be {bound}, got {excerpt(value)}")


def check_range(name: str, value: float, low: float, high: float | None = None) -> float:
    """`low <= value <= high`; NaN fails too (every comparison with NaN is false)."""
    if not (low <= value and (high is None or value <= high)):
        raise out_of_range(name, value, low, high)
    return value


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """An integer in range; booleans are not integers here (JSON `true` is refused, not read as 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter(f"{name} must be an integer, got {excerpt(value)}")
    return int(check_range(name, value, low, high))


def parse_int(name: str, text: str) -> int:
    """A query/form value: optional minus and ASCII digits only; no `1.0`, `+3`, ` 3`, `1_000`, `٣` or `²`."""
    if not isinstance(text, str) or not _ASCII_INT.fullmatch(text):
        raise InvalidParameter(f"{name} must be an integer written with ASCII digits, got {excerpt(text)}")
    return int(text)


def _ascii_int(value: object) -> object:
    """pydantic BeforeValidator: strings must be ASCII integers; non-strings go on to the (strict) int check."""
    if isinstance(value, str):
        if not _ASCII_INT.fullmatch(value):
            raise ValueError("must be an integer written with ASCII digits")
        return int(value)
    return value


# A query parameter declared as `AsciiInt` accepts "3" and refuses "1.0", "+3", " 3", "1_000", "٣".
AsciiInt = Annotated[int, BeforeValidator(_ascii_int)]


def _check_text(what: str, value: str, limit: int, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(f"{what} must be a string, got {excerpt(value)}")
    if len(value) > limit:
        raise InvalidParameter(f"{what} is {len(value)} characters long; the limit is {limit} (got {excerpt(value)})")
    if not pattern.fullmatch(value):
        raise InvalidParameter(f"{what} has characters outside {pattern.pattern} (got {excerpt(value)})")
    return value


def check_name(what: str, value: str) -> str:
    """A model name or a version label: letters, digits, `_` and `-`, 1 to 64 characters."""
    return _check_text(what, value, 64, _NAME)


def check_model(value: str) -> str:
    return check_name("model", value)


def check_label(value: str) -> str:
    return check_name("label", value)


def check_routing_key(value: str) -> str:
    """Sticky canary routing key (header `X-Routing-Key`, gRPC `routing_key` or metadata): printable ASCII."""
    return _check_text("routing key", value, MAX_ROUTING_KEY, _VISIBLE)


def check_request_id(value: str) -> str:
    """Echoed back in `X-Request-ID`, so printable ASCII only."""
    return _check_text("request id", value, MAX_REQUEST_ID, _VISIBLE)


def check_pin(model: str | None, version: int | None, label: str | None, routing_key: str | None) -> None:
    """What a request may ask of the router: a valid model name, a version >= 1 or a label (not both), a key."""
    if model is not None:
        check_model(model)
    if version is not None:
        check_int("version", version, 1)  # no upper bound: an unserved version is a 404, however large
    if label is not None:
        check_label(label)
    if version is not None and label is not None:
        raise InvalidParameter("pin either a version or a label, not both")
    if routing_key is not None:
        check_routing_key(routing_key)


def parse_class(value: str) -> tuple[str | None, int | None]:
    """`class` as sent over HTTP: ASCII digits are an index, anything else is a label (a class name).

    Returns (label, index). "-1" is a negative index (refused); "²", "①" or "٣" are labels, which no model has.
    """
    if _ASCII_INT.fullmatch(value):
        index = int(value)
        if index < 0:
            raise out_of_range("class index", value, 0)
        return None, index
    return check_class_label(value), None


def check_class_label(value: str) -> str:
    """A class name to explain: at most MAX_CLASS_LABEL printable characters (any script, no control characters)."""
    if len(value) > MAX_CLASS_LABEL:
        raise InvalidParameter(f"class is {len(value)} characters long; the limit is {MAX_CLASS_LABEL} "
                               f"(got {excerpt(value)})")
    if not value or not value.isprintable():
        raise InvalidParameter(f"class must be a non-empty printable name, got {excerpt(value)}")
    return value


def _option(what: str, value: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise InvalidParameter(f"unknown {what} {excerpt(value)}; {what}s: {', '.join(allowed)}")
    return value


def validate_method(value: str) -> str:
    """A CAM method name or alias, returned as the canonical name (`gradcampp` -> `gradcam++`)."""
    from gateway.cam import METHODS  # numpy/OpenCV only; imported here so this module stays light

    return _option("method", METHOD_ALIASES.get(value, value), list(METHODS))


def validate_colormap(value: str) -> str:
    from gateway.render import COLORMAPS

    return _option("colormap", value, list(COLORMAPS))


def check_alpha(value: float) -> float:
    return check_range("alpha", value, 0, 1)


def check_top_k(value: int, limit: int) -> int:
    return check_int("top_k", value, 1, limit)


def check_max_side(value: int | None) -> int | None:
    """None (the gateway's cap) or at least 16 px: a smaller overlay shows nothing."""
    return None if value is None else check_int("max_side", value, 16)


def check_rank(value: int, classes: int) -> int:
    return check_int("rank", value, 1, classes)


def check_class_index(value: int, classes: int) -> int:
    return check_int("class index", value, 0, classes - 1)
