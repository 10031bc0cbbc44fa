"""The variable table of each role's README, rendered from the role's meta/argument_specs.yml.

`python tests/release/role_docs.py --write` refreshes the tables between the markers of roles/*/README.md;
tests/release/test_release.py fails while a README's table differs from the argument specs (a variable added,
retyped or given another default without its README).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEGIN = "<!-- variables: begin (rendered from meta/argument_specs.yml by tests/release/role_docs.py --write) -->"
END = "<!-- variables: end -->"
_MARKUP = re.compile(r"\b[OVCM]\(([^)]*)\)")


def roles() -> list[str]:
    base = os.path.join(REPO_ROOT, "roles")
    return sorted(name for name in os.listdir(base) if os.path.isfile(os.path.join(base, name, "meta", "argument_specs.yml")))


def load_specs(role: str) -> dict:
    with open(os.path.join(REPO_ROOT, "roles", role, "meta", "argument_specs.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["argument_specs"]


def _markdown(text: str) -> str:
    return _MARKUP.sub(r"`\1`", " ".join(text.split())).replace("|", "\\|")


def type_cell(option: dict) -> str:
    kind = option.get("type", "str")
    return f"list of {option.get('elements', 'str')}" if kind == "list" else kind


def default_cell(option: dict) -> str:
    if option.get("required"):
        return "required"
    value = option.get("default")
    if value is None:
        return "none"
    if value == "":
        return '`""`'
    if isinstance(value, str):
        return f"`{value}`"
    return "`" + yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip() + "`"


def _meaning(option: dict) -> str:
    description = option.get("description", "")
    parts = description if isinstance(description, list) else [description]
    text = _markdown(" ".join(parts))
    if "choices" in option:
        text += " Choices: " + ", ".join(f"`{choice}`" for choice in option["choices"]) + "."
    return text


def render_table(role: str) -> str:
    """Every variable of every entry point once: type, default, the entry points that take it, what it means."""
    rows: dict[str, tuple[dict, list[str]]] = {}
    for entry_point, spec in load_specs(role).items():
        for name, option in (spec.get("options") or {}).items():
            rows.setdefault(name, (option, []))[1].append(entry_point)
    lines = ["| variable | type | default | entry points | meaning |", "| --- | --- | --- | --- | --- |"]
    for name, (option, entry_points) in rows.items():
        lines.append(f"| `{name}` | {type_cell(option)} | {default_cell(option)} | {', '.join(entry_points)} | {_meaning(option)} |")
    return "\n".join(lines)


def readme_path(role: str) -> str:
    return os.path.join(REPO_ROOT, "roles", role, "README.md")


def table_in_readme(text: str) -> str | None:
    """The text between the markers, or None when the README has no marked table."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write_table(role: str) -> bool:
    """Replace the marked table of the role's README; True when the file changed."""
    path = readme_path(role)
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    if table_in_readme(text) is None:
        raise SystemExit(f"{path}: no {BEGIN!r} ... {END!r} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    new = f"{head}{BEGIN}\n{render_table(role)}\n{END}{tail}"
    if new == text:
        return False
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(new)
    os.replace(tmp, path)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the tables in roles/*/README.md")
    parser.add_argument("role", nargs="*", help="roles (default: all)")
    args = parser.parse_args(argv)
    for role in args.role or roles():
        if args.write:
            print(f"{readme_path(role)}: {'updated' if write_table(role) else 'up to date'}")
        else:
            print(f"## {role}\n{render_table(role)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
