"""The probe set (the very pixels every generation embeds) and each generation's probe embeddings.

Probe embeddings are always float32, whatever the gallery's dtype: they feed the gate's numbers. Each
row names the artifact sha256 that computed it; only rows of the generation's current artifact are
read, so a re-exported generation is re-embedded before the gate judges it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from registry import validation
from registry.codec import EmbeddingCodec
from registry.db import UnitOfWork
from registry.entities import PROBE_SPLITS, ProbeSet
from registry.errors import InterfaceError, ProbeSetError
from registry.schema import ClassRow, GenerationRow, ProbeEmbeddingRow, ProbeItemRow, utcnow
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
        self,
        gen_id: int | str,
        split: str,
        item_ids: Sequence[int] | np.ndarray,
        embeddings: np.ndarray,
        *,
        artifact_sha256: str | None = None,
    ) -> None:
        """Store a generation's embeddings of probe items, replacing what it had for that split.

        Args:
            artifact_sha256: the artifact that computed them; ``None``: the generation's current one.

        Raises:
            UnknownGeneration: no such generation.
            ProbeSetError: ids that are not probe items of that split, or repeated ids.
            EmbeddingError: wrong dimension, non-finite values, or a row count unlike the ids.
        """
        write = self.writer({split: (item_ids, embeddings)}, artifact_sha256)
        with self._uow.session(write=True) as s:
            write(s, self._generations.row(s, gen_id))

    def writer(
        self, splits: Mapping[str, tuple[Sequence[int] | np.ndarray, np.ndarray]], artifact_sha256: str | None = None
    ) -> Callable[[Session, GenerationRow], None]:
        """Check probe embeddings of one or more splits now; return the write, to run in a transaction.

        Everything that needs no database (split names, repeated ids, shapes, finite values) is
        checked before the returned function is; it checks the ids against the probe set and writes.

        Args:
            splits: ``{split: (item ids, embeddings)}``.
            artifact_sha256: the artifact that computed them; ``None``: the generation's current one.

        Raises:
            ProbeSetError, EmbeddingError: as :meth:`put_probe_embeddings` (also from the write).
        """
        codec = self._probe_codec()
        checked: list[tuple[str, list[int], list[bytes]]] = []
        for split, (item_ids, embeddings) in splits.items():
            validation.probe_split(split)
            ids = validation.probe_item_ids(item_ids)
            checked.append((split, ids, codec.encode(embeddings, rows=len(ids))))

        def write(s: Session, gen: GenerationRow) -> None:
            sha = gen.onnx_sha256 if artifact_sha256 is None else str(artifact_sha256)
            for split, ids, blobs in checked:
                _write_split(s, gen.id, split, ids, blobs, sha)

        return write

    def has_probe_embeddings(self, gen_id: int | str) -> bool:
        """Whether both splits are embedded by the generation's current artifact, one row per probe item.

        Raises:
            UnknownGeneration: no such generation (a known one never raises).
        """
        with self._uow.session() as s:
            gen = self._generations.row(s, gen_id)
            counts = dict(
                tuple(r) for r in s.execute(select(ProbeItemRow.split, func.count()).group_by(ProbeItemRow.split))
            )
            embedded = dict(
                tuple(r)
                for r in s.execute(
                    select(ProbeItemRow.split, func.count())
                    .join(ProbeEmbeddingRow, ProbeEmbeddingRow.probe_item_id == ProbeItemRow.id)
                    .where(
                        ProbeEmbeddingRow.generation_id == gen.id,
                        ProbeEmbeddingRow.artifact_sha256 == gen.onnx_sha256,
                    )
                    .group_by(ProbeItemRow.split)
                )
            )
        return all(counts.get(sp, 0) > 0 and embedded.get(sp, 0) == counts[sp] for sp in PROBE_SPLITS)

    def get_probe_embeddings(self, gen_id: int | str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A generation's probe embeddings for one split, ascending item id, of its current artifact only.

        Returns:
            (int64 ``[N]`` probe item ids, float32 ``[N, D]`` embeddings).

        Raises:
            UnknownGeneration: no such generation.
            ProbeSetError: no embeddings of that split by the generation's current artifact (none at
                all, or only stale ones of an earlier artifact).
        """
        validation.probe_split(split)
        codec = self._probe_codec()
        with self._uow.session() as s:
            gen = self._generations.row(s, gen_id)
            rows = s.execute(
                select(ProbeEmbeddingRow.probe_item_id, ProbeEmbeddingRow.embedding)
                .join(ProbeItemRow, ProbeItemRow.id == ProbeEmbeddingRow.probe_item_id)
                .where(
                    ProbeEmbeddingRow.generation_id == gen.id,
                    ProbeEmbeddingRow.artifact_sha256 == gen.onnx_sha256,
                    ProbeItemRow.split == split,
                )
                .order_by(ProbeEmbeddingRow.probe_item_id)
            ).all()
        if not rows:
            raise ProbeSetError(
                f"generation {gen.name!r} has no {split!r} probe embeddings of its current artifact "
                f"{gen.onnx_sha256[:12]}…: they are missing or stale; verify re-embeds the probe set with it"
            )
        ids, blobs = zip(*rows)
        return np.asarray(ids, dtype=np.int64), codec.decode(list(blobs))

    def _probe_codec(self) -> EmbeddingCodec:
        """The interface's dimension, always float32."""
        return EmbeddingCodec(self._interfaces.codec().dim, "float32")


def _write_split(s: Session, gen_id: int, split: str, ids: list[int], blobs: list[bytes], sha: str) -> None:
    """Replace a generation's embeddings of one split with ``blobs``, stamped with artifact ``sha``.

    Raises:
        ProbeSetError: an id that is not a probe item of the split.
    """
    in_split = set(s.scalars(select(ProbeItemRow.id).where(ProbeItemRow.split == split)).all())
    missing = [i for i in ids if i not in in_split]
    if missing:
        raise ProbeSetError(
            f"ids not in the {split!r} probe split: {validation.preview(missing)}; use ids from probe_set()"
        )
    s.execute(
        delete(ProbeEmbeddingRow).where(
            ProbeEmbeddingRow.generation_id == gen_id,
            ProbeEmbeddingRow.probe_item_id.in_(
                select(ProbeItemRow.id).where(ProbeItemRow.split == split).scalar_subquery()
            ),
        )
    )
    if ids:
        s.connection().execute(
            insert(ProbeEmbeddingRow.__table__),
            [{"generation_id": gen_id, "probe_item_id": i, "artifact_sha256": sha, "embedding": b}
             for i, b in zip(ids, blobs)],
        )


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
