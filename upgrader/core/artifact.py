"""The ONNX artifact contract: what every generation's artifact looks like to the code that runs it.

The exporter (``upgrader.training.export``) writes artifacts to this contract and the torch-free
embedder (``upgrader.runtime.embedder``) refuses any artifact that breaks it, so a server needs
nothing but onnxruntime and numpy (docs/design.md §4).
"""

from __future__ import annotations

#: The one input: uint8 images, NHWC, any batch size (normalisation happens inside the graph).
INPUT_NAME = "images"
#: The one output: L2-normalised float32 embeddings [N, K-1].
OUTPUT_NAME = "embeddings"
#: metadata_props keys every artifact carries; the embedder refuses an artifact without them.
REQUIRED_METADATA: tuple[str, ...] = ("embedding_dim", "num_classes", "input_shape", "layout", "mean", "std",
                                      "architecture")
#: Optional metadata key: JSON ``{class name: vertex}`` of every class the generation learnt, so a
#: workspace importing the artifact knows which classes its embeddings carry a promise for.
CLASSES_KEY = "classes"
#: Metadata key: the version of upgrader that exported the artifact (``upgrader --version``), so an
#: artifact found on disk or in the registry says which release produced it. Absent from artifacts
#: made elsewhere; the exporter always writes its own and a caller's metadata cannot override it.
VERSION_KEY = "upgrader_version"
