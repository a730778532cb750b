"""`serve`: the HTTP query service (FastAPI + uvicorn) over the workspace's production generation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from upgrader.cli.common import (
    EXIT_ERROR,
    HomeOption,
    JsonOption,
    console,
    err_console,
    handle_errors,
    print_json,
    styled,
    usage_error,
)
from upgrader.core.errors import InvalidRequest

#: Environment variables holding the tokens themselves (the flags name files holding them).
TOKEN_ENV, WRITE_TOKEN_ENV = "UPGRADER_TOKEN", "UPGRADER_WRITE_TOKEN"

#: What to do about a port that cannot be listened on, by PortUnavailable.reason.
PORT_FIXES = {
    "in_use": "the port is already in use (another server?); stop it or pass another --port N",
    "denied": "permission denied (ports below 1024 need privileges); pass --port N with N from 1024 up",
    "not_local": "the address is not one of this machine's; pass a --host it has, or 127.0.0.1",
}


def register(app: typer.Typer) -> None:
    """Attach this module's command."""
    app.command("serve")(serve)


def _token(path: Path | None, flag: str, env: str) -> str | None:
    """The token from ``flag``'s file, else from the environment variable ``env``, else None."""
    from upgrader.serving.http.auth import check_token, read_token_file

    try:
        if path is not None:
            return read_token_file(path)
        value = os.environ.get(env)
        return check_token(value.strip(), env) if value is not None and value.strip() else None
    except InvalidRequest as exc:
        usage_error(f"{flag if path is not None else env}: {exc}")
        return None  # unreachable: usage_error raises


@handle_errors
def serve(
    home: HomeOption = None,
    host: Annotated[str, typer.Option(help="Address to bind; loopback unless --allow-remote.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    poll_seconds: Annotated[float, typer.Option(help="How often to check the production alias and new gallery items.")] = 1.0,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body in MiB (larger: 413).")] = 16.0,
    max_images: Annotated[int, typer.Option(help="Images per request.")] = 64,
    max_request_pixels: Annotated[int, typer.Option(
        help="Pixels (width x height) of all the images of one request together (more: 413); the default keeps "
             "a request's decoding under about 1 s of CPU.")] = 64_000_000,
    threads: Annotated[int, typer.Option(help="Requests embedded / searched at once (worker threads).")] = max(1, os.cpu_count() or 1),
    index: Annotated[str, typer.Option(help="Gallery index: flat (exact), hnsw or ivf (approximate).")] = "flat",
    calibration: Annotated[bool, typer.Option(
        "--calibration/--no-calibration",
        help="Rank by the score calibration stored with production's gate report (--no-calibration: raw "
             "cosine similarity, for comparison).")] = True,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Allow a non-loopback --host; needs a token (--token-file or UPGRADER_TOKEN).")] = False,
    token_file: Annotated[Path | None, typer.Option(
        help=f"File holding the bearer token every request needs (or set {TOKEN_ENV} to the token).",
        show_default=False)] = None,
    write_token_file: Annotated[Path | None, typer.Option(
        help=f"File holding a separate token for POST /gallery (or set {WRITE_TOKEN_ENV}); reads accept either.",
        show_default=False)] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn / service log level.")] = "info",
    json_out: JsonOption = False,
) -> None:
    """Serve search over the mixed-generation gallery; promotions are picked up without a restart.

    Endpoints: POST /search, POST /embed, POST /gallery, GET /health, GET /generation; the OpenAPI schema is at /openapi.json and interactive docs at /docs. Stop with Ctrl-C.

    Example: upgrader serve --port 8000     then     curl -F images=@shoe.png -F k=5 http://127.0.0.1:8000/search
    """
    import logging

    # Imported here: every other command stays free of FastAPI's import time.
    from upgrader.services.gallery import CalibrationUnusable
    from upgrader.serving.http.run import PortUnavailable, is_loopback, run_server
    from upgrader.serving.http.settings import ServerSettings

    if port < 0 or port > 65535:
        usage_error(f"--port {port} is outside 0-65535")
    if max_request_mb <= 0:
        usage_error("--max-request-mb must be positive")
    if max_request_pixels < 1:
        usage_error(f"--max-request-pixels must be at least 1, got {max_request_pixels}")
    if not allow_remote and not is_loopback(host):
        usage_error(f"--host {host} is not a loopback address; pass --allow-remote (with --token-file PATH) to bind it")
    token = _token(token_file, "--token-file", TOKEN_ENV)
    write_token = _token(write_token_file, "--write-token-file", WRITE_TOKEN_ENV)
    if not is_loopback(host) and token is None and write_token is None:
        usage_error(f"--allow-remote needs a bearer token: pass --token-file PATH (or set {TOKEN_ENV}), so that "
                    "not everyone who can reach the server can write to the gallery")
    settings = ServerSettings(poll_seconds=poll_seconds, max_request_bytes=int(max_request_mb * 1024 * 1024),
                              max_images=max_images, max_request_pixels=max_request_pixels, threads=threads,
                              index=index, calibrate=calibration, token=token, write_token=write_token)
    auth = ("reads and writes need a token" if token else "writes need the write token; reads are open") \
        if settings.authenticated else "no token"
    if token and write_token:
        auth = "reads need a token, writes the write token"
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")

    def ready(service) -> None:  # type: ignore[no-untyped-def]
        st = service.status()
        cal = st.calibration
        info = {"url": f"http://{host}:{port}", "generation": st.serving.name if st.serving else None,
                "generation_id": st.serving.id if st.serving else None, "gallery_items": st.gallery_items,
                "index": st.index, "poll_seconds": poll_seconds, "auth": auth,
                "calibrated": cal is not None, "calibration_maps": len(cal.maps) if cal else 0}
        if json_out:
            print_json(info)
            return
        gen = styled("[bold]{}[/]", info["generation"]) if st.serving else styled("[yellow]nothing (promote a generation)[/]")
        maps = len(cal.maps) if cal is not None else 0
        ranked = (f"calibrated ({maps} score map{'' if maps == 1 else 's'})" if cal is not None else
                  "raw cosine (--no-calibration)" if not calibration else "raw cosine (no calibration stored)")
        console.print(Text("serving ") + gen + styled(
            " over {} gallery items on [bold]{}[/], {} (docs: {}/docs; {}); watching the production alias every {}s",
            st.gallery_items, info["url"], ranked, info["url"], auth, f"{poll_seconds:g}"))
        err_console.print("Ctrl-C to stop", style="dim")

    try:
        run_server(home, host=host, port=port, settings=settings, allow_remote=allow_remote,
                   log_level=log_level.lower(), on_ready=ready)
    except CalibrationUnusable as exc:
        raise CalibrationUnusable(f"{exc} (--no-calibration)") from None
    except PortUnavailable as exc:
        why = PORT_FIXES.get(exc.reason)
        message = f"cannot listen on {exc.host}:{exc.port}: {why}" if why else f"{exc} (--host, --port N)"
        err_console.print(styled("[bold red]error:[/] {}", message), highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR) from None
