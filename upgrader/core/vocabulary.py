"""The product's vocabulary, defined once: generation kinds, training methods, architecture names.

Every layer (CLI help, the dashboard's form, validation, training, the study) reads these tuples, so
offering a name in one place and refusing it in another cannot happen. The registry, which imports
nothing from ``upgrader``, keeps the generation kinds in its schema; a test checks the two agree.
"""

from __future__ import annotations

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

#: Built-in backbones, smallest first; ``upgrader.training.models`` maps each name to its network.
ARCHITECTURES: tuple[str, ...] = ("small_cnn", "resnet_narrow", "resnet_wide", "resnet18")
