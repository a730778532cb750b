"""The server side of upgrader (workspaces, gallery, gate, verification, datasets) imports no torch."""

from __future__ import annotations

import subprocess
import sys


def test_server_side_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import upgrader.services.workspace, upgrader.services.registration, upgrader.compat.gate, upgrader.runtime.index, upgrader.services.promotion\n"
        "import upgrader.services.gallery, upgrader.services.status, upgrader.data.items, upgrader.data.readers, upgrader.services.workspace_init\n"
        "import upgrader.data.dataset, upgrader.core.images, upgrader.runtime.images, upgrader.runtime.embedder, upgrader.runtime.kernels\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
