"""The OpenAPI description of the request bodies the endpoints read themselves, and of the auth.

The endpoints parse their bodies by hand (JSON or a multipart form, see :mod:`.forms`), so FastAPI
cannot derive their schemas: they are written here from the same pydantic models the parsing
validates with, built from the server's own limits — every bound a handler enforces on a field
(counts, lengths, k's range, required fields) is in the schema a client reads.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

from upgrader.serving.http.auth import WRITE_ROUTES
from upgrader.serving.http.settings import ServerSettings

#: The security scheme's name in ``components.securitySchemes``.
BEARER = "bearerAuth"


def _form_schema(json_schema: dict[str, Any]) -> dict[str, Any]:
    """The multipart form equivalent of a JSON body's schema: images as file parts, text fields as text."""
    form = copy.deepcopy(json_schema)
    props = form["properties"]
    images = props["images"]
    images["items"] = {"type": "string", "format": "binary", "contentMediaType": "image/*", "minLength": 1}
    images["description"] = images["description"].replace("base64-encoded image files", "image file parts")
    if "labels" in props:
        labels = props["labels"]
        array = next(s for s in labels["anyOf"] if s.get("type") == "array")
        item = next(s for s in array["items"]["anyOf"] if s.get("type") == "string")
        props["labels"] = {**{k: v for k, v in array.items() if k != "items"}, "items": item,
                           "description": labels["description"] + " In a form, an empty field is no label."}
    if "k" in props:
        props["k"]["description"] += " A form gives it as decimal digits."
    form.pop("title", None)
    return form


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint reading ``model`` as JSON or as a multipart form."""
    json_schema = model.model_json_schema()
    form = _form_schema(json_schema)
    text = {name: {"contentType": "text/plain; charset=utf-8"} for name in form["properties"] if name != "images"}
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": json_schema},
        "multipart/form-data": {"schema": form, "encoding": {"images": {"contentType": "image/*"}, **text}},
    }}}


def auth_doc(settings: ServerSettings, method: str, path: str) -> dict[str, Any]:
    """``openapi_extra`` for an endpoint's auth: its security requirement and 401 / 403 answers."""
    write = (method, path) in WRITE_ROUTES
    guarded = settings.token is not None or (write and settings.write_token is not None)
    if not guarded:
        return {}
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    responses: dict[str, Any] = {"401": {"description": "Missing or invalid bearer token", **error}}
    if write and settings.write_token is not None and settings.token is not None:
        responses["403"] = {"description": "A read token sent to an endpoint that writes", **error}
    return {"security": [{BEARER: []}], "responses": responses}


def _integral_bounds(node: Any) -> None:
    """Bounds of integer fields back to integers, in place: FastAPI's OpenAPI model holds them as
    floats (``"minimum": 1.0``), which invites a client to send ``1.0`` where the server takes ``1``."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "default"):
                if isinstance(node.get(key), float) and node[key].is_integer():
                    node[key] = int(node[key])
        for value in node.values():
            _integral_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integral_bounds(value)


def finish_schema(schema: dict[str, Any], settings: ServerSettings) -> dict[str, Any]:
    """The generated schema made exact: integer bounds as integers, and the bearer scheme declared
    when the server needs a token."""
    _integral_bounds(schema)
    if settings.authenticated:
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[BEARER] = {"type": "http", "scheme": "bearer", "description": (
            "Authorization: Bearer TOKEN. Reads accept the token or the write token; POST /gallery "
            "needs the write token when the server has one.")}
    return schema


def merge(*docs: dict[str, Any]) -> dict[str, Any]:
    """Several ``openapi_extra`` dicts as one (``responses`` merged key by key)."""
    out: dict[str, Any] = {}
    for doc in docs:
        for key, value in doc.items():
            if key == "responses":
                out.setdefault("responses", {}).update(value)
            else:
                out[key] = value
    return out
