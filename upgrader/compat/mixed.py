"""Estimate how a candidate's queries will rank the real, mixed production gallery.

Pure numpy; computes and writes nothing else. The gate's pairwise criterion ``M(t, j) > M(j, j)``
scores the candidate against one old gallery generation at a time, but the production gallery is
*mixed*: each class's items were embedded by whichever generation was production when they were
added, and a query ranks all of them at once. A candidate can beat every old generation pairwise and
still search the mixed gallery much worse than after a full re-index (measured: a ``ce`` replacement
passed the pairwise gate while its search fell from 74% after a re-index to 47% on the mixed gallery).

The estimate rebuilds that situation on the probe set: every probe gallery item of class ``c`` is
taken from the embeddings of the generation that stores most of class ``c`` in the real gallery
(:func:`gallery_owners`), and the candidate's probe queries are scored against it with template top-1
(the primary protocol of docs/design.md §3, via :func:`upgrader.compat.metrics.template_top1`), next to the
same queries against the candidate's own probe gallery (what a full re-index would give).

This template estimate is reported (the study plots it) but decides nothing: the gate's rules use the
item-level search of :mod:`upgrader.compat.served`, the number users get.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from upgrader.compat.metrics import restrict, template_top1


def gallery_holders(
    label_counts: Mapping[tuple[int, str | None], int],
    label_map: Mapping[str, int],
    live: Sequence[int],
) -> dict[int, dict[int, int]]:
    """For each class vertex, how many of its real gallery items each live generation stores.

    Args:
        label_counts: ``(generation id, label) -> items``, as ``Registry.gallery_label_counts()``.
        label_map: class name -> vertex index (the interface's label map).
        live: the generations with items in the gallery; counts of any other generation are ignored.

    Returns:
        ``vertex -> {generation id: items}`` (the ``holders`` of
        :func:`upgrader.compat.item_search.compose`). Unlabelled items and labels the label map does
        not know belong to no class.
    """
    live_ids = {int(g) for g in live}
    per_vertex: dict[int, dict[int, int]] = {}
    for (gen, label), n in label_counts.items():
        if label is None or label not in label_map or int(gen) not in live_ids or n <= 0:
            continue
        counts = per_vertex.setdefault(int(label_map[label]), {})
        counts[int(gen)] = counts.get(int(gen), 0) + int(n)
    return dict(sorted(per_vertex.items()))


def owners_of(holders: Mapping[int, Mapping[int, int]]) -> dict[int, int]:
    """For each class vertex, the generation that stores most of its items.

    Ties go to the older (lower) id: its items were there first, and which of two equal halves wins
    the ranking is a coin toss the estimate should not pretend to know.
    """
    return {int(v): min(c, key=lambda g: (-c[g], g)) for v, c in sorted(holders.items()) if c}


def gallery_owners(
    label_counts: Mapping[tuple[int, str | None], int],
    label_map: Mapping[str, int],
    live: Sequence[int],
) -> dict[int, int]:
    """For each class vertex, the live generation that wrote most of its gallery items
    (:func:`owners_of` of :func:`gallery_holders`)."""
    return owners_of(gallery_holders(label_counts, label_map, live))


@dataclass(frozen=True)
class MixedEstimate:
    """The candidate's template top-1 on the simulated mixed probe gallery and after a re-index."""

    candidate: int  # the generation whose queries were scored
    owners: dict[int, int]  # counted class vertex -> generation whose probe gallery items stood in for it
    mixed: float  # template top-1 against the mixed probe gallery, in [0, 1]
    reindex: float  # template top-1 against the candidate's own probe gallery (a full re-index)
    classes: int  # probe classes counted (the candidate's classes that have probe gallery items)

    @property
    def drop(self) -> float:
        """How much accuracy the mixed gallery costs against a re-index (positive: a loss)."""
        return self.reindex - self.mixed

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (vertex keys become strings, as JSON objects need)."""
        return {
            "candidate": self.candidate,
            "metric": "template_top1",
            "mixed": self.mixed,
            "reindex": self.reindex,
            "drop": self.drop,
            "classes": self.classes,
            "owners": {str(v): g for v, g in sorted(self.owners.items())},
        }

    def summary(self) -> str:
        """One line: both accuracies, the difference and who stores which classes.

        Example: ``mixed gallery estimate: 62.5% vs 70.5% after a re-index (-8.0 points; classes 0-3
        stored by gen 1, classes 4,5 by candidate gen 3)``.
        """
        return (
            f"mixed gallery estimate: {100 * self.mixed:.1f}% vs {100 * self.reindex:.1f}% after a re-index "
            f"({100 * (self.mixed - self.reindex):+.1f} points; {self.ownership()})"
        )

    def ownership(self) -> str:
        """Which generation's embeddings stand in for which classes, oldest generation first."""
        by_gen: dict[int, list[int]] = {}
        for v, g in sorted(self.owners.items()):
            by_gen.setdefault(g, []).append(v)
        if not by_gen:
            return "no class counted"
        parts = []
        for i, (g, vs) in enumerate(sorted(by_gen.items())):
            noun = "class" if len(vs) == 1 else "classes"
            verb = "stored by" if i == 0 else "by"
            who = f"candidate gen {g}" if g == self.candidate else f"gen {g}"
            parts.append(f"{noun} {ranges(vs)} {verb} {who}")
        return ", ".join(parts)


def ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 5, 7, 8]`` -> ``"0-3,5,7,8"``: a hundred classes still fit on a line."""
    out: list[str] = []
    vs = sorted(values)
    start = prev = vs[0]
    for v in [*vs[1:], None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        out.append(f"{start}-{prev}" if prev - start >= 3 else ",".join(str(x) for x in range(start, prev + 1)))
        if v is not None:
            start = prev = v
    return ",".join(out)


def _rows(table: Mapping[int, np.ndarray], gen: int, n: int, split: str) -> np.ndarray:
    emb = table.get(gen)
    if emb is None:
        raise ValueError(f"no probe {split} embeddings for gen {gen}: embed the probe set first")
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"gen {gen} has probe {split} embeddings of shape {emb.shape} for {n} probe {split} labels")
    return emb


def estimate_mixed(
    candidate: int,
    query_labels: np.ndarray | Sequence[int],
    query_embeddings: Mapping[int, np.ndarray],
    gallery_labels: np.ndarray | Sequence[int],
    gallery_embeddings: Mapping[int, np.ndarray],
    owners: Mapping[int, int],
    candidate_classes: Sequence[int] | None,
) -> MixedEstimate:
    """Template top-1 of the candidate's probe queries on the simulated mixed probe gallery.

    Args:
        candidate: the generation whose queries are scored (and which indexes unowned classes).
        query_labels: int [Nq] vertex of each probe query.
        query_embeddings: generation id -> [Nq, D]; the candidate's is used.
        gallery_labels: int [Ng] vertex of each probe gallery item.
        gallery_embeddings: generation id -> [Ng, D]; the candidate's and every owner's of a counted class.
        owners: vertex -> generation storing that class in the real gallery (:func:`gallery_owners`);
            a class nobody owns yet will be indexed by the candidate.
        candidate_classes: the vertices the candidate learnt; queries and gallery are restricted to
            them (None: every probe class), as the gate scores a pair on the classes it learnt.

    Returns:
        The estimate; with no query or gallery item left after the restriction both numbers are 0.0.

    Raises:
        ValueError: a needed generation has no probe embeddings, or shapes disagree.
    """
    t = int(candidate)
    ql = np.asarray(query_labels, dtype=np.int64)
    gl = np.asarray(gallery_labels, dtype=np.int64)
    q = _rows(query_embeddings, t, ql.shape[0], "query")
    own = _rows(gallery_embeddings, t, gl.shape[0], "gallery")
    wanted = None if candidate_classes is None else frozenset(int(c) for c in candidate_classes)
    q, ql_r = restrict(q, ql, wanted)
    reindex_gallery, gl_r = restrict(own, gl, wanted)
    counted = sorted(int(c) for c in np.unique(gl_r))
    effective = {c: int(owners.get(c, t)) for c in counted}
    if len(q) == 0 or len(gl_r) == 0:
        return MixedEstimate(t, effective, 0.0, 0.0, len(counted))

    mixed_gallery = np.array(reindex_gallery, dtype=np.float32, copy=True)
    for gen in sorted(set(effective.values()) - {t}):
        rows = np.isin(gl_r, [c for c, g in effective.items() if g == gen])
        other, _ = restrict(_rows(gallery_embeddings, gen, gl.shape[0], "gallery"), gl, wanted)
        if other.shape[1] != mixed_gallery.shape[1]:
            raise ValueError(f"gen {gen} embeds in {other.shape[1]} dims, gen {t} in {mixed_gallery.shape[1]}")
        mixed_gallery[rows] = other[rows]
    mixed = template_top1(q, ql_r, mixed_gallery, gl_r)
    reindex = template_top1(q, ql_r, reindex_gallery, gl_r)
    return MixedEstimate(t, effective, float(mixed), float(reindex), len(counted))


__all__ = ["MixedEstimate", "estimate_mixed", "gallery_holders", "gallery_owners", "owners_of", "ranges"]
