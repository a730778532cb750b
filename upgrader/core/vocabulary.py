"""The product's vocabulary, defined once: generation kinds, training methods, architecture names.

Every layer (CLI help, the dashboard's form, validation, training, the study) reads these tuples, so
offering a name in one place and refusing it in another cannot happen. The registry, which imports
nothing from ``upgrader``, keeps the generation kinds in its schema; a test checks the two agree.
"""

from __future__ import annotations

import importlib.util
import re

from upgrader.core.errors import InvalidRequest, ModelError

#: How a generation came to be: the first of a lineage, a fine-tune of production on new classes, or
#: a new architecture trained on the same interface.
KINDS: tuple[str, ...] = ("initial", "finetune", "replacement")

#: Training methods: the product's d-Simplex + compatibility loss (``hoc``: the paper's loss plus the
#: stationarity term and the vertex calibration; ``hoc-paper``: the paper's loss exactly, docs/design.md
#: §2), then the baselines the study compares them with (d-Simplex CE only, a learnable growing
#: classifier with rehearsal, and BCT).
METHODS: tuple[str, ...] = ("hoc", "hoc-paper", "ce", "er", "bct")

#: Methods trained against a frozen anchor (the previous generation) when there is one.
ANCHORED_METHODS: tuple[str, ...] = ("hoc", "hoc-paper", "bct")

#: Methods whose loss is lambda*CE + (1-lambda)*HOC on the fixed d-Simplex classifier.
HOC_METHODS: tuple[str, ...] = ("hoc", "hoc-paper")

#: Built-in backbones, smallest first; ``upgrader.training.models`` maps each name to its network. Users bring
#: their own as ``package.module:function`` or through the ``upgrader.backbones`` entry points (below).
ARCHITECTURES: tuple[str, ...] = ("small_cnn", "resnet_narrow", "resnet_wide", "resnet18")

#: A backbone brought by the user: ``package.module:function`` (see :func:`architecture_kind`).
PLUGIN_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
#: A name a package registers for its backbone in this entry-point group (``mynet = mypkg.nets:build``).
BACKBONE_ENTRY_POINTS = "upgrader.backbones"
#: Longest architecture the registry stores (its ``architecture`` column).
MAX_ARCH_LENGTH = 128


def architecture_kind(arch: str) -> str:
    """What ``arch`` names: ``builtin`` (one of ARCHITECTURES), ``plugin`` (``package.module:function``)
    or ``entry-point`` (a name some installed package registers in the ``upgrader.backbones`` group).

    Checked by its form only: nothing is imported, so the check stays cheap and torch-free; whether the
    module is installed is the training side's question (``upgrader.training.backbones``).

    Raises:
        InvalidRequest: neither a built-in name, a ``package.module:function`` spec nor a registered name.
    """
    if arch in ARCHITECTURES:
        return "builtin"
    if PLUGIN_SPEC.match(arch) and len(arch) <= MAX_ARCH_LENGTH:
        return "plugin"
    if ":" not in arch and arch in backbone_entry_points():
        return "entry-point"
    raise InvalidRequest(
        f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}, a backbone of your own as "
        f"package.module:function (at most {MAX_ARCH_LENGTH} characters) or a name registered in the "
        f"{BACKBONE_ENTRY_POINTS!r} entry-point group",
        subject="arch",
    )


def backbone_entry_points() -> dict[str, str]:
    """Names installed packages register in the ``upgrader.backbones`` entry-point group -> their
    ``package.module:function`` (read from the packages' metadata; nothing is imported)."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value.replace(" ", "") for ep in entry_points(group=BACKBONE_ENTRY_POINTS)}


def arch_label(arch: str) -> str:
    """A short name-safe form of ``arch`` for default generation names: a plug-in's function name."""
    return arch.rpartition(":")[2] if ":" in arch else arch


#: How a missing backbone module is put right, said with every :class:`BackboneUnavailable`.
INSTALL_HINT = "install the package that provides it in this environment, or put its folder on PYTHONPATH"


class BackboneUnavailable(ModelError):
    """A user backbone whose module (or a module it imports) is not installed where it is needed.

    Attributes:
        module: the module that could not be imported.
    """

    def __init__(self, arch: str, module: str, where: str = "") -> None:
        super().__init__(f"{where}backbone {arch!r} needs module {module!r}, which is not installed here; {INSTALL_HINT}",
                         subject="arch")
        self.module = module

    @classmethod
    def at(cls, path: object, arch: str, module: str) -> BackboneUnavailable:
        """The same error for the checkpoint at ``path`` (whose model could not be rebuilt)."""
        return cls(arch, module, where=f"{path}: its ")


def plugin_target(arch: str) -> str | None:
    """The ``package.module:function`` a plug-in architecture stands for (an entry point's value for a
    registered name); None for a built-in name.

    Raises:
        InvalidRequest: ``arch`` names nothing (see :func:`architecture_kind`).
    """
    kind = architecture_kind(arch)
    if kind == "builtin":
        return None
    return arch if kind == "plugin" else backbone_entry_points()[arch]


def check_backbone_installed(arch: str) -> None:
    """Refuse a plug-in whose top-level package cannot be found here, before any work.

    Only the top-level package is looked up (nothing runs, torch stays unloaded); the training side
    imports the whole module and names any deeper module that is missing the same way.

    Raises:
        InvalidRequest: ``arch`` names nothing. BackboneUnavailable: its package is not installed.
    """
    target = plugin_target(arch)
    if target is None:
        return
    top = target.partition(":")[0].partition(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise BackboneUnavailable(arch, top)
