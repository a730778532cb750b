"""`train`, `replace`, `export`, `register`: the commands that make generations.

The training side (torch) is imported only inside the commands that train or export; the request
and its checks are torch-free (``upgrader.services.training_plan``), worded here with the flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import TaskID

from upgrader.cli.common import (
    HomeOption, JsonOption, console, handle_errors, print_json, print_warning, progress_bar, styled, usage_error,
    warning_line, workspace,
)
from upgrader.core.formatting import pct
from upgrader.core.errors import InvalidRequest
from upgrader.core.vocabulary import ARCHITECTURES, HOC_METHODS, KINDS, METHODS
from upgrader.services.training_plan import AUGMENTS, MAX_BATCH, MEMORY_PER_CLASS, STEPS_PER_CLASS, TrainRequest

if TYPE_CHECKING:
    from upgrader.services.workspace import Workspace
    from upgrader.training.pipeline import TrainOutcome


def register(app: typer.Typer) -> None:
    """Attach this module's commands."""
    app.command("train")(train)
    app.command("replace")(replace)
    app.command("export")(export)
    app.command("register")(register_artifact)


Classes = Annotated[str, typer.Option(help="New classes to learn: indices '4-5', '4,5' or names.")]
Dataset = Annotated[str | None, typer.Option(help="Dataset (default: the workspace's).")]
Method = Annotated[str, typer.Option(help=f"{METHODS[0]} (compatible, default) or a baseline: {', '.join(METHODS[1:])}.")]
Epochs = Annotated[int | None, typer.Option(help="Passes over the new data; overrides --steps.", show_default=False)]
Steps = Annotated[int | None, typer.Option(
    help=f"Optimiser steps (default {STEPS_PER_CLASS} per class the run trains on, new and rehearsed, however many "
         "images there are; the last pass may stop early).",
    show_default=False)]
Augment = Annotated[str | None, typer.Option(
    help=f"{', '.join(AUGMENTS)} (default: crop+flip for Fashion-MNIST, crop otherwise: flips break digits and text).",
    show_default=False)]
