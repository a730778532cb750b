"""Reading a request body: JSON with base64 images, or a multipart form with image file parts.

Both end in the same pydantic model (strict types, unknown fields refused), so a form and a JSON
body obey one set of rules — the rules the OpenAPI schema states. Form text fields must be UTF-8:
Starlette's own parser quietly falls back to latin-1, which would store ``b"\\xff"`` as ``"ÿ"``, so
forms are read with :class:`Utf8MultiPartParser`, which refuses such a field instead.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser

from upgrader.runtime.images import BadImage
from upgrader.serving.http.middleware import RequestRejected
from upgrader.serving.http.schemas import RequestBody

T = TypeVar("T")

#: A form's ``k`` as text: an integer in decimal, nothing else ("5" yes; "5.0", "true", " 5" no).
_FORM_INT = re.compile(r"-?[0-9]{1,18}")


def decode_base64(images: list[str]) -> list[bytes]:
    """Each string of a JSON body's ``images`` as bytes, decoded exactly as
    :data:`~upgrader.serving.http.schemas.BASE64_PATTERN` describes (padded RFC 4648, no whitespace).

    Raises:
        BadImage: an item is not such base64, naming its position.
    """
    out = []
    for i, text in enumerate(images):
        # strict_mode alone lets surplus "=" through; the length and padding checks close that gap.
        if len(text) % 4 == 0 and len(text) - len(text.rstrip("=")) <= 2:
            try:
                out.append(binascii.a2b_base64(text, strict_mode=True))
                continue
            except (binascii.Error, ValueError):
                pass
        raise BadImage(f"image {i}: not valid base64 (padded, standard alphabet, no whitespace)")
    return out


@functools.lru_cache(maxsize=64)
def _properties(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON-schema properties of a request model (built once per model, on its first error)."""
    return model.model_json_schema().get("properties", {})  # type: ignore[no-any-return]


def explain(errors: Any, model: type[BaseModel] | None = None) -> str:
    """pydantic's errors as one line: ``field: problem; ...`` (at most five).

    An integer field of ``model`` with bounds is explained by its bounds, whatever went wrong
    (``k must be an integer from 1 to 1000, got true``).
    """
    props = _properties(model) if model is not None else {}
    parts = []
    for e in list(errors)[:5]:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        field = props.get(loc[0], {}) if len(loc) == 1 else {}
        if field.get("type") == "integer" and "minimum" in field and "maximum" in field:
            got = json.dumps(e.get("input"), default=str)[:40]
            parts.append(f"{loc[0]} must be an integer from {field['minimum']} to {field['maximum']}, got {got}")
            continue
        ctx = e.get("ctx") or {}
        if e.get("type") == "too_long":
            msg = f"{ctx.get('actual_length')} items; the limit is {ctx.get('max_length')}"
        elif e.get("type") == "too_short":
            msg = f"{ctx.get('actual_length')} items; give at least {ctx.get('min_length')}"
        else:
            msg = "unknown field" if e.get("type") == "extra_forbidden" else e.get("msg", "invalid")
        parts.append(f"{'.'.join(map(str, loc)) or 'body'}: {msg}")
    return "; ".join(parts)


def validate(cls: type[T], raw: bytes) -> T:
    """``raw`` JSON as ``cls``, or a 422 :class:`RequestRejected` saying which fields are wrong."""
    try:
        return cls.model_validate_json(raw)  # type: ignore[attr-defined,no-any-return]
    except ValidationError as exc:
        raise RequestRejected(explain(exc.errors(), cls), 422, "invalid_request") from None  # type: ignore[arg-type]


class Utf8MultiPartParser(MultiPartParser):
    """Starlette's multipart parser, but a text field that is not UTF-8 is refused, not read as latin-1."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            if self._charset != "utf-8":
                raise RequestRejected(f"form declares charset {self._charset}; send the form's text fields as UTF-8",
                                      422, "invalid_request")
            try:
                bytes(part.data).decode("utf-8")
            except UnicodeDecodeError:
                raise RequestRejected(f"{part.field_name}: form field is not UTF-8 text; send ids and labels as UTF-8",
                                      422, "invalid_request") from None
        super().on_part_end()


async def parse_body(request: Request, model: type[RequestBody], max_images: int) -> dict[str, Any]:
    """The request's fields, from JSON (validated by ``model``) or a multipart form.

    Returns a dict of the model's fields with ``images`` as a list of encoded files (bytes).

    Raises:
        RequestRejected: 415 another content type, 400 a malformed form, 422 invalid fields.
        BadImage: a JSON image that is not base64.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        data = validate(model, await request.body()).model_dump()
        data["images"] = decode_base64(data["images"])
        return data
    if ctype == "multipart/form-data":
        return await _parse_form(request, model, max_images)
    raise RequestRejected(
        f"unsupported content type {ctype or '(none)'!r}; send application/json (base64 images) or multipart/form-data",
        415, "unsupported_media_type",
    )


async def _read_form(request: Request, max_images: int) -> FormData:
    parser = Utf8MultiPartParser(request.headers, request.stream(), max_files=max_images + 1,
                                 max_fields=3 * max_images + 10)
    try:
        return await parser.parse()
    except MultiPartException as exc:
        raise RequestRejected(f"malformed multipart form ({exc.message[:120]})", 400, "bad_request") from None
    except RequestRejected:
        raise
    except Exception as exc:  # python-multipart raises its own errors for broken forms
        raise RequestRejected(f"malformed multipart form ({str(exc)[:120]})", 400, "bad_request") from None


async def _parse_form(request: Request, model: type[RequestBody], max_images: int) -> dict[str, Any]:
    """The fields of a multipart form, checked by ``model`` like a JSON body (images as file parts)."""
    fields = set(model.model_fields)
    form = await _read_form(request, max_images)
    try:
        unknown = sorted(set(form.keys()) - fields)
        if unknown:
            raise RequestRejected(f"{unknown[0]}: unknown field; allowed: {', '.join(sorted(fields))}", 422)
        images = []
        for i, part in enumerate(form.getlist("images")):
            if isinstance(part, str):
                raise RequestRejected("images: send image files (file parts), not text fields", 422)
            data = await part.read()
            if not data:
                raise RequestRejected(f"images.{i}: empty image file", 422)
            images.append(data)
        raw: dict[str, Any] = {"images": ["AA=="] * len(images)}  # stand-ins: the model counts them
        for name in fields - {"images"}:
            values = form.getlist(name)
            if not values:
                continue
            if any(not isinstance(v, str) for v in values):
                raise RequestRejected(f"{name}: send text fields, not file parts", 422)
            if name in ("ids", "labels"):
                raw[name] = [None if (name == "labels" and v == "") else v for v in values]
            else:
                if len(values) > 1:
                    raise RequestRejected(f"{name}: given {len(values)} times", 422)
                value = values[0]
                # A form carries text only: an integer field takes decimal digits, nothing looser.
                integer = model.model_fields[name].annotation is int
                raw[name] = int(value) if integer and _FORM_INT.fullmatch(value) else value
        data = validate(model, json.dumps(raw).encode()).model_dump()
        data["images"] = images
        return data
    finally:
        await form.close()
