"""Registering generations: every generation's probe embeddings come from its ONNX artifact.

Registration is the step that makes the gate possible: the probe queries and the probe gallery stored
in the registry are embedded by the generation's artifact through ONNX Runtime (the same path a
server takes, not PyTorch) and stored beside the generation. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from registry import Generation, NewGeneration
from registry.entities import PROBE_SPLITS

from upgrader.runtime.embedder import Embedder
from upgrader.core.artifact import CLASSES_KEY
from upgrader.core.files import replacing, sha256_file
from upgrader.core.errors import ArtifactError, InterfaceMismatch, InvalidRequest
from upgrader.services.workspace import Workspace


def check_artifact_interface(ws: Workspace, embedder: Embedder) -> None:
    """Refuse an artifact whose K or embedding dim differs from the workspace interface.

    Raises:
        InterfaceMismatch: the artifact was built for another interface; it cannot be compatible.
    """
    iface = ws.registry.interface()
    meta = embedder.metadata
    k = int(meta.get("num_classes", -1))
    dim = int(meta.get("embedding_dim", -1))
    if k != iface.num_classes or dim != iface.embedding_dim:
        raise InterfaceMismatch(
            f"artifact {embedder.path} has K={k}, dim={dim} but the workspace interface is "
            f"K={iface.num_classes}, dim={iface.embedding_dim}; train it with K={iface.num_classes} "
            "(a generation with another K can never be compatible)",
            subject="num_classes",
        )


def embed_probe_set(ws: Workspace, gen: Generation, *, threads: int | None = None) -> dict[str, int]:
    """Embed both probe splits with ``gen``'s artifact and store them; returns items per split."""
    embedder = open_embedder(ws, gen, threads=threads)
    counts: dict[str, int] = {}
    for split in PROBE_SPLITS:
        probe = ws.registry.probe_set(split)
        feats = embedder.embed(probe.images)  # [N, K-1] float32, L2-normalised
        ws.registry.put_probe_embeddings(gen.id, split, probe.item_ids, feats)
        counts[split] = int(len(probe.item_ids))
    return counts


def open_embedder(ws: Workspace, gen: Generation, *, threads: int | None = None, verify_sha: bool = True) -> Embedder:
    """Load ``gen``'s ONNX artifact, checking that its bytes are the ones registered.

    Raises:
        ArtifactError: the file is missing or its sha256 differs from the registry's record.
    """
    path = ws.resolve(gen.onnx_path)
    if not path.is_file():
        raise ArtifactError(
            f"artifact of generation {gen.name} is missing at {path}; re-export it from its checkpoint",
            subject="artifact",
        )
    if verify_sha:
        actual = sha256_file(path)
        if actual != gen.onnx_sha256:
            raise ArtifactError(
                f"artifact of generation {gen.name} at {path} has sha256 {actual[:12]}… but the registry "
                f"recorded {gen.onnx_sha256[:12]}…; it was modified after registration — re-export it "
                "from its checkpoint",
                subject="artifact",
            )
    return Embedder(path, threads=threads)


def classes_metadata(label_map: Mapping[str, int], vertices: Sequence[int]) -> dict[str, str]:
    """The metadata entry that tells a workspace importing the artifact which classes it learnt."""
    names = {v: n for n, v in label_map.items()}
    return {CLASSES_KEY: json.dumps({names[int(v)]: int(v) for v in sorted(vertices)})}


def imported_classes(ws: Workspace, embedder: Embedder, classes: Sequence[str] | None) -> dict[str, int] | None:
    """``{name: vertex}`` of the classes an imported artifact learnt, in this workspace's label map.

    ``classes`` (names, or indices in vertex order: "0-3") wins; otherwise the artifact's own record
    (:data:`CLASSES_KEY`, written by ``upgrader`` exports), which must agree with this workspace's
    label map. None when neither says: the gate then scores the artifact on every probe class.

    Raises:
        InvalidRequest: a class this workspace does not have. ArtifactError: the artifact put a class
            on another vertex than this workspace does (it cannot share this gallery), or its record
            is unreadable.
    """
    from upgrader.data.items import parse_classes

    label_map = ws.registry.interface().label_map
    if classes:
        return {n: label_map[n] for n in parse_classes(list(classes), sorted(label_map, key=label_map.__getitem__))}
    raw = embedder.metadata.get(CLASSES_KEY)
    if not raw:
        return None
    try:
        learnt = {str(n): int(v) for n, v in json.loads(raw).items()}
    except (ValueError, AttributeError, TypeError) as err:
        raise ArtifactError(f"artifact {embedder.path} has an unreadable '{CLASSES_KEY}' record; "
                            "name the classes it learnt", subject="classes") from err
    for name, vertex in learnt.items():
        mine = label_map.get(name)
        if mine is None:
            raise InvalidRequest(
                f"artifact {embedder.path} learnt class {name!r}, which this workspace does not have; "
                "name the classes of this workspace it learnt",
                subject="classes",
            )
        if mine != vertex:
            raise ArtifactError(
                f"artifact {embedder.path} puts class {name!r} on vertex {vertex} but this workspace uses "
                f"vertex {mine}: its embeddings cannot share this gallery; train it in this workspace"
            )
    return learnt


