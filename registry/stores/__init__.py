"""One store per concern of the registry, each a class over the shared unit of work.

- :mod:`registry.stores.interface`: K, the embedding dim and the append-only label map.
- :mod:`registry.stores.generations`: generations, their status and artifact, and name resolution.
- :mod:`registry.stores.probes`: the probe set (pixels and classes) and each generation's embeddings.
- :mod:`registry.stores.aliases`: the ``production`` alias and its append-only history.
- :mod:`registry.stores.reports`: evaluations and gate reports (with their score calibration).
- :mod:`registry.stores.gallery`: the mixed-generation gallery and its fast SQL paths.
- :mod:`registry.stores.gallery_clock`: the gallery's change sequence (versions, tombstones).
- :mod:`registry.stores.gallery_changes`: following the gallery by version, re-embedding, sources.

Callers use the :class:`registry.Registry` facade; the stores are not part of the public API.
"""
