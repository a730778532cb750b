"""Removing a generation: free the name of one that never served, retire one that did.

A generation that never held production (a refused baseline, a mistaken import) can be deleted
outright: its registry rows (probe embeddings, evaluations, gate reports) and its artifact folder go,
and the name can be used again. One that ever held production stays in the alias history, so it is
retired instead: its rows and files are kept for the record, and it can still be inspected. Production
itself is never removed. No torch.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from registry import Generation

from upgrader.core.errors import InvalidRequest, RequestRefused
from upgrader.services.workspace import Workspace


@dataclass(frozen=True)
class Removal:
    """What removing a generation did."""

    generation: Generation  # as it was before (deleted) or as it is now (retired)
    deleted: bool  # True: rows and files are gone and the name is free; False: retired, history kept
    folder: str | None  # the artifact folder that was deleted, if any


def owned_folder(ws: Workspace, gen: Generation) -> Path | None:
    """The artifact folder ``artifacts/<name>`` of a generation, if it lies inside the workspace.

    Works for names registered before names were checked, without raising: a name that would lead
    outside the artifacts folder owns no folder here.
    """
    root = ws.artifacts_dir.resolve()
    folder = (root / gen.name).resolve()
    return folder if folder.parent == root else None


def remove_generation(ws: Workspace, ref: str | int) -> Removal:
    """Delete a never-served generation (rows, then its folder), or retire one that ever served.

    The registry decides in one transaction (:meth:`registry.Registry.remove_generation`); the folder
    is deleted afterwards, so a crash in between leaves a folder no generation owns, which the next
    registration of that name clears and reuses.

    Raises:
        InvalidRequest: the generation serves production (promote or roll back to another first).
        registry.errors.UnknownGeneration: no such generation.
        RequestRefused: it never served but has gallery items (reason ``has-gallery-items``).
        registry.errors.ConstraintViolation: other generations name it as their parent.
    """
    reg = ws.registry
    gen = reg.get_generation(ref)
    if gen.id == reg.get_alias():
        raise InvalidRequest(
            f"generation {gen.name} serves production and cannot be removed; promote or roll back to "
            "another generation first",
            subject="production",
        )
    items = reg.gallery_counts().get(gen.id, 0)
    served = any(gen.id in (m.to_gen, m.from_gen) for m in reg.alias_history())
    if items and not served:
        raise RequestRefused(
            f"generation {gen.name} still has {items} gallery items; delete them first", "has-gallery-items",
            subject="gallery", name=gen.name, items=str(items),
        )
    result, deleted = reg.remove_generation(gen.id)
    if not deleted:
        return Removal(result, False, None)
    folder = owned_folder(ws, result)
    if folder is None or not folder.exists():
        return Removal(result, True, None)
    shutil.rmtree(folder)
    return Removal(result, True, str(folder))


__all__ = ["Removal", "owned_folder", "remove_generation"]
