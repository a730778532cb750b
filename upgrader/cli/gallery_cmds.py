"""`gallery add`, `gallery rm`, `gallery stats`, `search`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TaskID
from rich.table import Table

from upgrader.cli.common import (
    HomeOption, JsonOption, console, handle_errors, print_json, progress_bar, styled, usage_error, workspace,
)
from upgrader.core.errors import DataError, InvalidRequest
from upgrader.services.gallery import (
    CalibrationUnusable, ItemsExist, add_dataset, composition, read_query_images, remove_items, search_images,
)

#: The CLI's words for an add refused on ids the gallery holds (``ItemsExist.reason``).
_EXISTING_WORDS = {
    "items-exist": "{count} of the ids are already in the gallery ({preview}); drop --no-skip-existing to "
                   "resume an earlier add, remove them with `upgrader gallery rm`, or pass another --id-prefix",
    "items-by-other-generation": "{count} of the ids are already in the gallery embedded by {generations}, "
                                 "not by production {production} ({preview}); remove them first "
                                 "(`upgrader gallery rm --generation GEN` or IDS) to have production embed "
                                 "them, or pass --skip-other-generations to keep the older embeddings",
}


def register(app: typer.Typer, gallery_app: typer.Typer) -> None:
    """Attach this module's commands."""
    gallery_app.command("add")(gallery_add)
    gallery_app.command("rm")(gallery_rm)
    gallery_app.command("stats")(gallery_stats)
    app.command("search")(search)


