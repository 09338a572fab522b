"""``python -m branchy``: the ``branchy`` command, as the installed distribution declares it (its console-script
entry point), so this package names no layer above it."""
import sys
from importlib.metadata import entry_points


def main() -> int:
    eps = entry_points(group="console_scripts", name="branchy")
    if not eps:
        print("python -m branchy: the branchy command is not installed (its entry point is missing): install the "
              "project with `make test` or `pip install -e .`, or run `python -m analysis.cli`", file=sys.stderr)
        return 2
    return int(next(iter(eps)).load()() or 0)


if __name__ == "__main__":
    sys.exit(main())
