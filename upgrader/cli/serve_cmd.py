"""`serve`: the HTTP query service (FastAPI + uvicorn) over the workspace's production generation."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.text import Text

from upgrader.cli.common import HomeOption, JsonOption, console, err_console, handle_errors, print_json, styled, usage_error


def register(app: typer.Typer) -> None:
    """Attach this module's command."""
    app.command("serve")(serve)


@handle_errors
def serve(
    home: HomeOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless --allow-remote.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    poll_seconds: Annotated[float, typer.Option(help="How often to check the production alias and new gallery items.")] = 1.0,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body in MiB (larger: 413).")] = 16.0,
    max_images: Annotated[int, typer.Option(help="Images per request.")] = 64,
    threads: Annotated[int, typer.Option(help="Requests embedded / searched at once (worker threads).")] = max(1, os.cpu_count() or 1),
    index: Annotated[str, typer.Option(help="Gallery index: flat (exact), hnsw or ivf (approximate).")] = "flat",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host (the API has no authentication).")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn / service log level.")] = "info",
    json_out: JsonOption = False,
) -> None:
    """Serve search over the mixed-generation gallery; promotions are picked up without a restart.

    Endpoints: POST /search, POST /embed, POST /gallery, GET /health, GET /generation; the OpenAPI schema is at /openapi.json and interactive docs at /docs. Stop with Ctrl-C.

    Example: upgrader serve --port 8000     then     curl -F images=@shoe.png -F k=5 http://127.0.0.1:8000/search
    """
    import logging

    # Imported here: every other command stays free of FastAPI's import time.
    from upgrader.serving.http.run import is_loopback, run_server
    from upgrader.serving.http.settings import ServerSettings

    if port < 0 or port > 65535:
        usage_error(f"--port {port} is outside 0-65535")
    if max_request_mb <= 0:
        usage_error("--max-request-mb must be positive")
    if not allow_remote and not is_loopback(host):
        usage_error(f"--host {host} is not a loopback address; the service has no authentication, so put it behind "
                    "a proxy that has, and pass --allow-remote to bind it anyway")
    settings = ServerSettings(poll_seconds=poll_seconds, max_request_bytes=int(max_request_mb * 1024 * 1024),
                              max_images=max_images, threads=threads, index=index)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(service) -> None:  # type: ignore[no-untyped-def]
        st = service.status()
        info = {"url": f"http://{host}:{port}", "generation": st.serving.name if st.serving else None,
                "generation_id": st.serving.id if st.serving else None, "gallery_items": st.gallery_items,
                "index": st.index, "poll_seconds": poll_seconds}
        if json_out:
            print_json(info)
            return
        gen = styled("[bold]{}[/]", info["generation"]) if st.serving else styled("[yellow]nothing (promote a generation)[/]")
        console.print(Text("serving ") + gen + styled(
            " over {} gallery items on [bold]{}[/] (docs: {}/docs); watching the production alias every {}s",
            st.gallery_items, info["url"], info["url"], f"{poll_seconds:g}"))
        err_console.print("Ctrl-C to stop", style="dim")

    run_server(home, host=host, port=port, settings=settings, allow_remote=allow_remote,
               log_level=log_level.lower(), on_ready=ready)
