"""The ``branchy`` console script's frame: the command registry, argument types, the registry listings, the
parser and :func:`main` (one-line errors). Each step's commands live in their own module of this package."""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable, NoReturn, Sequence

from branchy.core import SetupError, UnknownNameError

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}



def command(name: str, help: str):
    """Register ``(add_arguments, run)`` for a subcommand."""

    def deco(fn_pair):
        COMMANDS[name] = fn_pair + (help,)
        return fn_pair

    return deco


def number_type(kind=float, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            what: str = ""):
    """An argparse ``type``: a finite ``kind`` (int or float) in [lo, hi] (``lo_open``: lo excluded); a bad value
    is a one-line usage error naming the range."""
    def parse(s: str):
        try:
            v = kind(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) or \
            (hi is not None and v > hi)
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo:g}"
            hi_s = "" if hi is None else f"<= {hi:g}"
            rng = " and ".join(x for x in (lo_s, hi_s) if x) or "finite"
            raise argparse.ArgumentTypeError(f"{s} is out of range: must be {rng}{what}")
        return v
    parse.__name__ = "integer" if kind is int else "number"
    return parse


POS_INT = number_type(int, 1)
POS = number_type(float, 0, lo_open=True)


def float_list(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a list of numbers (e.g. 0.5,0.3)") from None
    if any(math.isnan(x) for x in v):
        raise argparse.ArgumentTypeError(f"{s!r} holds NaN")
    return v


# ----------------------------------------------------------------------------- listings
def _no_args(p):
    pass


def _lister(get_registry):
    """A ``run`` that prints ``name  description`` for every entry of a registry."""

    def run(a) -> int:
        for name, doc in get_registry().describe().items():
            print(f"{name:16s} {doc}")
        return 0

    return run


def backend_names() -> list[str]:
    from branchy.runtime import list_backends

    return list_backends()


def _backbones():
    from branchy.models import BACKBONES

    return BACKBONES


def _datasets():
    from branchy.data import DATASETS

    return DATASETS


def _strategies():
    from placement import STRATEGIES

    return STRATEGIES


command("models", "list the registered backbones")((_no_args, _lister(_backbones)))
command("datasets", "list the registered datasets")((_no_args, _lister(_datasets)))
command("strategies", "list the placement strategies")((_no_args, _lister(_strategies)))


def _profiles_run(a) -> int:
    from ..core.costs import PROFILES

    for name in PROFILES.names():
        p = PROFILES.get(name)
        figs = "" if p.measured else (f"  [{p.macs_per_s:.3g} MAC/s, {p.bytes_per_s:.3g} B/s, "
                                      f"{p.overhead_ms} ms/segment]")
        print(f"{name:15s} {p.description}{figs}")
    return 0


command("profiles", "list the registered device profiles")((_no_args, _profiles_run))


# ----------------------------------------------------------------------------- entry
class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``branchy COMMAND: error: ...; see branchy COMMAND --help`` (exit 2),
    not the whole usage block first. Subcommand parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def version() -> str:
    """``branchy-study X.Y.Z``: the installed distribution's version (the package's own when not installed)."""
    from importlib.metadata import PackageNotFoundError, version as dist_version

    try:
        return f"branchy-study {dist_version('branchy-study')}"
    except PackageNotFoundError:
        from branchy import __version__

        return f"branchy-study {__version__} (not installed)"


def build_parser(only: str | None = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The ``branchy`` parser. Every command is listed; the options of ``only`` (or of every command when
    ``full`` and ``only`` is None) are built, since building a command's options imports what it configures
    (torch for ``train``): ``main`` builds only the command it runs, so ``--help`` and errors come at once."""
    parser = _Parser(prog="branchy", description="Early-exit networks, exit predictors and their "
                                     "placement: cache features once, fit predictors, search placements, simulate.")
    parser.add_argument("--version", action="version", version=version())
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error (anywhere on the "
                        "command line)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors, no progress log "
                        "(anywhere on the command line)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also the debug log (anywhere on the command "
                        "line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (add, _run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == only or (only is None and full):
            add(p)
    return parser


def deprecated(action: argparse.Action, *old: str) -> argparse.Action:
    """Mark ``old`` option strings of ``action`` as deprecated aliases: they work, and the command says the new
    name once on stderr."""
    action.deprecated_flags = old
    return action


def percent(parser: argparse.ArgumentParser, flag: str, *, one_is_fraction: bool = True) -> argparse.Action:
    """Mark the option ``flag`` of ``parser`` as a value in percent (an accuracy or a rate): a fraction given the old
    way (``--target-acc 0.99``) is read times 100 and the command says so once on stderr, until 0.4.
    ``one_is_fraction``: 1 is read as 100 % (an accuracy target; else 1 is 1 %, as for a rate)."""
    action = next(a for a in parser._actions if flag in a.option_strings)
    action.percent_one_is_fraction = one_is_fraction
    return action


def _note_fractions(parser: argparse.ArgumentParser, command: str, ns: argparse.Namespace) -> None:
    """Options in percent given as a fraction (see :func:`percent`): read times 100, one line on stderr each:
    ``--target-acc 0.99 read as a fraction (99 %); give percent: 99``."""
    from ..core.units import UNTIL, as_percent, fraction_note, is_fraction

    sub = parser._subparsers._group_actions[0].choices.get(command) if parser._subparsers else None
    for action in sub._actions if sub is not None else ():
        one = getattr(action, "percent_one_is_fraction", None)
        v = getattr(ns, action.dest, None)
        if one is None or not is_fraction(v, one_is_fraction=one):
            continue
        setattr(ns, action.dest, as_percent(v))
        print(f"branchy {command}: note: {fraction_note(action.option_strings[0], v)} (a fraction is read until "
              f"{UNTIL})", file=sys.stderr)


def _note_renamed(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> None:
    """One line on stderr per deprecated option name ``argv`` uses: ``--model is now --backbone``."""
    sub = parser._subparsers._group_actions[0].choices.get(command) if parser._subparsers else None
    if sub is None:
        return
    used = {t.split("=", 1)[0] for t in argv if t.startswith("--")}
    for action in sub._actions:
        for old in getattr(action, "deprecated_flags", ()):
            if old in used:
                print(f"branchy {command}: note: {old} is now {action.option_strings[0]} (the old name works until "
                      f"0.4)", file=sys.stderr)


def _setup_output(*, quiet: bool, verbose: bool, debug: bool) -> Callable[[], None]:
    """The command's log: the ``branchy`` logger on stderr at INFO (WARNING with ``-q``, DEBUG with ``-v``);
    warnings as one line ``branchy: warning: ...`` (with their source line only under ``--debug``). Returns what
    puts the previous settings back (``main`` calls it when the command ends)."""
    import logging
    import warnings

    from ..core.logs import log_to_stderr

    top = logging.getLogger("branchy")
    before = (top.level, warnings.formatwarning)
    log_to_stderr(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    if not debug:
        warnings.formatwarning = lambda message, category, *a, **k: f"branchy: warning: {message}\n"

    def restore() -> None:
        top.setLevel(before[0])
        warnings.formatwarning = before[1]

    return restore


def _command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (global options take no value)."""
    return next((t for t in argv if not t.startswith("-")), None)


EXPECTED_ERRORS = (UnknownNameError, ValueError, OSError, SetupError)  # OSError: missing, unwritable, full


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """The ``branchy`` command. Expected errors (bad input, missing or stale files, unknown names) print one
    line and exit 2; Ctrl-C prints one line and exits 130; anything else prints one line that says it is a
    bug and exits 1. ``--debug`` shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    quiet, verbose = any(v in ("-q", "--quiet") for v in argv), any(v in ("-v", "--verbose") for v in argv)
    argv = [v for v in argv if v not in ("--debug", "-q", "--quiet", "-v", "--verbose")]
    restore = _setup_output(quiet=quiet, verbose=verbose, debug=debug)
    try:
        return _run(argv, debug)
    finally:
        restore()


def _run(argv: list[str], debug: bool) -> int:
    """Parse ``argv`` (building only the named command's options) and run the command, errors in one line."""
    parser = build_parser(only=_command_of(argv), full=False)
    a = parser.parse_args(argv)
    if not a.command:
        parser.print_help()
        return 2
    _note_renamed(parser, a.command, argv)
    _note_fractions(parser, a.command, a)
    try:
        return int(COMMANDS[a.command][1](a) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"branchy {a.command}: interrupted (nothing half-written is left as complete)", file=sys.stderr)
        return 130
    except EXPECTED_ERRORS as e:
        if debug:
            raise
        print(f"branchy {a.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback with --debug
        if debug:
            raise
        print(f"branchy {a.command}: internal error ({type(e).__name__}: {_one_line(e)}); this is a bug: rerun with "
              f"--debug for the traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def run_or_steps(a) -> None:
    """``--run DIR`` or the step-by-step outputs (``--checkpoint``, ``--cache``, ``--predictors``, ``--placement``,
    ``--thresholds``), never both (``validate``, ``export``)."""
    steps = [o for o, v in (("--checkpoint", a.checkpoint), ("--cache", a.cache), ("--predictors", a.predictors),
                            ("--placement", a.placement), ("--thresholds", a.thresholds)) if v]
    if a.run and steps:
        raise ValueError(f"give --run DIR or the step-by-step outputs ({', '.join(steps)}), not both")


__all__ = ["COMMANDS", "EXPECTED_ERRORS", "POS", "POS_INT", "backend_names", "build_parser", "command", "deprecated",
           "float_list", "main", "number_type", "percent", "run_or_steps", "version"]
