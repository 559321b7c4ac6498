"""The stores' `?` and `:name` placeholders turned into PostgreSQL's numbered `$1, $2, ...`.

Text inside quotes ('...' strings, "..." identifiers) and `--` comments is copied as it is; `::`
(a PostgreSQL cast) is not a placeholder. A name used twice gets one number, bound once.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

from state.database import Params

_TOKEN = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|::|\?|(?<![:\w]):([A-Za-z_]\w*)""",
)


def numbered(sql: str, params: Params) -> tuple[str, list[Any]]:
    """`sql` with numbered placeholders and the arguments in their order."""
    named = params if isinstance(params, Mapping) else None
    positional = iter(()) if named is not None else iter(params)
    arguments: list[Any] = []
    numbers: dict[str, int] = {}

    def replace(match: re.Match[str]) -> str:
        token = match[0]
        if token == "?":
            if named is not None:
                raise ValueError("a `?` placeholder needs a sequence of parameters, not a mapping")
            try:
                arguments.append(next(positional))
            except StopIteration:
                raise ValueError(f"too few parameters for: {sql}") from None
            return f"${len(arguments)}"
        name = match[1]
        if name is None:
            return token  # a quoted string, an identifier, a comment or a cast
        if named is None:
            raise ValueError(f"`:{name}` needs a mapping of parameters")
        if name not in numbers:
            arguments.append(named[name])
            numbers[name] = len(arguments)
        return f"${numbers[name]}"

    translated = _TOKEN.sub(replace, sql)
    if named is None and next(positional, _END) is not _END:
        raise ValueError(f"too many parameters for: {sql}")
    return translated, arguments


_END = object()