def register_generation(ws: Workspace, new: NewGeneration, *, threads: int | None = None) -> Generation:
    """Record a trained, exported generation and embed the probe set with its artifact.

    The artifact's interface is checked before anything is written; if embedding the probe set fails,
    the generation stays registered as a candidate without probe embeddings and ``verify`` re-embeds.
    """
    path = ws.resolve(new.onnx_path)
    embedder = Embedder(path, threads=threads)
    check_artifact_interface(ws, embedder)
    new = replace(new, onnx_sha256=sha256_file(path), onnx_metadata=dict(embedder.metadata))
    gen = ws.registry.add_generation(new)
    embed_probe_set(ws, gen, threads=threads)
    return gen


def known_classes(gen: Generation) -> list[int] | None:
    """Vertex indices of the classes ``gen`` was trained on (its lineage's, cumulatively), or None
    for a generation that does not say (an imported artifact): it then counts as knowing them all."""
    vertices = gen.train_config.get("vertices")
    return [int(v) for v in vertices] if vertices else None


def has_probe_embeddings(ws: Workspace, gen_id: int) -> bool:
    """Whether both probe splits are embedded for ``gen_id`` with as many rows as the probe set."""
    counts = ws.registry.probe_counts()
    for split in PROBE_SPLITS:
        ids, _ = ws.registry.get_probe_embeddings(gen_id, split)
        if len(ids) != counts.get(split, 0):
            return False
    return True


def artifact_paths(ws: Workspace, name: str) -> dict[str, Path]:
    """Where a generation's files live: ``onnx``, ``checkpoint`` and rehearsal ``memory``."""
    d = ws.generation_dir(name)
    return {"onnx": d / "model.onnx", "checkpoint": d / "checkpoint.pt", "memory": d / "memory.npz"}


def import_artifact(
    ws: Workspace,
    source: Path,
    *,
    name: str,
    kind: str = "replacement",
    method: str = "external",
    parent: str | None = None,
    classes: Sequence[str] | None = None,
) -> Generation:
    """Register an ONNX artifact trained elsewhere (``upgrader register``).

    The file is checked (metadata, interface, the classes it learnt: see :func:`imported_classes`)
    before it is copied into the workspace, so a refused artifact leaves nothing behind; the copy is
    written to a temporary name and renamed.

    Raises:
        ArtifactError: unreadable or not an upgrader artifact. InterfaceMismatch: another K.
        InvalidRequest: ``classes`` (or the artifact's record) names a class the workspace lacks.
    """
    import shutil

    embedder = Embedder(source)
    check_artifact_interface(ws, embedder)
    learnt = imported_classes(ws, embedder, classes)
    known = {} if learnt is None else {"classes": sorted(learnt, key=learnt.__getitem__), "vertices": sorted(learnt.values())}
    reg = ws.registry
    parent_id = reg.get_generation(parent).id if parent else reg.get_alias()
    dest = artifact_paths(ws, name)["onnx"]
    if dest.parent.exists():
        raise ArtifactError(f"{dest.parent} exists already; choose another name", subject="name")
    dest.parent.mkdir(parents=True)
    try:
        with replacing(dest) as tmp, open(tmp, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        return register_generation(
            ws,
            NewGeneration(
                name=name,
                kind=kind,
                method=method,
                architecture=embedder.metadata.get("architecture", "unknown"),
                onnx_path=ws.relative(dest),
                onnx_sha256="",
                num_classes=int(embedder.metadata["num_classes"]),
                parent_id=parent_id,
                train_config={"imported_from": str(source), **known},
            ),
        )
    except BaseException:
        shutil.rmtree(dest.parent, ignore_errors=True)
        raise
