"""The HTTP API of ``upgrader serve``: FastAPI over :class:`upgrader.serving.service.QueryService`.

Endpoints (JSON in and out; ``/docs`` and ``/openapi.json`` describe them):

* ``POST /search`` — query images -> top-k gallery items per image, each naming the generation that
  wrote it, plus the generation that embedded the queries.
* ``POST /embed`` — images -> embeddings of the production generation.
* ``POST /gallery`` — images + ids (+ labels) -> stored in the gallery, embedded by production.
* ``GET /health`` — 200 while a generation serves (503 before the first promotion, or while the
  production alias disagrees with its history).
* ``GET /generation`` — the generation serving now, and where the registry's alias points.

Images travel either as ``multipart/form-data`` file parts named ``images`` (other fields: ``k``;
``ids`` and ``labels`` repeated per image; text fields in UTF-8) or as JSON with base64-encoded
image files (``{"images": ["iVBORw0...", ...], "k": 5}``); request fields are strictly typed (no
``"k": "5"``) and the OpenAPI schema states every bound the server enforces. Any image size or mode
is accepted within the limits (per image, and a total-pixel budget per request) and resized to the
artifact's input. Errors are JSON ``{"error": CODE, "detail": MESSAGE}``: 400 bad image or form,
401 / 403 bearer token missing, wrong or read-only, 404 no such endpoint, 405 wrong method, 409
duplicate id, 413 request / image / pixel total too large, 415 wrong content type, 422 invalid
fields (unknown ones included), 503 nothing in production or serving refused. A failed request
changes nothing.

Promotion: the service swaps its (generation, embedder) snapshot when the ``production`` alias moves
(see :mod:`upgrader.serving.service`); every request reads the snapshot once, so none is dropped or mixed.

The modules: :mod:`.settings` (limits and tokens), :mod:`.schemas` (request and response bodies),
:mod:`.forms` (reading JSON and multipart bodies), :mod:`.openapi` (the schema of those bodies),
:mod:`.errors` (error answers), :mod:`.middleware` (the body-size limit), :mod:`.auth` (bearer
tokens), :mod:`.app` (the endpoints and :func:`~.app.create_app`) and :mod:`.run` (binding checks,
the port and uvicorn). No torch here: numpy, onnxruntime, FAISS, FastAPI and the registry.
``upgrader serve`` and ``python -m upgrader.server`` run it.
"""
