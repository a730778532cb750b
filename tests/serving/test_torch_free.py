"""The server side imports no torch: a CPU server installs onnxruntime and numpy, not the training stack."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from typer.testing import CliRunner


def test_server_and_service_import_no_torch(case) -> None:  # type: ignore[no-untyped-def]
    code = textwrap.dedent(f"""
        import sys
        import upgrader.server, upgrader.serving.http.run, upgrader.serving.service
        from upgrader.serving.http.app import create_app
        from upgrader.serving.http.settings import ServerSettings
        from upgrader.services.workspace import open_workspace
        with open_workspace({str(case.home)!r}) as ws:  # production g4 with a stored calibration
            g4 = ws.registry.get_generation("g4")
            cal = {{"query_gen": g4.id, "maps": {{"1": {{"scale": 1.2, "shift": 0.1}}}}}}
            report = ws.registry.add_gate_report(g4.id, g4.onnx_sha256, True, "promote", {{}}, calibration=cal)
            ws.registry.move_alias(g4.id, actor="test", reason="test", gate_report_id=report.id)
        app = create_app({str(case.home)!r}, ServerSettings(poll_seconds=0))
        import numpy as np
        result = app.state.service.search(np.zeros((1, 28, 28, 1), np.uint8), 3)  # embed + calibrated search
        app.state.service.close()
        assert len(result.hits[0]) == 3 and result.calibration is not None
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, loaded
        print("torch-free")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)  # a bound for a hang
    assert out.returncode == 0, out.stderr
    assert "torch-free" in out.stdout


def test_serve_refuses_a_non_loopback_host_without_allow_remote(case) -> None:  # type: ignore[no-untyped-def]
    from upgrader.cli import app

    res = CliRunner().invoke(app, ["serve", "--home", str(case.home), "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert "not a loopback address" in res.stderr and "--allow-remote" in res.stderr
