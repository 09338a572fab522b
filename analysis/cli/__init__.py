"""The ``branchy`` command (argparse only): :mod:`.base` holds the frame and :func:`main`; :mod:`.prepare`,
:mod:`.decide`, :mod:`.study` and :mod:`.deploy` register the commands of each step."""
from . import prepare, decide, study, deploy  # noqa: F401, I001 - register their commands, in the order of the workflow
from .base import COMMANDS, EXPECTED_ERRORS, build_parser, command, main

__all__ = ["COMMANDS", "EXPECTED_ERRORS", "build_parser", "command", "main"]
