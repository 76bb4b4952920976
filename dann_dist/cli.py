"""Exit-status conventions shared by the command-line entry points."""

from __future__ import annotations

import sys

from absl import flags

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NONFINITE = 0, 1, 2, 3


def parse_flags_or_exit(argv: list[str]) -> list[str]:
    """absl's default parser exits 1 on a bad flag; schedulers and users expect 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}\nRun with --help for the list of flags.", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
