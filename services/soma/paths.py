"""Where soma keeps its own files by default, without importing anything: the client uses it too."""

from __future__ import annotations

import os
from pathlib import Path


def default_state_dir() -> Path:
    """soma's own data folder by the XDG base-directory spec: $XDG_STATE_HOME/soma, else
    ~/.local/state/soma (a relative XDG_STATE_HOME is invalid by the spec and ignored)."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".local" / "state"
    return root / "soma"
