"""Torch-free serving: the :class:`QueryService` (embed with production, search the mixed gallery,
follow promotions) and, in :mod:`upgrader.serving.http`, the HTTP app over it."""

from __future__ import annotations

from upgrader.serving.config import ServingConfig
from upgrader.serving.service import QueryService

__all__ = ["QueryService", "ServingConfig"]
