"""`init`, `status`, `generations` (and `generations rm`), `history`, `db upgrade`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from registry import Registry

from upgrader.cli.common import HomeOption, JsonOption, console, handle_errors, print_json, styled, workspace
from upgrader.core.formatting import pct
from upgrader.services.status import generation_rows, workspace_status
from upgrader.services.workspace import registry_location

STATUS_STYLE = {
    "candidate": "yellow",
    "verified": "green",
    "rejected": "red",
    "production": "bold reverse green",
    "retired": "dim",
}


def register(app: typer.Typer, db_app: typer.Typer) -> None:
    """Attach this module's commands. ``generations`` lists the lineage on its own and holds ``rm``."""
    app.command("init")(init)
    app.command("status")(status)
    generations_app = typer.Typer(help="List the lineage; `generations rm NAME` removes one.")
    generations_app.callback(invoke_without_command=True)(generations)
    generations_app.command("rm")(remove)
    app.add_typer(generations_app, name="generations")
    app.command("history")(history)
    db_app.command("upgrade")(db_upgrade)


@handle_errors
def init(
    home: HomeOption = None,
    dataset: Annotated[str, typer.Option(help="Dataset: 'fashion-mnist', an IDX folder, an image folder or an .npz.")] = "fashion-mnist",
    num_classes: Annotated[int, typer.Option("--num-classes", "-k", help="K: d-Simplex vertices to preallocate (embedding dim K-1).")] = 64,
    classes: Annotated[str, typer.Option(help="Classes in the probe set: 'all', indices '0-9' or names.")] = "all",
    probe_queries: Annotated[int, typer.Option(help="Probe queries per class (held out from training).")] = 100,
    probe_gallery: Annotated[int, typer.Option(help="Probe gallery items per class (held out from training).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the probe draw and default training seed.")] = 0,
    db_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL of the registry (default: a SQLite file in the workspace).")] = None,
    float16: Annotated[bool, typer.Option("--float16", help="Store gallery embeddings as float16 (half the space).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Create a workspace: registry migrated to head, interface K and a held-out probe set.

    Example: upgrader init --home ./ws --dataset fashion-mnist --num-classes 64
    """
    from upgrader.services.workspace_init import init_workspace

    ws = init_workspace(
        home, dataset=dataset, num_classes=num_classes, classes=classes, query_per_class=probe_queries,
        gallery_per_class=probe_gallery, seed=seed, db_url=db_url, embedding_dtype="float16" if float16 else "float32",
    )
    with ws:
        st = workspace_status(ws)
    if json_out:
        print_json(st)
        return
    console.print(styled("[green]created[/] workspace at [bold]{}[/] ({})", st.home,
                         f"K={st.num_classes}, dim {st.embedding_dim}, {st.classes_assigned} classes, "
                         f"probe {st.probe_counts['query']} queries / {st.probe_counts['gallery']} gallery"))
    console.print("next: upgrader train --classes 0-3   (an initial generation)")


@handle_errors
def status(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Show the workspace: interface, probe set, production, generations and gallery.

    Example: upgrader status --home ./ws
    """
    with workspace(home) as ws:
        st = workspace_status(ws)
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json(st)
        return
    t = Table(title=f"upgrader workspace {st.home}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("registry", st.registry_url)
    t.add_row("dataset", st.dataset)
    t.add_row("interface", f"K={st.num_classes}, embedding dim {st.embedding_dim}, {st.classes_assigned} classes assigned")
    t.add_row("probe set", f"{st.probe_counts.get('query', 0)} queries, {st.probe_counts.get('gallery', 0)} gallery items")
    t.add_row("production", f"{st.production.name} (id {st.production.id})" if st.production else "none yet")
    t.add_row("generations", ", ".join(f"{n} {s}" for s, n in sorted(st.by_status.items())) or "none")
    t.add_row("gallery", f"{st.gallery_total} items" + (
        " (" + ", ".join(f"gen {g}: {n}" for g, n in sorted(st.gallery_by_generation.items())) + ")" if st.gallery_total else ""))
    if st.last_move:
        m = st.last_move
        t.add_row("last promotion", f"{names.get(m.from_gen, '-') if m.from_gen else '-'} -> {names.get(m.to_gen, m.to_gen)} "
                  f"by {m.actor} at {m.at:%Y-%m-%d %H:%M}{' (forced)' if m.forced else ''}: {m.reason}")
    console.print(t)


@handle_errors
def generations(ctx: typer.Context, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """List the lineage with status, self-test and gallery share; `generations rm NAME` removes one.

    Example: upgrader generations --json
    """
    if ctx.invoked_subcommand is not None:
        return
    with workspace(home) as ws:
        rows = generation_rows(ws)
    if json_out:
        print_json(rows)
        return
    t = Table(title="generations")
    for col in ("id", "name", "kind", "arch", "method", "parent", "status", "self-test %", "gallery", "created"):
        t.add_column(col, justify="right" if col in ("id", "self-test %", "gallery", "parent") else "left")
    for r in rows:
        g = r.generation
        t.add_row(
            str(g.id), ("* " if r.is_production else "") + g.name, g.kind, g.architecture, g.method,
            str(g.parent_id or "-"), styled(f"[{STATUS_STYLE.get(g.status, '')}]{{}}[/]", g.status), pct(r.self_test),
            str(r.gallery_items), f"{g.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(t)


def _typed(ctx: typer.Context, param: str) -> bool:
    """Whether the user gave ``param`` on the command line (not from the environment or a default)."""
    source = ctx.get_parameter_source(param)
    return getattr(source, "name", None) == "COMMANDLINE"


@handle_errors
def remove(
    ctx: typer.Context,
    generation: Annotated[str, typer.Argument(help="Generation id or name.")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Remove a generation: delete one that never served (rows and files; the name is free again),
    retire one that ever held production (history and files kept). Production is refused.

    Example: upgrader generations rm baseline-er
    """
    from upgrader.services.removal import remove_generation

    parent = ctx.parent
    if parent is not None and not _typed(ctx, "home") and _typed(parent, "home"):
        home = parent.params["home"]  # `generations --home DIR rm NAME`: the workspace the user named
    with workspace(home) as ws:
        done = remove_generation(ws, generation)
    if json_out:
        print_json(done)
        return
    g = done.generation
    if done.deleted:
        console.print(styled("[green]deleted[/] generation {} (id {}){}; the name is free again", g.name, g.id,
                             f" and its folder {done.folder}" if done.folder else ""))
    else:
        console.print(styled("[yellow]retired[/] generation {} (id {}): it held production once, so its history "
                             "and files are kept", g.name, g.id))


@handle_errors
def history(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Show every move of the production alias (append-only).

    Example: upgrader history
    """
    with workspace(home) as ws:
        moves = ws.registry.alias_history()
        names = {g.id: g.name for g in ws.registry.list_generations()}
    if json_out:
        print_json(moves)
        return
    t = Table(title="production alias history")
    for col in ("#", "when", "from", "to", "actor", "gate report", "forced", "reason"):
        t.add_column(col)
    for m in moves:
        t.add_row(
            str(m.id), f"{m.at:%Y-%m-%d %H:%M:%S}", names.get(m.from_gen, "-") if m.from_gen else "-", names.get(m.to_gen, str(m.to_gen)),
            m.actor, str(m.gate_report_id or "-"), styled("[bold red]yes[/]") if m.forced else "no", m.reason,
        )
    console.print(t)


@handle_errors
def db_upgrade(home: HomeOption = None) -> None:
    """Migrate the workspace's registry schema to the version this upgrader expects.

    Example: upgrader db upgrade --home ./ws
    """
    location = registry_location(home)
    revision = Registry.upgrade(location)
    console.print(f"registry at {location} is at revision {revision}")
