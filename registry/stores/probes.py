"""The probe set (the very pixels every generation embeds) and each generation's probe embeddings.

Probe embeddings are always float32, whatever the gallery's dtype: they feed the gate's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from registry import validation
from registry.codec import EmbeddingCodec
from registry.db import UnitOfWork
from registry.entities import PROBE_SPLITS, ProbeSet
from registry.errors import InterfaceError, ProbeSetError
from registry.schema import ClassRow, ProbeEmbeddingRow, ProbeItemRow, utcnow
from registry.stores.generations import GenerationStore
from registry.stores.interface import InterfaceStore


class ProbeStore:
    """Reads and writes probe items and probe embeddings."""

    def __init__(self, uow: UnitOfWork, interfaces: InterfaceStore, generations: GenerationStore) -> None:
        """Bind the store to the unit of work, the label map and generation lookup."""
        self._uow = uow
        self._interfaces = interfaces
        self._generations = generations

    def add_probe_items(
        self,
        split: str,
        images: np.ndarray,
        class_names: Sequence[str],
        source_uris: Sequence[str | None] | None = None,
    ) -> np.ndarray:
        """Register probe images (uint8 NHWC) with their class names; the pixels are stored.

        Args:
            split: ``"query"`` or ``"gallery"``.
            images: uint8 ``[N, H, W, C]`` (``[N, H, W]`` is taken as C=1); one shape for all items.
            class_names: ``[N]`` class of each image; must already be in the label map.
            source_uris: ``[N]`` where each image came from, optional.

        Returns:
            int64 ``[N]`` ids of the new items, in input order.

        Raises:
            ProbeSetError: bad split, shape, dtype or lengths; a shape unlike the existing probe
                items; or the probe set is already embedded by a generation.
            InterfaceError: no interface, or a class not in the label map.
        """
        validation.probe_split(split)
        arr = validation.probe_images(images)
        n, h, w, c = (int(x) for x in arr.shape)
        names = list(class_names)
        uris = [None] * n if source_uris is None else list(source_uris)
        if len(names) != n or len(uris) != n:
            raise ProbeSetError(
                f"{n} images but {len(names)} class names and {len(uris)} source URIs; pass one per image"
            )
        with self._uow.session(write=True) as s:
            label_map = self._interfaces.read(s).label_map
            unknown = sorted({nm for nm in names if nm not in label_map})
            if unknown:
                raise InterfaceError(
                    f"classes not in the label map: {validation.preview(unknown)}; assign them first (assign_classes)"
                )
            _check_open_for(s, (h, w, c))
            now = utcnow()
            rows = [
                {"split": split, "vertex": label_map[names[i]], "height": h, "width": w, "channels": c,
                 "image": arr[i].tobytes(), "source_uri": uris[i], "created_at": now}
                for i in range(n)
            ]
            ids = s.scalars(
                insert(ProbeItemRow).returning(ProbeItemRow.id, sort_by_parameter_order=True), rows
            ).all()
            return np.asarray(ids, dtype=np.int64)

    def probe_set(self, split: str) -> ProbeSet:
        """One split of the probe set, images included, in ascending id order.

        Raises:
            ProbeSetError: unknown split, or no items in it.
        """
        validation.probe_split(split)
        with self._uow.session() as s:
            rows = s.execute(
                select(
                    ProbeItemRow.id,
                    ProbeItemRow.vertex,
                    ClassRow.name,
                    ProbeItemRow.source_uri,
                    ProbeItemRow.height,
                    ProbeItemRow.width,
                    ProbeItemRow.channels,
                    ProbeItemRow.image,
                )
                .join(ClassRow, ClassRow.vertex == ProbeItemRow.vertex)
                .where(ProbeItemRow.split == split)
                .order_by(ProbeItemRow.id)
            ).all()
        if not rows:
            raise ProbeSetError(f"no probe items in the {split!r} split; register the probe set first")
        ids, vertices, names, uris, hs, ws, cs, blobs = zip(*rows)
        images = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(rows), hs[0], ws[0], cs[0]).copy()
        return ProbeSet(
            split=split,
            item_ids=np.asarray(ids, dtype=np.int64),
            images=images,
            vertices=np.asarray(vertices, dtype=np.int64),
            class_names=list(names),
            source_uris=list(uris),
        )

    def probe_counts(self) -> dict[str, int]:
        """Number of probe items per split (both splits always present)."""
        with self._uow.session() as s:
            counts = dict(
                tuple(r) for r in s.execute(select(ProbeItemRow.split, func.count()).group_by(ProbeItemRow.split))
            )
        return {sp: int(counts.get(sp, 0)) for sp in PROBE_SPLITS}

    def put_probe_embeddings(
        self, gen_id: int | str, split: str, item_ids: Sequence[int] | np.ndarray, embeddings: np.ndarray
    ) -> None:
        """Store a generation's embeddings of probe items, replacing what it had for that split.

        Raises:
            UnknownGeneration: no such generation.
            ProbeSetError: ids that are not probe items of that split, or repeated ids.
            EmbeddingError: wrong dimension, non-finite values, or a row count unlike the ids.
        """
        validation.probe_split(split)
        ids = validation.probe_item_ids(item_ids)
        blobs = self._probe_codec().encode(embeddings, rows=len(ids))
        with self._uow.session(write=True) as s:
            gen = self._generations.row(s, gen_id)
            in_split = set(s.scalars(select(ProbeItemRow.id).where(ProbeItemRow.split == split)).all())
            missing = [i for i in ids if i not in in_split]
            if missing:
                raise ProbeSetError(
                    f"ids not in the {split!r} probe split: {validation.preview(missing)}; "
                    f"use ids from probe_set()"
                )
            s.execute(
                delete(ProbeEmbeddingRow).where(
                    ProbeEmbeddingRow.generation_id == gen.id,
                    ProbeEmbeddingRow.probe_item_id.in_(
                        select(ProbeItemRow.id).where(ProbeItemRow.split == split).scalar_subquery()
                    ),
                )
            )
            if ids:
                s.connection().execute(
                    insert(ProbeEmbeddingRow.__table__),
                    [{"generation_id": gen.id, "probe_item_id": i, "embedding": b} for i, b in zip(ids, blobs)],
                )

    def get_probe_embeddings(self, gen_id: int | str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A generation's probe embeddings for one split, ascending item id.

        Returns:
            (int64 ``[N]`` probe item ids, float32 ``[N, D]`` embeddings).

        Raises:
            UnknownGeneration: no such generation.
            ProbeSetError: the generation has not embedded that split.
        """
        validation.probe_split(split)
        codec = self._probe_codec()
        with self._uow.session() as s:
            gen = self._generations.row(s, gen_id)
            rows = s.execute(
                select(ProbeEmbeddingRow.probe_item_id, ProbeEmbeddingRow.embedding)
                .join(ProbeItemRow, ProbeItemRow.id == ProbeEmbeddingRow.probe_item_id)
                .where(ProbeEmbeddingRow.generation_id == gen.id, ProbeItemRow.split == split)
                .order_by(ProbeEmbeddingRow.probe_item_id)
            ).all()
        if not rows:
            raise ProbeSetError(
                f"generation {gen.name!r} has no {split!r} probe embeddings; embed the probe set with it first"
            )
        ids, blobs = zip(*rows)
        return np.asarray(ids, dtype=np.int64), codec.decode(list(blobs))

    def _probe_codec(self) -> EmbeddingCodec:
        """The interface's dimension, always float32."""
        return EmbeddingCodec(self._interfaces.codec().dim, "float32")


def _check_open_for(s: Session, shape: tuple[int, int, int]) -> None:
    """Refuse new probe items once any generation embedded the set, or in a shape unlike the set's.

    Raises:
        ProbeSetError: the set is frozen, or ``shape`` (H, W, C) differs from the stored items'.
    """
    embedded = s.execute(select(func.count(func.distinct(ProbeEmbeddingRow.generation_id)))).scalar_one()
    if embedded:
        raise ProbeSetError(
            f"the probe set is already embedded by {embedded} generation(s) and cannot change "
            f"(their numbers would no longer be comparable); create a new workspace"
        )
    stored = s.execute(select(ProbeItemRow.height, ProbeItemRow.width, ProbeItemRow.channels).limit(1)).first()
    if stored is not None and tuple(stored) != shape:
        raise ProbeSetError(f"probe images are {tuple(stored)} (H, W, C) but these are {shape}; resize them first")
