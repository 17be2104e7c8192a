"""Session ids: what every layer accepts as one. Safe as file names, object keys and label values."""

from __future__ import annotations

import re

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_valid_session_id(session_id: str) -> bool:
    """Ids are safe as file names and object keys: no path characters, bounded length."""
    return bool(SESSION_ID_PATTERN.fullmatch(session_id))
