"""Registering generations: every generation's probe embeddings come from its ONNX artifact.

Registration is the step that makes the gate possible: the probe queries and the probe gallery stored
in the registry are embedded by the generation's artifact through ONNX Runtime (the same path a
server takes, not PyTorch) and stored beside the generation. It is all or nothing: the artifact's
output is embedded and checked first (a degenerate artifact is refused), then one registry transaction
writes the generation with its probe embeddings; a folder left by a killed run is reused. No torch here.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from registry import Generation, NewGeneration
from registry.entities import PROBE_SPLITS

from upgrader.core.artifact import CLASSES_KEY
from upgrader.core.errors import ArtifactError, InterfaceMismatch, InvalidRequest, UpgraderError
from upgrader.core.faults import fault_point
from upgrader.core.files import replacing, sha256_file
from upgrader.runtime.embedder import Embedder
from upgrader.services.workspace import Workspace, check_generation_name


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


#: How far an output row's L2 norm may stray from 1 before the artifact counts as not normalising.
UNIT_NORM_TOLERANCE = 1e-3

ProbeEmbeddings = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (int64 item ids, float32 [N, D])


def check_probe_outputs(embedder: Embedder, split: str, feats: np.ndarray, rows: int) -> np.ndarray:
    """Refuse an artifact whose raw output on the probe images cannot serve: the gate and search
    assume finite, unit-norm rows that differ between images, of the width the metadata promises.

    ``feats`` must be what the artifact returned (:meth:`Embedder.embed` does not normalise), so an
    all-zero or unnormalised output is seen as it is and not masked.

    Returns:
        ``feats`` as float32.

    Raises:
        ArtifactError: one line naming the first defect found and what to do about it.
    """
    where = f"artifact {embedder.path} on the probe {split} images"
    fix = "fix the model's output and export it again"
    arr = np.asarray(feats)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ArtifactError(f"{where}: output shape {tuple(arr.shape)}, expected ({rows}, {embedder.embedding_dim}); {fix}")
    if arr.shape[1] != embedder.embedding_dim:
        raise ArtifactError(
            f"{where}: outputs {arr.shape[1]} values per image but its metadata says embedding_dim "
            f"{embedder.embedding_dim}; {fix}"
        )
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ArtifactError(f"{where}: non-finite output (NaN or inf) for {int(bad.sum())} of {rows} images; {fix}")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1)
    zero = norms == 0.0
    if zero.any():
        raise ArtifactError(f"{where}: all-zero output for {int(zero.sum())} of {rows} images; {fix}")
    off = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
    if off.any():
        raise ArtifactError(
            f"{where}: {int(off.sum())} of {rows} outputs are not L2-normalised (norms {norms.min():.4f}.."
            f"{norms.max():.4f}, tolerance {UNIT_NORM_TOLERANCE}); normalise the output inside the model"
        )
    if rows > 1 and float(np.ptp(arr, axis=0).max()) == 0.0:
        raise ArtifactError(f"{where}: the same output for every image (zero variance); {fix}")
    return arr


def probe_embeddings(ws: Workspace, embedder: Embedder) -> ProbeEmbeddings:
    """Both probe splits embedded by ``embedder`` and checked (:func:`check_probe_outputs`); nothing is stored.

    Raises:
        ArtifactError: the artifact cannot run on the probe images, or its output is degenerate.
    """
    out: ProbeEmbeddings = {}
    for split in PROBE_SPLITS:
        probe = ws.registry.probe_set(split)
        try:
            raw = embedder.embed(probe.images)  # the artifact's own output, as it came out
        except UpgraderError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types for a graph that fails at run time
            raise ArtifactError(
                f"artifact {embedder.path} fails on the probe {split} images ({exc.__class__.__name__}); "
                "export it again from a model that runs"
            ) from None
        out[split] = (probe.item_ids, check_probe_outputs(embedder, split, raw, len(probe.item_ids)))
    return out


def embed_probe_set(ws: Workspace, gen: Generation, *, threads: int | None = None) -> dict[str, int]:
    """Embed both probe splits with ``gen``'s artifact (its bytes checked first) and store them, bound to
    the artifact's sha256; returns items per split. ``verify`` calls it when the stored ones are stale.

    Raises:
        ArtifactError: the file is missing or changed, or its output is degenerate (nothing stored).
    """
    embedder = open_embedder(ws, gen, threads=threads)
    embedded = probe_embeddings(ws, embedder)
    for split, (ids, feats) in embedded.items():
        ws.registry.put_probe_embeddings(gen.id, split, ids, feats, artifact_sha256=gen.onnx_sha256)
    return {split: int(len(ids)) for split, (ids, _) in embedded.items()}


def check_artifact(ws: Workspace, gen: Generation, *, verify_sha: bool = True) -> Path:
    """The path of ``gen``'s artifact, after checking it exists and (``verify_sha``) that its bytes are
    the ones registered.

    A forced move overrides the gate, never this: an artifact nobody judged must not serve.

    Raises:
        ArtifactError: the file is missing or its sha256 differs from the registry's record.
    """
    path = ws.resolve(gen.onnx_path)
    if not path.is_file():
        raise ArtifactError(
            f"artifact of generation {gen.name} is missing at {path}; re-export it from its checkpoint",
            subject="artifact",
        )
    actual = sha256_file(path) if verify_sha else gen.onnx_sha256
    if actual != gen.onnx_sha256:
        raise ArtifactError(
            f"artifact of generation {gen.name} at {path} has sha256 {actual[:12]}… but the registry "
            f"recorded {gen.onnx_sha256[:12]}…; it changed after registration (or a re-export was "
            "interrupted) — re-export it from its checkpoint",
            subject="artifact",
        )
    return path


def open_embedder(ws: Workspace, gen: Generation, *, threads: int | None = None, verify_sha: bool = True) -> Embedder:
    """Load ``gen``'s ONNX artifact, checking that its bytes are the ones registered.

    Raises:
        ArtifactError: the file is missing or its sha256 differs from the registry's record.
    """
    return Embedder(check_artifact(ws, gen, verify_sha=verify_sha), threads=threads)


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
    """Record an exported generation together with its probe embeddings, all or nothing.

    Everything that can refuse runs before the registry is written: the artifact's interface, its
    output on both probe splits (:func:`check_probe_outputs`) and the name. Then one transaction
    writes the generation and its probe embeddings, so a crash or a refusal leaves no generation
    without them. The artifact's sha256 is taken from the file that was embedded.

    Raises:
        ArtifactError: unreadable or degenerate artifact. InterfaceMismatch: another K or dim.
        InvalidRequest: a name that breaks the pattern or is taken.
    """
    check_generation_name(new.name)
    check_name_free(ws, new.name)
    embedder = Embedder(ws.resolve(new.onnx_path), threads=threads)
    check_artifact_interface(ws, embedder)
    return _record(ws, new, embedder, probe_embeddings(ws, embedder))


def _record(ws: Workspace, new: NewGeneration, embedder: Embedder, embedded: ProbeEmbeddings) -> Generation:
    """The one registry write of a registration: the generation and the probe embeddings its artifact
    (``embedder``, whose bytes are the ones at ``new.onnx_path``) produced."""
    new = replace(new, onnx_sha256=embedder.sha256, onnx_metadata=dict(embedder.metadata))
    fault_point("register:embedded")
    return ws.registry.add_generation(new, probe_embeddings=embedded)


def check_name_free(ws: Workspace, name: str) -> None:
    """Refuse a generation name the registry holds already (a usage error: the user typed it).

    Raises:
        InvalidRequest: a generation of that name exists (subject ``name``).
    """
    if any(g.name == name for g in ws.registry.list_generations()):
        raise InvalidRequest(f"a generation named {name!r} exists already; choose another name", subject="name")


def claim_folder(ws: Workspace, name: str) -> Path:
    """A new, empty artifact folder for generation ``name``.

    A folder of that name that no generation owns is what a killed run left behind (the registry
    write is the last step, so nothing refers to it): it is cleared and reused.

    Raises:
        InvalidRequest: a bad name, or a generation of that name exists (it owns the folder).
    """
    folder = ws.generation_dir(name)
    check_name_free(ws, name)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def known_classes(gen: Generation) -> list[int] | None:
    """Vertex indices of the classes ``gen`` was trained on (its lineage's, cumulatively), or None
    for a generation that does not say (an imported artifact): it then counts as knowing them all."""
    vertices = gen.train_config.get("vertices")
    return [int(v) for v in vertices] if vertices else None


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

    The name and the file are checked (metadata, interface, the classes it learnt: see
    :func:`imported_classes`) before anything is written. The copy is written to a temporary name and
    renamed, then registered with its probe embeddings in one transaction: a refusal or a crash leaves
    no generation behind, and a folder a killed run left is reused by the next attempt.

    Raises:
        ArtifactError: unreadable, degenerate or not an upgrader artifact. InterfaceMismatch: another K.
        InvalidRequest: a bad or taken name, or ``classes`` (or the artifact's record) names a class
            the workspace lacks.
    """
    check_generation_name(name)
    check_name_free(ws, name)
    embedder = Embedder(source)
    check_artifact_interface(ws, embedder)
    learnt = imported_classes(ws, embedder, classes)
    known = {} if learnt is None else {"classes": sorted(learnt, key=learnt.__getitem__), "vertices": sorted(learnt.values())}
    reg = ws.registry
    parent_id = reg.get_generation(parent).id if parent else reg.get_alias()
    embedded = probe_embeddings(ws, embedder)  # a degenerate artifact is refused before anything is copied
    folder = claim_folder(ws, name)
    dest = folder / "model.onnx"
    try:
        with replacing(dest) as tmp, open(tmp, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        fault_point("register:copied")
        if sha256_file(dest) != embedder.sha256:
            raise ArtifactError(f"{source} changed while it was copied; register it again once it stays put")
        new = NewGeneration(
            name=name,
            kind=kind,
            method=method,
            architecture=embedder.metadata.get("architecture", "unknown"),
            onnx_path=ws.relative(dest),
            onnx_sha256=embedder.sha256,
            num_classes=int(embedder.metadata["num_classes"]),
            parent_id=parent_id,
            train_config={"imported_from": str(source), **known},
        )
        return _record(ws, new, embedder, embedded)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
