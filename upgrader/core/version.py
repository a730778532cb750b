"""The version of the installed package: what ``upgrader --version`` prints and each artifact records.

It is read from the distribution's metadata (pyproject.toml's ``version``, written at install), so
one number is the truth for the wheel, an editable checkout and the artifacts they produce.
"""

from __future__ import annotations

from importlib import metadata

#: The distribution's name: what ``pip install`` takes and what its metadata is filed under.
DISTRIBUTION = "upgrader"
#: What a source tree on ``sys.path`` that was never installed reports: it has no metadata to read,
#: and a made-up number would pass for a release.
UNINSTALLED = "0+unknown"


def installed_version() -> str:
    """The installed distribution's version, or :data:`UNINSTALLED` when there is none."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return UNINSTALLED


#: The version of the running package, read once at import.
VERSION: str = installed_version()
