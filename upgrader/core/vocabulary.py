"""The product's vocabulary, defined once: generation kinds, training methods, architecture names.

Every layer (CLI help, the dashboard's form, validation, training, the study) reads these tuples, so
offering a name in one place and refusing it in another cannot happen. The registry, which imports
nothing from ``upgrader``, keeps the generation kinds in its schema; a test checks the two agree.
"""

from __future__ import annotations

#: How a generation came to be: the first of a lineage, a fine-tune of production on new classes, or
#: a new architecture trained on the same interface.
KINDS: tuple[str, ...] = ("initial", "finetune", "replacement")

#: Training methods: the product's d-Simplex + compatibility loss, then the baselines the study
#: compares it with (d-Simplex CE only, a learnable growing classifier with rehearsal, and BCT).
METHODS: tuple[str, ...] = ("hoc", "ce", "er", "bct")

#: Built-in backbones, smallest first; ``upgrader.training.models`` maps each name to its network.
ARCHITECTURES: tuple[str, ...] = ("small_cnn", "resnet_narrow", "resnet_wide", "resnet18")
