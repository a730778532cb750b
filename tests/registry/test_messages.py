"""Registry error messages speak in the registry's words: no CLI command or flag in any of them.

The registry sits below every front end; a message naming ``upgrader init --classes`` is wrong for
the library, the TUI and the HTTP server alike (and named a flag that does not exist).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

import registry.errors
from registry import (
    InterfaceError,
    InvalidStatus,
    NewGeneration,
    Registry,
    RegistryError,
    WorkspaceNotFound,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from error_messages import CLI_WORDS, error_messages, offending  # noqa: E402

REGISTRY_DIR = Path(registry.errors.__file__).resolve().parent
ERROR_NAMES = {
    name for name, obj in vars(registry.errors).items() if inspect.isclass(obj) and issubclass(obj, RegistryError)
}


def test_no_registry_error_message_names_a_cli_command_or_flag() -> None:
    messages = error_messages(REGISTRY_DIR, ERROR_NAMES)
    assert len(messages) > 40  # the scan sees the registry's errors, not an empty set
    assert offending(messages) == []


def test_common_refusals_say_what_is_wrong_and_the_remedy_in_domain_words(
    registry: Registry, tmp_path: Path
) -> None:
    raised: list[RegistryError] = []
    with pytest.raises(WorkspaceNotFound, match="create a workspace there first") as missing:
        Registry.open(tmp_path / "nowhere")
    raised.append(missing.value)
    with pytest.raises(InterfaceError, match="no interface yet; initialise it with K classes") as no_iface:
        registry.interface()
    raised.append(no_iface.value)
    new = NewGeneration(name="g", kind="initial", method="ce", architecture="a", onnx_path="p",
                        onnx_sha256="s", num_classes=16)
    with pytest.raises(InterfaceError, match="initialise it with K classes") as no_iface_gen:
        registry.add_generation(new)
    raised.append(no_iface_gen.value)
    registry.set_interface(16)
    gen = registry.add_generation(new)
    with pytest.raises(InvalidStatus, match="only when the production alias moves to it") as status:
        registry.set_status(gen.id, "production")
    raised.append(status.value)
    for err in raised:
        assert not CLI_WORDS.search(str(err)), str(err)
