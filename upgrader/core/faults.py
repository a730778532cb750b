"""Named fault points, so a test can kill a command at the moment that would hurt most.

A command calls :func:`fault_point` at each place where dying would leave the most behind (after a
file is written but before the registry knows it, between gallery batches, ...). Normally the call
is one dictionary lookup and does nothing. With ``UPGRADER_FAULT_AT=NAME`` in the environment the
process sends itself SIGKILL at the point of that name: no ``finally`` block, no ``atexit`` and no
database rollback handler runs, exactly as when the machine loses power or the OOM killer strikes.
The fault-injection tests use it to prove that every read command still works afterwards and that
re-running the command completes.
"""

from __future__ import annotations

import os
import signal

#: The environment variable naming the fault point at which to die.
FAULT_ENV = "UPGRADER_FAULT_AT"


def fault_point(name: str) -> None:
    """Die by SIGKILL here if ``UPGRADER_FAULT_AT`` names this point; otherwise do nothing."""
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
