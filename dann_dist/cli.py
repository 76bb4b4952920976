"""Exit-status conventions and the --help of the command-line entry points."""

from __future__ import annotations

import os
import sys
import textwrap

from absl import flags

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NONFINITE = 0, 1, 2, 3

SHORT_HELP = ("-h", "--help", "-help", "--helpshort", "-helpshort", "-?")
FULL_HELP = ("--helpfull", "-helpfull")
PACKAGE = "dann_dist"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def parse_flags_or_exit(argv: list[str], doc: str | None = None) -> list[str]:
    """absl's default parser exits 1 on a bad flag; schedulers and users expect 2.

    --help/-h print the command's own flags and --helpfull every flag (absl's too), both
    with exit 0: absl's own help exits 1, knows no -h, and lists only the flags defined
    in the __main__ file, which for `python -m dann_dist.train` is none of them.
    `doc` is the usage text printed first (default: the __main__ module's docstring)."""
    wanted = help_requested(argv)
    if wanted:
        print(help_text(full=wanted == "full", doc=doc), end="", flush=True)
        sys.exit(EXIT_OK)
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"error: {err}\nRun with --help for the list of flags.", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def help_requested(argv: list[str]) -> str:
    """'full', 'short' or ''. What follows `--` belongs to another program (the
    report's trainer flags), so a --help there is not ours."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg in FULL_HELP:
            return "full"
        if arg in SHORT_HELP:
            return "short"
    return ""


def help_text(full: bool = False, doc: str | None = None,
              flag_values: flags.FlagValues = flags.FLAGS) -> str:
    if doc is None:
        doc = getattr(sys.modules.get("__main__"), "__doc__", None) or ""
    parts = [doc.strip() + "\n\n"] if doc.strip() else []
    if full:
        parts.append("All flags, absl's included:\n\n" + flag_values.get_help() + "\n")
        return "".join(parts)
    parts.append("Flags of this command (--helpfull: all flags, absl's logging flags too;\n"
                 "--flagfile=FILE reads flags from FILE, one per line):\n")
    seen = set()
    for module, module_flags in _own_flags(flag_values):
        fresh = [f for f in module_flags if id(f) not in seen]
        seen.update(id(f) for f in fresh)
        if fresh:
            parts.append(f"\n{module}:\n")
            parts.extend(_describe(f) for f in sorted(fresh, key=lambda f: f.name))
    return "".join(parts)


def _own_flags(flag_values: flags.FlagValues) -> list[tuple[str, list]]:
    """(module name, flags) for the script's own module first, then the package's
    modules; absl's own flags (logging, flagfile) are left to --helpfull."""
    main_file = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    found = []
    for module, module_flags in flag_values.flags_by_module_dict().items():
        name = _module_name(module)
        if name.startswith(PACKAGE + ".") or (main_file and _same_file(module, main_file)):
            found.append((not _same_file(module, main_file), name, module_flags))
    return [(name, module_flags) for _, name, module_flags in sorted(found, key=lambda t: t[:2])]


def _same_file(module: str, main_file: str) -> bool:
    return os.path.isabs(module) and os.path.abspath(module) == main_file


def _module_name(module: str) -> str:
    """absl names the __main__ module by its file path: show the dotted name instead."""
    if not os.path.isabs(module):
        return module
    path = os.path.abspath(module)
    if path.startswith(_PACKAGE_DIR + os.sep) and path.endswith(".py"):
        relative = os.path.relpath(path[:-3], os.path.dirname(_PACKAGE_DIR))
        return relative.replace(os.sep, ".").removesuffix(".__main__")
    return os.path.basename(path)


def _describe(flag) -> str:
    name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
    if flag.short_name:
        name += f" (-{flag.short_name})"
    lines = textwrap.wrap(f"{name}: {flag.help or ''}", width=98, initial_indent="  ",
                          subsequent_indent="    ")
    notes = [f"default: {flag.default_as_str}" if flag.default is not None else "no default"]
    syntax = getattr(flag.parser, "syntactic_help", "")
    if syntax:
        notes.append(syntax)
    lines.extend(textwrap.wrap(f"({'; '.join(notes)})", width=98, initial_indent="    ",
                               subsequent_indent="    "))
    return "\n".join(lines) + "\n"


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)
