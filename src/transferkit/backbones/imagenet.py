"""ImageNet-1k class names (from timm's bundled synset list; no download)."""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from transferkit.core.errors import UnknownNameError


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class descriptions in index order ("tench, Tinca tinca", ...)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(info.num_classes()))


def short_name(description: str) -> str:
    """First synonym of a description: "tabby, tabby cat" -> "tabby"."""
    return description.split(",")[0].strip()


def find_imagenet_classes(query: str | int) -> list[int]:
    """ImageNet indices matching ``query``: an index, an exact synonym, or a forgiving word match.

    "tabby cat" -> [281]; "cat" -> every class with "cat" as a word (tabby, tiger cat, Persian cat,
    ...). Returns an empty list when nothing matches.
    """
    names = imagenet_class_names()
    if isinstance(query, int) or (isinstance(query, str) and query.strip().isdigit()):
        idx = int(query)
        return [idx] if 0 <= idx < len(names) else []
    q = query.strip().lower()
    exact = [i for i, d in enumerate(names) if q in [s.strip().lower() for s in d.split(",")]]
    if exact:
        return exact
    word = re.compile(rf"\b{re.escape(q)}\b")
    return [i for i, d in enumerate(names) if word.search(d.lower())]


def resolve_imagenet_class(query: str | int) -> int:
    """The single ImageNet index for ``query``; raises listing the choices when it is ambiguous."""
    found = find_imagenet_classes(query)
    if len(found) == 1:
        return found[0]
    names = imagenet_class_names()
    if not found:
        close = difflib.get_close_matches(str(query).lower(), [short_name(n).lower() for n in names], n=5, cutoff=0.6)
        hint = f" Close: {', '.join(close)}." if close else ""
        raise UnknownNameError(f"no ImageNet class matches {query!r}.{hint} Use a class name or an index 0-999.")
    choices = "; ".join(f"{i} {short_name(names[i])}" for i in found[:12])
    more = f" (and {len(found) - 12} more)" if len(found) > 12 else ""
    raise UnknownNameError(f"{query!r} matches {len(found)} ImageNet classes: {choices}{more}. Pick one by name or index.")
