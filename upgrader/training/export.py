"""ONNX export of an encoder: uint8 NHWC in, L2-normalised embeddings out, checked before writing.

The artifact is one file (no external data). Its graph does the preprocessing (cast, /255,
mean/std, NHWC->NCHW), so a server needs only onnxruntime and numpy. ``export_onnx`` refuses
(``ExportError``) to write an artifact that fails ``onnx.checker``, the dynamic batch axis, or
parity with PyTorch at batch 1 and 7. Any backbone the exporters can trace goes the same way, a user's
included; one they cannot is refused in one line that names the op and the module it sits in.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from upgrader.core.artifact import INPUT_NAME, OUTPUT_NAME, VERSION_KEY
from upgrader.core.files import replacing, sha256_file
from upgrader.core.errors import ExportError
from upgrader.core.version import VERSION
from upgrader.training.models import Encoder

PARITY_BATCHES = (1, 7)
MIN_COSINE = 0.9999
MAX_ABS_DIFF = 1e-3


@dataclass
class ExportResult:
    """What ``export_onnx`` returns."""

    path: Path  # the artifact
    sha256: str  # of the artifact file
    metadata: dict[str, str]  # metadata_props written into the model
    max_abs_diff: float  # worst |onnx - torch| over the parity batches
    min_cosine: float  # worst per-row cosine(onnx, torch) over the parity batches


class _Deployable(nn.Module):
    """uint8 NHWC -> cast, /255, (x - mean) / std, NCHW -> encoder -> L2-normalised features."""

    def __init__(self, encoder: Encoder, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.encoder = encoder
        # NHWC broadcasting shape [1, 1, 1, C]; normalising before the permute keeps it one op each
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, 1, 1, -1))
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, 1, 1, -1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0  # [N, H, W, C]
        x = (x - self.mean) / self.std  # [N, H, W, C]
        x = x.permute(0, 3, 1, 2)  # [N, C, H, W]
        feats, _ = self.encoder(x)  # [N, K-1]
        return F.normalize(feats, dim=1)  # [N, K-1]


def _strip_provenance(proto: Any) -> None:
    """Drop the exporter's per-node stack traces and doc strings.

    They hold absolute paths of the source files that built the graph, so the same model exported from
    two checkouts got two different sha256s; an artifact's bytes should depend on the model alone.
    """
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        graph.doc_string = ""
        for node in graph.node:
            node.doc_string = ""
            del node.metadata_props[:]
            for attr in node.attribute:  # sub-graphs of If / Loop / Scan nodes
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
        for value in list(graph.value_info) + list(graph.input) + list(graph.output):
            del value.metadata_props[:]
    del proto.graph.metadata_props[:]


def _export_graph(module: nn.Module, example: torch.Tensor, path: str) -> None:
    """Export with the dynamo exporter (dynamic batch via torch.export.Dim), legacy as fallback."""
    # the exporter logs a warning per missing torchvision op: noise for these models
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    previous_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"images": {0: batch}},
                dynamo=True,
                external_data=False,
                verbose=False,
            )
            program.save(path, external_data=False)  # type: ignore[union-attr]
        return
    except Exception as exc:  # the dynamo exporter can fail on exotic models: fall back
        dynamo_error = exc
    finally:
        registration_log.setLevel(previous_level)
    try:
        with warnings.catch_warnings(), _stdout_to_stderr():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                path,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    except Exception as exc:
        raise ExportError(_failure(module, example, dynamo_error, exc)) from None


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The legacy exporter's C++ side prints the whole graph on stdout when it fails: send it to stderr,
    so a command's JSON on stdout stays clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


#: Where the exporters name the op they could not translate (dynamo's dispatcher, the legacy exporter).
_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]"),
    re.compile(r"operator with unrecognized namespace ([\w:]+)"),
    re.compile(r"Exporting the operator '?([\w:.]+)'? to ONNX"),
)


def _failure(module: nn.Module, example: torch.Tensor, dynamo_error: Exception, legacy_error: Exception) -> str:
    """One line for an export both exporters refused: the op they could not translate and the module
    that holds it when they say, else the first line of each exporter's reason."""
    text = f"{dynamo_error}\n{legacy_error}"
    op = next((m.group(1).replace("::", ".") for pattern in _OP_PATTERNS if (m := pattern.search(text))), None)
    if op is None:
        return (f"ONNX export failed (dynamo: {_first_line(dynamo_error)}; legacy: {_first_line(legacy_error)}); "
                "make the backbone traceable (tensor operations only, no data-dependent Python control flow)")
    where = _module_of(module, example, op)
    return (f"ONNX export failed: op {op}{where} has no ONNX translation; replace it in the backbone with standard "
            "tensor operations, or register an ONNX translation for it")


def _first_line(exc: Exception) -> str:
    """An exporter's reason in one line: the summary line dynamo gives, else its first line."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    summary = next((ln.partition(">: ")[2] for ln in lines if ln.startswith("<class ") and ">: " in ln), "")
    return summary or (lines[0] if lines else type(exc).__name__)


def _module_of(module: nn.Module, example: torch.Tensor, op: str) -> str:
    """`` in backbone.block (pkg.Block)``: the innermost module whose forward calls ``op``, read from
    torch.export's record of the graph (empty when the model does not trace that far)."""
    try:
        program = torch.export.export(module, (example,), strict=False)
    except Exception:  # the trace itself failed: the exporters' words are all there is
        return ""
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        if node.op == "call_function" and op in str(node.target) and stack:
            path, kind = list(stack.values())[-1]
            path = str(path).removeprefix("encoder.")
            return f" in {path or 'the model'} ({getattr(kind, '__name__', kind)})"
    return ""


