"""Where a running `postwarden up` keeps its broker, for operator commands run beside it.

`postwarden up` starts its own broker and hands its address to its children
only; an operator typing `postwarden queue` in another shell should not have
to look it up. The marker names the supervisor's PID, so a marker left by a
killed supervisor is ignored instead of pointing at a dead broker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MARKER = "up.json"


def publish(data_dir: Path, bootstrap: str) -> None:
    tmp = data_dir / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "bootstrap": bootstrap}))
    tmp.replace(data_dir / MARKER)


def withdraw(data_dir: Path) -> None:
    (data_dir / MARKER).unlink(missing_ok=True)


def running_bootstrap(data_dir: Path) -> str | None:
    """The broker of the `up` running on this data directory, or None."""
    try:
        marker = json.loads((data_dir / MARKER).read_text())
        pid, bootstrap = int(marker["pid"]), str(marker["bootstrap"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return bootstrap
