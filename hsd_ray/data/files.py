"""Files the loop keeps across restarts (version history, served weights, learner control state)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` a sibling temp file, then rename it onto `path` (parents created): a reader, or an actor
    restarted mid-write, sees the old file or the new one, never half of one. Errors are the caller's to handle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    write(tmp)
    os.replace(tmp, path)
