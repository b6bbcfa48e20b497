"""docs/CLI.md, written from the parsers themselves so it cannot drift from them:
`python -m fsanet.cli.reference > docs/CLI.md` (a test compares the two)."""

from __future__ import annotations

import argparse

from fsanet.cli.main import VERBS, parser

_HEADER = """# The `fsanet` command line

Every flag of every command, with its default. Generated from the parsers
(`python -m fsanet.cli.reference > docs/CLI.md`; a test checks it is current). Every command
also takes `--mirror DIR` (searched before downloading; also `$FSANET_MIRROR`), `--json` (one
JSON object on stdout) and `-q` (no progress bars). Errors are one line and exit 1; a bad
option is a usage error, exit 2.
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _flag(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(action.option_strings)
    if action.nargs == 0:
        return f"`{names}`"
    metavar = action.metavar or (
        "{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper()
    )
    return f"`{names} {metavar}`"


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, (), []):
        return ""
    return f"`{action.default}`"


def _verb(name: str, sub: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `fsanet {name}`", "", f"{sub.description}.", "", "| argument | default | |"]
    lines.append("|---|---|---|")
    common = {"-h", "--mirror", "--json", "-q"}
    for action in sub._actions:
        if action.help == argparse.SUPPRESS or common & set(action.option_strings):
            continue
        help_text = (action.help or "").replace("%(default)s", str(action.default))
        lines.append(f"| {_flag(action)} | {_default(action)} | {_cell(help_text)} |")
    return [*lines, ""]


def render() -> str:
    top = parser()
    subs = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = [_HEADER]
    for name in VERBS:
        out += _verb(name, subs.choices[name])
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