def _parity(path: str, module: nn.Module, image_shape: tuple[int, int, int], seed: int) -> tuple[float, float]:
    """Run the ONNX file and PyTorch at each parity batch size; worst abs diff and cosine."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst_diff, worst_cos = 0.0, 1.0
    for n in PARITY_BATCHES:
        images = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)  # [n, H, W, C]
        (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
        with torch.no_grad():
            want = module(torch.from_numpy(images)).numpy()  # [n, D]
        if got.shape != want.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {want.shape} at batch {n}")
        worst_diff = max(worst_diff, float(np.abs(got - want).max()))
        cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1) + 1e-12)
        worst_cos = min(worst_cos, float(cos.min()))
    return worst_diff, worst_cos


def export_onnx(
    model: Encoder,
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, str] | None = None,
    image_shape: tuple[int, int, int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` to a single-file ONNX artifact and verify it before it appears at ``path``.

    Args:
        model: the encoder (any device/mode; a CPU eval copy is exported).
        path: destination ``.onnx``; written via a temp file in the same folder and os.replace.
        metadata: extra metadata_props, e.g. generation_id, generation_name (values become str).
        image_shape: (H, W, C) of the input; default (image_size, image_size, in_channels).
        mean: per-channel normalisation mean (0..1 units); default the model's own.
        std: per-channel normalisation std; default the model's own.
        seed: seed of the random parity images.

    Returns:
        ExportResult with the sha256 of the written file.

    Raises:
        ExportError: export, checker, dynamic batch or parity failure (nothing is written).
    """
    encoder = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    shape = tuple(int(s) for s in (image_shape or (encoder.image_size, encoder.image_size, encoder.in_channels)))
    if len(shape) != 3 or shape[2] != encoder.in_channels:
        raise ExportError(f"image_shape must be (H, W, {encoder.in_channels}), got {shape}")
    mean = list(mean) if mean is not None else encoder.arch_kwargs["mean"]
    std = list(std) if std is not None else encoder.arch_kwargs["std"]
    module = _Deployable(encoder, mean, std).eval()
    meta = _artifact_metadata(encoder, shape, mean, std, metadata or {})  # type: ignore[arg-type]
    dest = Path(path)
    with replacing(dest) as tmp_path:
        tmp = str(tmp_path)
        _write_graph(module, shape, meta, tmp)  # type: ignore[arg-type]
        max_diff, min_cos = _parity(tmp, module, shape, seed)  # type: ignore[arg-type]
        if not (max_diff <= MAX_ABS_DIFF and min_cos >= MIN_COSINE):
            raise ExportError(
                f"ONNX output differs from PyTorch (max abs diff {max_diff:.2e}, min cosine {min_cos:.6f}); "
                "artifact not written"
            )
        digest = sha256_file(tmp)
    return ExportResult(dest, digest, meta, max_diff, min_cos)


def _artifact_metadata(
    encoder: Encoder, shape: tuple[int, int, int], mean: Sequence[float], std: Sequence[float], extra: dict[str, str]
) -> dict[str, str]:
    """The metadata_props of an artifact: the caller's entries, then what the embedder needs and the
    producing version (which win)."""
    return {
        "generation_id": "",
        "generation_name": "",
        **{str(k): str(v) for k, v in extra.items()},
        "embedding_dim": str(encoder.embedding_dim),
        "num_classes": str(encoder.num_classes),
        "input_shape": ",".join(str(s) for s in shape),
        "layout": "NHWC",
        "input_dtype": "uint8",
        "mean": json.dumps([float(m) for m in mean]),
        "std": json.dumps([float(s) for s in std]),
        "architecture": encoder.arch,
        "arch_kwargs": json.dumps(encoder.arch_kwargs, sort_keys=True),
        "output": OUTPUT_NAME,
        "normalized": "l2",
        VERSION_KEY: VERSION,
    }


def _write_graph(module: nn.Module, shape: tuple[int, int, int], meta: dict[str, str], tmp: str) -> None:
    """Export ``module`` to ``tmp`` with ``meta`` as its metadata_props, then check the file.

    Raises:
        ExportError: onnx.checker refuses the file, or its graph input is not the one the embedder feeds.
    """
    import onnx

    # batch >= 2 so the exporter cannot specialise the batch axis to 1
    example = torch.zeros((2, *shape), dtype=torch.uint8)
    _export_graph(module, example, tmp)
    proto = onnx.load(tmp)
    _strip_provenance(proto)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, tmp, save_as_external_data=False)
    try:
        onnx.checker.check_model(tmp, full_check=True)
    except Exception as exc:
        raise ExportError(f"onnx.checker rejected the export: {exc}") from None
    inputs = proto.graph.input
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        raise ExportError(f"exported graph inputs {[i.name for i in inputs]}, expected ['{INPUT_NAME}']")
