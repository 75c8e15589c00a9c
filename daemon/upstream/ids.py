"""Ids a client sends that end up in an upstream URL's path (job ids, model ids): checked before use.

aiohttp decodes `%2e%2e` to `..` in a route's match, and an URL library normalises dot segments
away, so `GET /v1/fine-tune/%2e%2e` would otherwise reach `GET /v1/` upstream, with the key.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from ..errors import CompanionError


class InvalidPathId(ValueError):
    pass


def check_path_id(value: Any, *, slashes: bool = False) -> str:
    """`value` if it is safe as one path segment (or, with `slashes`, several); else InvalidPathId."""
    if not isinstance(value, str) or not value:
        raise InvalidPathId("must be a non-empty string")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise InvalidPathId("must not contain control characters")
    if "\\" in value or "?" in value or "#" in value or "%" in value:
        raise InvalidPathId("must not contain '\\', '?', '#' or '%'")
    if "/" in value and not slashes:
        raise InvalidPathId("must not contain '/'")
    if any(segment in ("", ".", "..") for segment in value.split("/")):
        raise InvalidPathId("must not contain '.', '..' or empty segments")
    return value


def path_id(value: str, field: str, *, slashes: bool = False) -> str:
    """`value` checked and quoted for an upstream path; a 400 naming `field` when it is unsafe."""
    try:
        check_path_id(value, slashes=slashes)
    except InvalidPathId as exc:
        raise CompanionError(400, f"{field} {exc}", f"invalid_{field.replace(' ', '_')}",
                             {"field": field}) from None
    return urllib.parse.quote(value, safe="/:@" if slashes else ":@")
