"""YAML for files users receive: ``yaml.SafeLoader`` (no Python objects) that also refuses a
mapping key given twice, where plain ``safe_load`` silently keeps the last (a second
``devices:`` entry of one name, a second row of one LUT key)."""

from __future__ import annotations

from typing import Any

import yaml


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings raise ConstructorError (with the line) on a duplicate key."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # << merges may be overridden by explicit keys; that is YAML
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: SafeLoader reports it below
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {str(key)[:100]!r} (first on line {first})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def load_unique(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys.  Raises yaml.YAMLError."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_error_line(exc: yaml.YAMLError) -> tuple[str, str]:
    """(``:LINE`` or '', the problem) of a YAML error, for one-line messages."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return (f":{mark.line + 1}" if mark is not None else ""), problem