PerClass = Annotated[int | None, typer.Option(help="At most this many training images per class.")]
Memory = Annotated[int, typer.Option(help="Rehearsal images kept per class for later generations (all of a smaller class).")]
Name = Annotated[str | None, typer.Option(help="Generation name (default g<N>-<kind>-<arch>-<method>).")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
BatchSize = Annotated[int | None, typer.Option(
    help=f"Batch size (half rehearsal memory when fine-tuning; default a tenth of the new images, 16 to {MAX_BATCH}).",
    show_default=False)]
LR = Annotated[float, typer.Option(help="Peak SGD learning rate (cosine schedule).")]
Seed = Annotated[int | None, typer.Option(help="Training seed (default: the workspace's).")]
#: How --arch names a backbone: a built-in or the user's own.
ARCH_FORMS = f"{', '.join(ARCHITECTURES)}, or your own as package.module:function (see README, Bring your own backbone)"
ArchKwargs = Annotated[str | None, typer.Option(
    "--arch-kwargs", help='Keyword arguments of the backbone function, as a JSON object, e.g. \'{"width": 64}\'.',
    show_default=False)]
InitWeights = Annotated[Path | None, typer.Option(
    help="Pretrained weights to start from: a state dict of the backbone or of a whole encoder (torch.save, read "
         "without unpickling objects; .safetensors with the safetensors package), or an upgrader checkpoint.",
    show_default=False)]
InitPrefix = Annotated[str | None, typer.Option(
    help="Map the weights' keys first: OLD strips a prefix (e.g. 'module.'), OLD=NEW replaces it, -OLD drops those "
         "keys (e.g. '-fc.'); comma separated. With OLD or OLD=NEW, keys matching no entry are left out.",
    show_default=False)]
FreezeBackbone = Annotated[bool, typer.Option(
    "--freeze-backbone", help="Train the projection only: the backbone keeps its weights and batch-norm statistics.")]
BackboneLrMult = Annotated[float, typer.Option(help="The backbone's learning rate as a multiple of --lr (e.g. 0.1).")]
OwnNegatives = Annotated[bool, typer.Option(
    "--own-negatives", help="hoc, hoc-paper: the new model's own features of other classes join the compatibility "
                            "loss's negatives (measured in README, Compatibility study).")]


def _loss_options(method: str, own_negatives: bool) -> dict[str, Any]:
    """TrainConfig fields of the loss options (TrainRequest.extra)."""
    if own_negatives and method not in HOC_METHODS:
        raise InvalidRequest(f"--own-negatives changes the compatibility loss of {' and '.join(HOC_METHODS)}; "
                             f"method {method!r} has none", subject="method")
    return {"own_negatives": True} if own_negatives else {}


def arch_kwargs_option(text: str | None, flag: str = "--arch-kwargs") -> dict[str, Any]:
    """``flag``'s JSON parsed: a JSON object, or a usage error (exit 2)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        usage_error(f"{flag} is not JSON ({exc.msg} at character {exc.pos}); give an object, e.g. '{{\"width\": 64}}'")
    if not isinstance(value, dict):
        usage_error(f"{flag} must be a JSON object of named arguments, got {type(value).__name__}")
    return value


#: Warnings said before a run starts (the rest come with its result).
BEFORE_RUN = frozenset({"known-classes"})


def run_training(ws: Workspace, req: TrainRequest, *, quiet: bool = False) -> TrainOutcome:
    """Train with a live progress bar (epoch, loss, accuracy) on stderr.

    The request is checked and its data read before the bar appears (it starts with the first step),
    so a refusal prints only its error.

    Raises:
        InvalidRequest: the request was refused (the CLI words it with the flag to change).
    """
    from upgrader.services.training_plan import request_warnings, validate_request
    from upgrader.training.pipeline import train_and_register

    parent, _, _ = validate_request(ws, req)
    for warning in request_warnings(ws, req, parent):
        print_warning(warning_line(warning))
    if quiet:
        return train_and_register(ws, req)
    bar = progress_bar()
    task: list[TaskID] = []

    def on_step(p) -> None:  # TrainProgress
        if not task:
            bar.start()
            task.append(bar.add_task(f"training {req.kind}", total=p.total, info=""))
        bar.update(task[0], total=p.total, completed=p.done,
                   info=f"epoch {p.epoch}/{p.epochs} loss {p.loss:.3f} acc {100 * p.accuracy:.1f}%")

    try:
        return train_and_register(ws, req, progress=on_step)
    finally:
        bar.stop()


def _report(out: TrainOutcome, json_out: bool) -> None:
    if json_out:
        print_json(out)
        return
    g = out.generation
    last = out.history[-1] if out.history else {}
    length = f"{out.length.describe()}, " if out.length else ""
    console.print(styled(
        "[green]registered[/] generation [bold]{}[/] ({}): {}",
        g.name, f"id {g.id}, {g.architecture}/{g.method}, status {g.status}",
        f"{length}augmentation {out.augment or '-'}; {out.seconds:.1f}s at {out.images_per_second:.0f} img/s, final "
        f"loss {last.get('loss', float('nan')):.3f}, train acc {pct(out.final_accuracy)}% (last {out.accuracy_window} "
        f"steps); ONNX parity cos >= {out.export_parity['min_cosine']:.6f}",
    ))
    for warning in out.warnings:
        if warning.reason not in BEFORE_RUN:
            print_warning(warning_line(warning))
    console.print(f"next: upgrader verify {g.name}   then   upgrader promote {g.name}")


@handle_errors
def train(
    classes: Classes,
    home: HomeOption = None,
    finetune: Annotated[bool | None, typer.Option("--finetune/--initial", help="Fine-tune production (default when one exists) or train an initial generation.")] = None,
    parent: Annotated[str | None, typer.Option(help="Fine-tune this generation instead of production.")] = None,
    dataset: Dataset = None,
    arch: Annotated[str | None, typer.Option(help=f"Architecture of an initial generation: {ARCH_FORMS}.")] = None,
    arch_kwargs: ArchKwargs = None,
    init_weights: InitWeights = None,
    init_prefix: InitPrefix = None,
    freeze_backbone: FreezeBackbone = False,
    backbone_lr_mult: BackboneLrMult = 1.0,
    method: Method = "hoc",
    own_negatives: OwnNegatives = False,
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LR = 0.05,
    per_class: PerClass = None,
    memory_per_class: Memory = MEMORY_PER_CLASS,
    augment: Augment = None,
    name: Name = None,
    seed: Seed = None,
    device: Device = "auto",
    json_out: JsonOption = False,
) -> None:
    """Train a generation: initial (first of the lineage) or a fine-tune of production on new classes.

    Example: upgrader train --classes 0-3                    (initial)
             upgrader train --classes 4,5 --finetune --steps 1000   (from production, longer)
             upgrader train --classes 0-3 --arch mynets:tiny --init-weights tiny.pt --freeze-backbone
    """
    kwargs = arch_kwargs_option(arch_kwargs)
    with workspace(home) as ws:
        if finetune is None:
            finetune = ws.registry.get_alias() is not None or parent is not None
        req = TrainRequest(
            kind="finetune" if finetune else "initial", classes=(classes,), dataset=dataset, arch=arch, method=method,
            epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, per_class=per_class,
            memory_per_class=memory_per_class, augment=augment, parent=parent, name=name, seed=seed, device=device,
            arch_kwargs=kwargs, init_weights=str(init_weights) if init_weights else None, init_prefix=init_prefix,
            freeze_backbone=freeze_backbone, backbone_lr_mult=backbone_lr_mult,
            extra=_loss_options(method, own_negatives),
        )
        out = run_training(ws, req, quiet=json_out)
    _report(out, json_out)


@handle_errors
def replace(
    classes: Classes,
    arch: Annotated[str, typer.Option(help=f"The new architecture: {ARCH_FORMS}.")],
    home: HomeOption = None,
    dataset: Dataset = None,
    method: Method = "hoc",
    own_negatives: OwnNegatives = False,
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: LR = 0.05,
    per_class: PerClass = None,
    memory_per_class: Memory = MEMORY_PER_CLASS,
    augment: Augment = None,
    arch_kwargs: ArchKwargs = None,
    init_weights: InitWeights = None,
    init_prefix: InitPrefix = None,
    freeze_backbone: FreezeBackbone = False,
    backbone_lr_mult: BackboneLrMult = 1.0,
    no_anchor: Annotated[bool, typer.Option("--no-anchor", help="Train without production as the compatibility anchor.")] = False,
    name: Name = None,
    seed: Seed = None,
    device: Device = "auto",
    json_out: JsonOption = False,
) -> None:
    """Replace the architecture: train a new model on the same interface, anchored on production.

    Example: upgrader replace --arch resnet_narrow --classes 6,7 --steps 1000
             upgrader replace --arch mynets:wide --classes 0-7 --init-weights wide.pt --init-prefix module.
    """
    req = TrainRequest(
        kind="replacement", classes=(classes,), dataset=dataset, arch=arch, method=method, epochs=epochs, steps=steps,
        batch_size=batch_size, lr=lr, per_class=per_class, memory_per_class=memory_per_class, augment=augment,
        init_weights=str(init_weights) if init_weights else None, anchor=not no_anchor, name=name, seed=seed, device=device,
        arch_kwargs=arch_kwargs_option(arch_kwargs), init_prefix=init_prefix, freeze_backbone=freeze_backbone,
        backbone_lr_mult=backbone_lr_mult, extra=_loss_options(method, own_negatives),
    )
    with workspace(home) as ws:
        out = run_training(ws, req, quiet=json_out)
    _report(out, json_out)


@handle_errors
def export(
    generation: Annotated[str, typer.Argument(help="Generation id or name.")],
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Re-export a generation's checkpoint to ONNX (a new artifact: verify again before promoting).

    Example: upgrader export g2-finetune-small_cnn-hoc
    """
    from upgrader.training.pipeline import reexport

    with workspace(home) as ws:
        gen = reexport(ws, generation)
    if json_out:
        print_json(gen)
        return
    console.print(f"exported {gen.name} to {gen.onnx_path} (sha256 {gen.onnx_sha256[:16]}…)")


@handle_errors
def register_artifact(
    artifact: Annotated[Path, typer.Argument(help="An ONNX artifact exported by upgrader (uint8 NHWC in, L2-normalised features out).")],
    name: Annotated[str, typer.Option(help="Generation name.")],
    home: HomeOption = None,
    kind: Annotated[str, typer.Option(help=f"One of {', '.join(KINDS)}.")] = "replacement",
    method: Annotated[str, typer.Option(help="How it was trained (free text, e.g. hoc).")] = "external",
    parent: Annotated[str | None, typer.Option(help="Parent generation (default: production).")] = None,
    classes: Annotated[str | None, typer.Option(
        help="Classes it learnt: names or indices of this workspace's classes (e.g. 0-5). Default: the "
             "artifact's own record (upgrader exports carry one); with neither, the gate scores it on every class.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Register an artifact trained elsewhere: checked against the interface, then probe-embedded.

    Example: upgrader register ./model.onnx --name vendor-v2 --method hoc --classes 0-5
    """
    from upgrader.services.registration import import_artifact

    if not artifact.is_file():
        from upgrader.cli.common import usage_error

        usage_error(f"no such artifact: {artifact}")
    with workspace(home) as ws:
        gen = import_artifact(ws, artifact, name=name, kind=kind, method=method, parent=parent,
                              classes=[classes] if classes else None)
    if json_out:
        print_json(gen)
        return
    console.print(styled("[green]registered[/] {} (id {}); next: upgrader verify {}", gen.name, gen.id, gen.name))
