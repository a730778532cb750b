"""upgrader: upgrade the embedding model behind a retrieval service without re-indexing its gallery.

``__version__`` is the installed distribution's version. It is read here with the same call as
:data:`upgrader.core.version.VERSION` (the one the layers below use, e.g. for artifact metadata)
rather than imported from it, because the top package imports no layer (tests/layers.py);
tests/packaging checks that the two agree.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__: str = version("upgrader")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

del PackageNotFoundError, version
