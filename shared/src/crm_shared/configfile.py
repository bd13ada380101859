"""YAML files that configure a service (loyalty's program, notify's rules), validated by a
pydantic model, with every mistake reported by its line.

A file is read once at start; a bad one stops the start with the file, the line and the reason
(`ConfigFileError`). Cross-item checks that pydantic cannot make item by item are the model
owner's `checks` function, whose findings point at the item's place in the file too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Loc = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)


class ConfigFileError(Exception):
    """A configuration file that cannot be used: where, and why."""

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        super().__init__(path, line, reason)
        self.path = path
        self.line = line
        self.reason = reason

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.reason}"


def read_text(path: Path, error: type[ConfigFileError] = ConfigFileError) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(path), None, f"cannot be read: {exc}") from None


def parse_yaml_model(
    text: str,
    name: str,
    model: type[M],
    *,
    checks: Callable[[M], list[tuple[Loc, str]]] | None = None,
    top: str = "a mapping",
    error: type[ConfigFileError] = ConfigFileError,
) -> M:
    """`text` (a YAML document called `name`) as a `model`; `error` names the first problem's
    line and lists every problem found, each with its own line."""
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        content = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise error(name, line, f"not valid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise error(name, None, f"not valid YAML: {exc}") from None
    twin = repeated_key(tree)
    if twin is not None:
        line, reason = twin
        raise error(name, line, reason)
    if not isinstance(content, dict):
        raise error(name, 1, f"the file is {top}")
    try:
        parsed = model.model_validate(content)
        problems = checks(parsed) if checks is not None else []
    except ValidationError as exc:
        problems = [(tuple(e["loc"]), e["msg"].removeprefix("Value error, ")) for e in exc.errors()]
    if problems:
        lines = [line_of(tree, loc) for loc, _ in problems]
        reasons = [
            f"{'.'.join(str(part) for part in loc) or 'file'}: {msg}"
            + (f" (line {line})" if line is not None and n else "")
            for n, ((loc, msg), line) in enumerate(zip(problems, lines, strict=True))
        ]
        raise error(name, lines[0], "; ".join(reasons))
    return parsed


def repeated_key(node: yaml.Node | None) -> tuple[int, str] | None:
    """The first key written twice in one mapping, with its second line. YAML loaders keep the
    last one silently, so a second `web:` would replace the first's rates without a word."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if key.value in seen:
                    return line, (
                        f"{key.value!r} appears twice in one mapping (first on line "
                        f"{seen[key.value]}); write it once"
                    )
                seen[key.value] = line
            found = repeated_key(value)
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = repeated_key(item)
            if found is not None:
                return found
    return None


def line_of(node: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest node `loc` reaches in the composed YAML."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def twice(names: list[str]) -> list[int]:
    """Positions of names already seen earlier in the list."""
    return [i for i, name in enumerate(names) if name in names[:i]]
