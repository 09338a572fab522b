"""Fault injection for kill tests: with ``BRANCHY_KILL_AT=NAME`` in the environment, a process that reaches the
point ``NAME`` kills itself with SIGKILL there (no cleanup runs, as with a power cut or an OOM kill). Points:

* ``reprofile:new-written``: the new cost table is written as ``NAME.new``, the manifest not yet replaced;
* ``reprofile:manifest-replaced``: the manifest names the new table, ``NAME.new`` not yet renamed;
* ``predictors:files-written``: every predictor file is in place, the index not yet written.

Unset (always, outside tests) it costs one dictionary lookup."""
from __future__ import annotations

import os
import signal

ENV = "BRANCHY_KILL_AT"


def point(name: str) -> None:
    """Kill this process here when ``BRANCHY_KILL_AT`` names this point."""
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ENV", "point"]
