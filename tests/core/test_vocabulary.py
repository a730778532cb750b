"""The vocabulary is defined once: the networks, the registry's schema and the UIs offer the same names."""

from __future__ import annotations

from registry.entities import GENERATION_KINDS

from upgrader.core import vocabulary
from upgrader.training import models


def test_every_architecture_name_has_a_network_and_no_network_goes_unnamed() -> None:
    assert tuple(models.ARCHITECTURES) == vocabulary.ARCHITECTURES


def test_the_generation_kinds_are_the_registry_schema_kinds() -> None:
    assert vocabulary.KINDS == GENERATION_KINDS
