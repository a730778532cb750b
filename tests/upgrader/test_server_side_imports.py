"""The server side of upgrader (workspaces, gallery, gate, verification, datasets) imports no torch."""

from __future__ import annotations

import subprocess
import sys


def test_server_side_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import upgrader.workspace, upgrader.lineage, upgrader.gate, upgrader.search, upgrader.verification\n"
        "import upgrader.gallery, upgrader.overview, upgrader.datasets, upgrader.data, upgrader.probe\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
