"""Errors of the query service itself (request errors come from :mod:`upgrader.core.errors` and
:mod:`upgrader.runtime.images`)."""

from __future__ import annotations

from upgrader.core.errors import UpgraderError


class ServingRefused(UpgraderError):
    """The service answers no request because the registry cannot be trusted right now.

    Raised by every request while the ``production`` alias disagrees with its own history (someone
    edited the alias row behind the registry's back): serving would follow an unproven move. The
    service keeps the last generation it loaded and serves again once the registry agrees with
    itself. The message says why, in the registry's words.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, subject="production")
