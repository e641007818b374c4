"""Kill -9 a running stage at a chosen moment (the fault tests' shared helper)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


def kill_when_marked(
    command: Sequence[str], marker: Path, *, env: Mapping[str, str], what: str, timeout: float = 240
) -> None:
    """Run ``command``; as soon as ``marker`` exists (the command writes it at the moment to
    be interrupted), SIGKILL it. Fails the test with the command's stderr if it ends first,
    and with ``what`` ("the stage never …") if the marker has not appeared by ``timeout``."""
    proc = subprocess.Popen(
        list(command), env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            assert time.monotonic() < deadline, what
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()
