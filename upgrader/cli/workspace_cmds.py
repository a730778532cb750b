"""`init`, `status`, `generations` (and `generations rm`), `history`, `db upgrade`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from registry import Registry

from upgrader.cli.common import Col, HomeOption, JsonOption, console, fitted_table, handle_errors, print_json, styled, workspace
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


#: The lineage table: id, name, status and self-test always; the rest as the terminal's width allows.
GENERATION_COLUMNS = [
    Col("id", justify="right"), Col("name", fold=True), Col("status"), Col("self-test %", justify="right"),
    Col("parent", 1, "right"), Col("kind", 2), Col("arch", 3), Col("method", 4), Col("gallery", 5, "right"),
    Col("created", 6),
]
#: The alias history: who moved production where, forced or not, and why, first; when, by whom and the report after.
HISTORY_COLUMNS = [
    Col("#", justify="right"), Col("from -> to", fold=True), Col("forced"), Col("reason", wrap=True),
    Col("when", 1), Col("actor", 2, fold=True), Col("gate report", 3, "right"),
]


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
    probe_queries: Annotated[int | None, typer.Option(
        help="Probe queries per class, held out from training (default: a tenth of the smallest class, at most 100).",
        show_default=False)] = None,
    probe_gallery: Annotated[int | None, typer.Option(
        help="Probe gallery items per class, held out from training (default: as --probe-queries).",
        show_default=False)] = None,
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
    if st.probe_sizing:
        chosen = probe_queries is None or probe_gallery is None
        console.print(st.probe_sizing + ("; change with --probe-queries/--probe-gallery" if chosen else ""))
    console.print(st.gallery_split)
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
    sizing = f"; {st.probe_sizing.removeprefix('probe set: ')}" if st.probe_sizing else ""
    t.add_row("probe set", f"{st.probe_counts.get('query', 0)} queries, {st.probe_counts.get('gallery', 0)} gallery items{sizing}")
    t.add_row("gallery split", st.gallery_split.removeprefix("gallery split: "))
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
    console.print(fitted_table("generations (* production; a generation is named by its id or its name)", GENERATION_COLUMNS, [[
        str(g.id), ("* " if r.is_production else "") + g.name, styled(f"[{STATUS_STYLE.get(g.status, '')}]{{}}[/]", g.status),
        pct(r.self_test), str(g.parent_id or "-"), g.kind, g.architecture, g.method, str(r.gallery_items),
        f"{g.created_at:%Y-%m-%d %H:%M}",
    ] for r in rows for g in (r.generation,)]))


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
    console.print(fitted_table("production alias history", HISTORY_COLUMNS, [[
        str(m.id), (names.get(m.from_gen, str(m.from_gen)) if m.from_gen else "-") + "\n-> " + names.get(m.to_gen, str(m.to_gen)),
        styled("[bold red]yes[/]") if m.forced else "no", m.reason, f"{m.at:%Y-%m-%d %H:%M:%S}", m.actor,
        str(m.gate_report_id or "-"),
    ] for m in moves]))


@handle_errors
def db_upgrade(home: HomeOption = None) -> None:
    """Migrate the workspace's registry schema to the version this upgrader expects.

    Example: upgrader db upgrade --home ./ws
    """
    location = registry_location(home)
    revision = Registry.upgrade(location)
    console.print(f"registry at {location} is at revision {revision}")
