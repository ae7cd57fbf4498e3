"""The body of ``POST /v1/classify``, read and checked: one clear message for each way it can be wrong.

A body is JSON ``{"texts": [...]}`` with optional ``ids`` (one per text) and the per-request options
of ``gptclf predict`` (:data:`OPTIONS`): the decision options (``threshold``, ``positive``,
``min_confidence``, ``no_calibration``) and the long-text options (``long_texts``, ``head_tokens``,
``stride``, ``aggregate``). Each replaces the server's own setting for this request only; their
rules are the CLI's (the run's task checks the decision options, the run's max length the long-text
ones). The messages name the JSON fields (``threshold``), never the command line's flags.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields, replace
from typing import Any

from gptclf.option_groups import AGGREGATES, LONG_TEXT_MODES, DecisionOptions, LongTextOptions


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


#: The per-request options and the JSON types they take (bool is not a number here).
OPTIONS: dict[str, tuple[type, ...]] = {
    "threshold": (int, float),
    "positive": (str,),
    "min_confidence": (int, float),
    "no_calibration": (bool,),
    "long_texts": (str,),
    "head_tokens": (int,),
    "stride": (int,),
    "aggregate": (str,),
}
FIELDS = ("texts", "ids", *OPTIONS)
_SURROGATE = "\\ud800-\\udfff"
_CHOICES = {"long_texts": LONG_TEXT_MODES, "aggregate": AGGREGATES}


@dataclass(frozen=True)
class ClassifyRequest:
    """A checked request: its texts, their ids (None: their positions) and the options it gave."""

    texts: list[str]
    ids: list[Any] | None
    decide: dict[str, Any]
    long: dict[str, Any]


def parse_body(body: bytes, max_texts: int) -> ClassifyRequest:
    """The request in ``body``.

    Raises:
        RequestError: 400 for a body that is not UTF-8 JSON or not an object; 413 for more than
            ``max_texts`` texts; 422 for a missing, unknown or ill-typed field.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    try:
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise RequestError(400, f"the body is not valid JSON ({why})") from None
    except _Refused as exc:
        raise RequestError(400, f"the body is not valid JSON ({exc})") from None
    except ValueError:  # a number of thousands of digits
        raise RequestError(400, "the body is not valid JSON (a number too long to read)") from None
    except RecursionError:
        raise RequestError(400, "the body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise RequestError(422, 'the body must be a JSON object: {"texts": ["...", ...]}')
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise RequestError(422, f"unknown field {unknown[0]!r}: the fields are {', '.join(FIELDS)}")
    texts = _texts(data, max_texts)
    ids = _ids(data.get("ids"), len(texts))
    options: dict[str, Any] = {}
    for name, types in OPTIONS.items():
        value = data.get(name)
        if value is None:
            continue
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            kind = (
                "a number"
                if float in types
                else {str: "a string", bool: "true or false"}.get(types[0], "an integer")
            )
            raise RequestError(422, f"{name} must be {kind} (got {json.dumps(value)[:40]})")
        if isinstance(value, str) and _unencodable(value):
            raise RequestError(422, f"{name} contains a lone surrogate: not Unicode text")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise RequestError(422, f"{name} must be one of {', '.join(_CHOICES[name])} (got {value!r})")
        options[name] = value
    decide = {k: v for k, v in options.items() if k in _names(DecisionOptions)}
    long = {k: v for k, v in options.items() if k in _names(LongTextOptions)}
    return ClassifyRequest(texts, ids, decide, long)


class _Refused(ValueError):
    """JSON that Python's reader takes but the server does not."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"the key {json.dumps(key)[:40]} appears twice in one object")
        out[key] = value
    return out


def _unencodable(value: str) -> bool:
    """Whether ``value`` holds a lone surrogate (JSON's ``\ud800``), which no UTF-8 text can hold."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _texts(data: dict[str, Any], max_texts: int) -> list[str]:
    if "texts" not in data:
        raise RequestError(422, 'the field "texts" is missing: send {"texts": ["...", ...]}')
    texts = data["texts"]
    if not isinstance(texts, list):
        raise RequestError(422, f'"texts" must be a list of strings (got {type(texts).__name__})')
    if not texts:
        raise RequestError(422, '"texts" is empty: send at least one text')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the server takes at most {max_texts}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise RequestError(422, f"texts[{i}] is not a string (got {json.dumps(t)[:40]})")
        if "\x00" in t:
            raise RequestError(422, f"texts[{i}] contains a null byte (U+0000)")
        if _unencodable(t):
            raise RequestError(422, f"texts[{i}] contains a lone surrogate ({_SURROGATE}): not Unicode text")
    return texts


def _ids(ids: Any, n: int) -> list[Any] | None:
    if ids is None:
        return None
    if not isinstance(ids, list) or len(ids) != n:
        raise RequestError(422, f'"ids" must be a list with one id per text ({n})')
    for i, ident in enumerate(ids):
        if isinstance(ident, bool) or not isinstance(ident, (str, int)):
            raise RequestError(422, f"ids[{i}] must be a string or an integer (got {json.dumps(ident)[:40]})")
        if isinstance(ident, str) and _unencodable(ident):
            raise RequestError(422, f"ids[{i}] contains a lone surrogate ({_SURROGATE}): not Unicode text")
    return ids


def _names(group: type) -> set[str]:
    return {f.name for f in fields(group)}


def with_options(base: Any, given: dict[str, Any]) -> Any:
    """The option group ``base`` with the request's ``given`` options in place of its own."""
    return replace(base, **given) if given else base


_FLAG = re.compile(r"--([a-z][a-z-]*)")


def field_words(message: str) -> str:
    """A core message's command-line flags as the request's field names (``--min-confidence``
    -> ``min_confidence``)."""
    return _FLAG.sub(lambda m: m.group(1).replace("-", "_"), message)
