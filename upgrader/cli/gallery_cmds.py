"""`gallery add`, `gallery stats`, `search`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from upgrader.cli.common import HomeOption, JsonOption, console, handle_errors, print_json, progress_bar, usage_error, workspace
from upgrader.services.gallery import add_dataset, composition, read_query_images, search_images


def register(app: typer.Typer, gallery_app: typer.Typer) -> None:
    """Attach this module's commands."""
    gallery_app.command("add")(gallery_add)
    gallery_app.command("stats")(gallery_stats)
    app.command("search")(search)


@handle_errors
def gallery_add(
    home: HomeOption = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset to embed (default: the workspace's).")] = None,
    split: Annotated[str, typer.Option(help="Split of an IDX dataset: train or test.")] = "test",
    classes: Annotated[str, typer.Option(help="Classes to add: 'all', '0-3', names.")] = "all",
    per_class: Annotated[int | None, typer.Option(help="At most this many items per class.")] = None,
    id_prefix: Annotated[str | None, typer.Option(help="Prefix of the external ids (default '<split>-').")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per all-or-nothing registry batch.")] = 1024,
    json_out: JsonOption = False,
) -> None:
    """Embed a dataset or image folder with the production generation and store it in the gallery.

    Example: upgrader gallery add --classes 0-3 --per-class 200
    """
    with workspace(home) as ws:
        spec = dataset or ws.config.dataset
        if json_out:
            n = add_dataset(ws, spec, split=split, classes=classes, per_class=per_class, id_prefix=id_prefix, batch_size=batch_size)
        else:
            with progress_bar() as bar:
                task = bar.add_task("embedding gallery", total=None, info="")
                n = add_dataset(ws, spec, split=split, classes=classes, per_class=per_class, id_prefix=id_prefix,
                                batch_size=batch_size, progress=lambda done, total: bar.update(task, completed=done, total=total))
        comp = composition(ws)
    if json_out:
        print_json({"added": n, "total": comp.total, "production": comp.production})
        return
    console.print(f"added {n} items embedded by generation {comp.production}; the gallery holds {comp.total}")


@handle_errors
def gallery_stats(home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Show how many gallery items each generation wrote.

    Example: upgrader gallery stats --json
    """
    with workspace(home) as ws:
        comp = composition(ws)
    if json_out:
        print_json({"total": comp.total, "production": comp.production, "share_on_old": comp.share_on_old,
                    "by_generation": [{"id": g.id, "name": g.name, "items": n} for g, n in comp.counts]})
        return
    t = Table(title=f"gallery: {comp.total} items, {100 * comp.share_on_old:.1f}% written by non-production generations")
    for col in ("gen", "name", "items", "share"):
        t.add_column(col, justify="right" if col in ("gen", "items", "share") else "left")
    for g, n in comp.counts:
        t.add_row(str(g.id), g.name + (" *" if g.id == comp.production else ""), str(n), f"{100 * n / comp.total:.1f}%")
    console.print(t)


@handle_errors
def search(
    images: Annotated[list[Path] | None, typer.Argument(help="Query image files.")] = None,
    home: HomeOption = None,
    item: Annotated[int | None, typer.Option(help="Use item N of --dataset as the query instead of a file.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset for --item (default: the workspace's).")] = None,
    split: Annotated[str, typer.Option(help="Split for --item.")] = "test",
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 5,
    json_out: JsonOption = False,
) -> None:
    """Search the mixed-generation gallery with the production generation.

    Example: upgrader search shoe.png -k 5      or      upgrader search --item 42
    """
    import numpy as np

    with workspace(home) as ws:
        if item is not None:
            from upgrader.data.items import load_items

            ds = load_items(dataset or ws.config.dataset, split)
            if not 0 <= item < len(ds):
                usage_error(f"--item {item} is outside 0-{len(ds) - 1}")
            queries = ds.images[item : item + 1]
            titles = [f"item {item} ({ds.classes[ds.labels[item]]})"]
        elif images:
            missing = [str(p) for p in images if not p.is_file()]
            if missing:
                usage_error(f"no such image file: {missing[0]}")
            queries = read_query_images(ws, images)
            titles = [str(p) for p in images]
        else:
            usage_error("give image files or --item N")
        gen, hits = search_images(ws, np.asarray(queries), k)
    if json_out:
        print_json({"generation": gen.id, "results": [{"query": q, "hits": h} for q, h in zip(titles, hits)]})
        return
    for q, hs in zip(titles, hits):
        t = Table(title=f"{q} — queried with {gen.name}")
        for col in ("rank", "external id", "label", "score", "written by gen"):
            t.add_column(col)
        for rank, h in enumerate(hs, 1):
            t.add_row(str(rank), h.external_id, h.label or "-", f"{h.score:.4f}", str(h.generation_id))
        console.print(t)