@handle_errors
def gallery_add(
    home: HomeOption = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset to embed (default: the workspace's).")] = None,
    split: Annotated[str, typer.Option(help=(
        "test: items no generation trains on (an IDX dataset's test split; for an .npz or image folder, "
        "which has none, the held-out split recorded at init; a workspace made before held-out splits "
        "takes the whole dataset, and says so). train: the items generations train on."))] = "test",
    classes: Annotated[str, typer.Option(help="Classes to add: 'all', '0-3', names.")] = "all",
    per_class: Annotated[int | None, typer.Option(help="At most this many items per class.")] = None,
    id_prefix: Annotated[str | None, typer.Option(help="Prefix of the external ids (default '<split>-').")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per all-or-nothing registry batch.")] = 1024,
    skip_existing: Annotated[bool, typer.Option(
        help="Resume: skip ids the gallery holds already (--no-skip-existing refuses them instead).")] = True,
    skip_other_generations: Annotated[bool, typer.Option(
        help="Also skip ids that a generation other than production embedded (refused by default).")] = False,
    json_out: JsonOption = False,
) -> None:
    """Embed a dataset or image folder with the production generation and store it in the gallery.

    Each batch is committed on its own; run the same command again after an interruption and it
    resumes, skipping the ids already stored and saying how many.

    Example: upgrader gallery add --classes 0-3 --per-class 200
    """
    if batch_size < 1:
        usage_error(f"--batch-size must be at least 1, got {batch_size}")
    with workspace(home) as ws:
        add = functools.partial(
            add_dataset, ws, dataset or ws.config.dataset, split=split, classes=classes, per_class=per_class,
            id_prefix=id_prefix, batch_size=batch_size, skip_existing=skip_existing,
            skip_other_generations=skip_other_generations,
        )
        bar = progress_bar()
        task: list[TaskID] = []  # the bar starts with the embedding, after the checks that may refuse

        def show(done: int, total: int) -> None:
            if not task:
                bar.start()
                task.append(bar.add_task("embedding gallery", total=total, info=""))
            bar.update(task[0], completed=done, total=total)

        try:
            res = add() if json_out else add(progress=show)
        except ItemsExist as exc:
            raise InvalidRequest(_EXISTING_WORDS[exc.reason].format(**exc.details)) from None
        finally:
            bar.stop()
        comp = composition(ws)
    if json_out:
        print_json({"added": res.added, "skipped": res.skipped, "skipped_other_generations": res.skipped_other,
                    "total": comp.total, "production": comp.production, "notes": list(res.notes),
                    "shortfall": res.shortfall or {}})
        return
    console.print(styled("[green]added[/] {} items embedded by generation {}; the gallery holds {}",
                         res.added, comp.production, comp.total))
    for note in res.notes:  # where the items came from, and what a per-class cap could not get
        console.print(styled("[yellow]note:[/] {}", note))
    if res.skipped_other:
        console.print(styled("skipped {} ids already in the gallery, {} of them embedded by a generation "
                             "other than production", res.skipped, res.skipped_other))
    elif res.skipped:
        console.print(styled("skipped {} ids already in the gallery (an earlier add of the same items)", res.skipped))


@handle_errors
def gallery_rm(
    ids: Annotated[list[str] | None, typer.Argument(help="External ids of the items to remove.")] = None,
    home: HomeOption = None,
    generation: Annotated[str | None, typer.Option(help="Remove every item this generation embedded.")] = None,
    all_from: Annotated[Path | None, typer.Option(help="A file of external ids to remove, one per line.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Remove gallery items: by external id, every item of one generation, or the ids listed in a file.

    Ids the gallery does not hold are counted and reported, not refused.

    Example: upgrader gallery rm test-1 test-2      or      upgrader gallery rm --generation g1
    """
    wanted = list(ids or [])
    if all_from is not None:
        wanted += _read_id_file(all_from)
    if generation is not None and (ids or all_from is not None):
        usage_error("give external ids (IDS or --all-from) or --generation, not both")
    if generation is None and not wanted:
        usage_error("nothing to remove: give external ids, --all-from FILE or --generation GEN")
    with workspace(home) as ws:
        res = remove_items(ws, wanted if generation is None else None, generation=generation)
        comp = composition(ws)
    if json_out:
        print_json({"deleted": res.deleted, "not_found": res.not_found, "generation": generation, "total": comp.total})
        return
    scope = "" if generation is None else f" of generation {generation}"
    console.print(styled("[green]removed[/] {} items{}; the gallery holds {}", res.deleted, scope, comp.total))
    if res.not_found:
        console.print(styled("[yellow]{} of the ids were not in the gallery[/] (nothing to remove for them)", res.not_found))


def _read_id_file(path: Path) -> list[str]:
    """The external ids of an --all-from file: one per line, blank lines skipped, line ends stripped."""
    if not path.is_file():
        usage_error(f"--all-from {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; write one external id per line in UTF-8") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}); check the file") from None
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


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
    calibration: Annotated[bool, typer.Option(
        "--calibration/--no-calibration",
        help="Rank by the score calibration stored with production's gate report, as `upgrader serve` does "
             "(--no-calibration: raw cosine similarity, for comparison).")] = True,
    json_out: JsonOption = False,
) -> None:
    """Search the mixed-generation gallery with the production generation.

    Each item's score is mapped by its generation's score map (the calibration the gate stored when
    production was promoted) before the top results are taken; results of one generation keep their order.

    Example: upgrader search shoe.png -k 5      or      upgrader search --item 42 --no-calibration
    """
    import numpy as np

    if k < 1:
        usage_error(f"-k must be at least 1 (the number of results per query), got {k}")
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
        try:
            found = search_images(ws, np.asarray(queries), k, calibrate=calibration)
        except CalibrationUnusable as exc:
            raise CalibrationUnusable(f"{exc} (--no-calibration)") from None
    gen, hits, applied = found.generation, found.hits, found.calibration
    maps = len(applied.maps) if applied is not None else 0
    if json_out:
        print_json({"generation": gen.id, "calibrated": applied is not None, "calibration_maps": maps,
                    "results": [{"query": q, "hits": h} for q, h in zip(titles, hits)]})
        return
    how = f"calibrated ({maps} score map{'' if maps == 1 else 's'})" if applied is not None else (
        "raw cosine (--no-calibration)" if not calibration else "raw cosine (no calibration stored for production)")
    for q, hs in zip(titles, hits):
        t = Table(title=f"{q} — queried with {gen.name}, {how}")
        for col in ("rank", "external id", "label", "score", "written by gen"):
            t.add_column(col)
        for rank, h in enumerate(hs, 1):
            t.add_row(str(rank), h.external_id, h.label or "-", f"{h.score:.4f}", str(h.generation_id))
        console.print(t)
