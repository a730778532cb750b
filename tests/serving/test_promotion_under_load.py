"""A real uvicorn server on loopback keeps answering, with zero failures, while production moves
under concurrent client load, and answers from the new generation afterwards; and while another
process adds, re-embeds and deletes gallery items, after which it holds exactly the registry's gallery."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass

import httpx

from upgrader.serving.http.app import create_app
from upgrader.serving.http.run import build_server
from upgrader.serving.http.settings import ServerSettings
from upgrader.services.promotion import promote
from upgrader.services.workspace import open_workspace

CLIENTS = 8
MAX_SECONDS = 120.0  # bound for a hung server; the phases below end on conditions, not on time
MAX_REQUESTS_PER_CLIENT = 5000  # bound only: the phases end long before


@dataclass
class Outcome:
    started: float
    status: int | None  # None: the request raised (connection refused, reset, timeout)
    generation: str | None
    error: str | None = None


def _wait_until(condition, deadline: float, what: str) -> None:  # type: ignore[no-untyped-def]
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_promotion_under_concurrent_load_drops_nothing(case, png, loopback_socket) -> None:  # type: ignore[no-untyped-def]
    app = create_app(case.home, ServerSettings(poll_seconds=0.1, threads=2))
    sock = loopback_socket
    port = sock.getsockname()[1]
    server = build_server(app, "127.0.0.1", port)
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    serving.start()
    deadline = time.monotonic() + MAX_SECONDS
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started

    url = f"http://127.0.0.1:{port}"
    body = {"images": [base64.b64encode(png(case.spare[0])).decode()], "k": 5}
    stop = threading.Event()
    outcomes: list[list[Outcome]] = [[] for _ in range(CLIENTS)]

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as c:  # a bound for a stuck request, not an expected latency
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                t = time.monotonic()
                try:
                    r = c.post("/search", json=body)
                    gen = r.json()["generation"]["name"] if r.status_code == 200 else None
                    outcomes[i].append(Outcome(t, r.status_code, gen, None if r.status_code == 200 else r.text))
                except Exception as exc:  # noqa: BLE001 - a failure to count, not to raise
                    outcomes[i].append(Outcome(t, None, None, repr(exc)))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        # Load before the promotion: every client has had an answer from g3.
        _wait_until(lambda: all(any(o.generation == "g3" for o in list(per)) for per in outcomes),
                    deadline, "every client answered by g3")
        with open_workspace(case.home) as ws:
            promote(ws, "g4", force=True, reason="test: promotion under load")
        switched_at = None
        with httpx.Client(base_url=url, timeout=60.0) as c:  # a bound for a stuck request, not an expected latency
            while time.monotonic() < deadline:
                if c.get("/generation").json()["serving"]["name"] == "g4":
                    switched_at = time.monotonic()
                    break
                time.sleep(0.05)  # poll period of this check; the bound is the deadline
        assert switched_at is not None, "the server never picked up the promotion"
        # Load after the switch: every client has had an answer to a request it sent after it.
        _wait_until(lambda: all(any(o.started > switched_at for o in list(per)) for per in outcomes),
                    deadline, "every client answered after the switch")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        server.should_exit = True
        serving.join(timeout=15)
        app.state.service.close()

    flat = [o for per in outcomes for o in per]
    failures = [o for o in flat if o.status != 200]
    assert not failures, f"{len(failures)} of {len(flat)} requests failed, e.g. {failures[0]}"
    assert len(flat) >= 2 * CLIENTS
    gens = {o.generation for o in flat}
    assert gens <= {"g3", "g4"} and "g3" in gens
    after = [o for o in flat if o.started > switched_at]
    assert after and all(o.generation == "g4" for o in after)


def test_gallery_changes_under_load_are_followed_with_no_failure(case, png, loopback_socket) -> None:  # type: ignore[no-untyped-def]
    from upgrader.services.registration import open_embedder

    app = create_app(case.home, ServerSettings(poll_seconds=0.05, threads=2))
    sock = loopback_socket
    port = sock.getsockname()[1]
    server = build_server(app, "127.0.0.1", port)
    serving = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    serving.start()
    deadline = time.monotonic() + MAX_SECONDS
    _wait_until(lambda: server.started, deadline, "the server started")
    url = f"http://127.0.0.1:{port}"
    body = {"images": [base64.b64encode(png(case.spare[0])).decode()], "k": 60}
    stop = threading.Event()
    outcomes: list[list[Outcome]] = [[] for _ in range(CLIENTS)]

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60.0) as c:  # a bound for a stuck request, not an expected latency
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                t = time.monotonic()
                try:
                    r = c.post("/search", json=body)
                    outcomes[i].append(Outcome(t, r.status_code, None, None if r.status_code == 200 else r.text))
                except Exception as exc:  # noqa: BLE001 - a failure to count, not to raise
                    outcomes[i].append(Outcome(t, None, None, repr(exc)))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        _wait_until(lambda: all(per for per in outcomes), deadline, "every client answered")
        with open_workspace(case.home) as ws:  # another process: ingest, a backfill-like re-embed, removals
            reg = ws.registry
            g3, g4 = reg.get_generation("g3"), reg.get_generation("g4")
            reg.add_gallery_items(g3.id, [f"new-{j}" for j in range(20)], open_embedder(ws, g3).embed(case.spare))
            for j in range(0, 20, 5):  # four batches, one transaction each
                ids = case.ids["g1"][j : j + 5]
                reg.reembed_gallery_items(ids, g4.id, open_embedder(ws, g4).embed(case.images["g1"][j : j + 5]))
            reg.delete_gallery_items(case.ids["g2"][:10])
            want = (reg.gallery_version(), {str(g): n for g, n in reg.gallery_counts().items()})
        with httpx.Client(base_url=url, timeout=60.0) as c:
            _wait_until(lambda: (lambda g: (g["gallery_version"], g["items_by_generation"]))(c.get("/generation").json())
                        == want, deadline, "the server holds the registry's gallery")
        mark = time.monotonic()
        _wait_until(lambda: all(any(o.started > mark for o in list(per)) for per in outcomes),
                    deadline, "every client answered after the changes")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        server.should_exit = True
        serving.join(timeout=15)
        app.state.service.close()

    flat = [o for per in outcomes for o in per]
    failures = [o for o in flat if o.status != 200]
    assert not failures, f"{len(failures)} of {len(flat)} requests failed, e.g. {failures[0]}"
    assert want[1] == {str(case.gen_ids["g2"]): 10, str(case.gen_ids["g3"]): 40, str(case.gen_ids["g4"]): 20}
