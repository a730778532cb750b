"""Backbones: the built-in networks and the ones users bring, behind one factory signature.

A user backbone is a function ``function(in_channels: int, image_size: int, **kwargs) -> nn.Module``
named as ``package.module:function`` (or by a name an installed package registers in the
``upgrader.backbones`` entry-point group). The module it returns maps a normalised float batch
``[N, C, H, W]`` to features ``[N, F]``; the encoder finds F with one dry forward and appends its own
projection to K-1 and the fixed simplex classifier, so any feature extractor can serve.

The spec is stored with every checkpoint and artifact, so re-export, checkpoint loading and every
``torchrun`` rank import the function again by name; a module that is not installed where that
happens is one error naming it (:class:`BackboneUnavailable`), never a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from upgrader.core.errors import ModelError
from upgrader.core.vocabulary import BACKBONE_ENTRY_POINTS, BackboneUnavailable, architecture_kind, plugin_target

#: factory(in_channels, image_size, **kwargs) -> backbone module
BackboneFactory = Callable[..., nn.Module]


def resolve_factory(arch: str, builtins: dict[str, Callable[..., nn.Module]]) -> BackboneFactory:
    """The factory that builds ``arch``'s backbone, with the plug-in signature for every kind.

    Args:
        arch: a built-in name, ``package.module:function`` or a registered entry-point name.
        builtins: the built-in factories (``factory(in_channels, **kwargs)``), by name.

    Raises:
        BackboneUnavailable: the module, or one it imports, is not installed (the error class lives
            torch-free in ``upgrader.core.vocabulary`` so the services raise it too).
        ModelError: the module has no such function, or it is not callable.
        InvalidRequest: ``arch`` names nothing.
    """
    target = plugin_target(arch)
    if target is None:
        builtin = builtins[arch]
        return lambda in_channels, image_size, **kw: builtin(in_channels, **kw)
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise BackboneUnavailable(arch, exc.name or module_name) from None
    except Exception as exc:  # the user's module failed while importing: say where, in one line
        first = (str(exc).splitlines() or [""])[0]
        raise ModelError(f"backbone {arch!r}: importing {module_name!r} failed ({type(exc).__name__}: {first}); "
                         "fix that module", subject="arch") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        where = f" (entry point of the {BACKBONE_ENTRY_POINTS!r} group)" if target != arch else ""
        raise ModelError(f"backbone {arch!r}{where}: module {module_name!r} has no function {function!r}; "
                         "name a function(in_channels, image_size, **kwargs) that returns an nn.Module", subject="arch")
    return factory


def build_backbone(arch: str, factory: BackboneFactory, in_channels: int, image_size: int,
                   kwargs: dict[str, Any]) -> tuple[nn.Module, int]:
    """Call ``factory`` and find its feature width F with one dry forward (eval mode, no gradients, a
    batch of 2 zeros at the data's size; the random state is left as it was).

    Returns:
        (the backbone in training mode, F).

    Raises:
        ModelError: the factory refused its arguments, returned something else than a module, failed
            on a batch, or returned other than ``[N, F]`` features.
    """
    try:
        backbone = factory(in_channels, image_size, **kwargs)
    except TypeError as exc:
        raise ModelError(f"backbone {arch!r} refused its arguments (in_channels={in_channels}, image_size={image_size}, "
                         f"kwargs {sorted(kwargs)}): {exc}; give it the keyword arguments it takes",
                         subject="arch") from None
    if not isinstance(backbone, nn.Module):
        raise ModelError(f"backbone {arch!r} returned a {type(backbone).__name__}, not a torch nn.Module; "
                         "return the network", subject="arch")
    declared = getattr(backbone, "out_dim", None)
    if isinstance(declared, int) and architecture_kind(arch) == "builtin":
        return backbone, declared  # built-ins declare their width: no dry run
    backbone.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = backbone(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as exc:
        first = (str(exc).splitlines() or [""])[0]
        raise ModelError(f"backbone {arch!r} failed on a [2, {in_channels}, {image_size}, {image_size}] batch "
                         f"({type(exc).__name__}: {first}); it must take normalised float images [N, C, H, W]",
                         subject="arch") from None
    backbone.train()
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or out.shape[1] < 1:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"backbone {arch!r} returned {shape} for a batch of 2; it must return features [N, F] "
                         "(pool and flatten its last feature map)", subject="arch")
    return backbone, int(out.shape[1])
