"""Whether a progress bar shows: asked for, and the toolkit's log not quietened (``branchy -q``)."""
from __future__ import annotations

import logging

__all__ = ["show_progress"]


def show_progress(progress: bool = True) -> bool:
    """``progress``, unless the ``branchy`` logger's own level is above INFO (``branchy -q`` sets WARNING: no
    progress log, bars included). A logger left unset (a library user, a notebook) shows the bars asked for."""
    return bool(progress) and not logging.getLogger("branchy").level > logging.INFO
