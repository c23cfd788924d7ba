"""Names relative to a site, and access-rule patterns: which names a client may call. Deny by default.

Used by both sides of the gateway (the client verbs, pub/sub delivery, gather), so it lives on the ground floor.

A pattern is a name relative to the site, written like a path: `kitchen/*/temperature`, `/kitchen/**`, `**`.
Components are separated by `/` (a leading `/` is optional); `*` matches exactly one component and `**` matches
any number of components, zero included (so `kitchen/**` also grants `kitchen` itself). Every other component
matches only itself, compared as text with the name's components as they are written in URIs. A component that
mixes `*` with other characters (`temp*`, `***`) is refused rather than guessed at: partial-component globbing
would make it too easy to grant more than intended.

Matching is the classic two-pointer glob walk with one backtrack point (the last `**` seen), which is O(len(pattern)
* len(name)) in the worst case and never exponential however many `**` a pattern holds. Rejected: translating
patterns to regular expressions (backtracking blow-up on many `**`, and escaping pitfalls).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from ndn_edge.wire.protocol import DEFAULT_SITE  # noqa: F401  (names live under it)

ONE = "*"
ANY = "**"

Rules = Sequence[Sequence[str]]


def relative(name: str, site: str) -> tuple[str, ...]:
    """The components of a device name under `site`: `/edge/kitchen/th1` -> ("kitchen", "th1")."""
    parts = tuple(p for p in str(name).split("/") if p)
    return parts[1:] if parts[:1] == (site,) else parts


def full(site: str, parts: Sequence[str]) -> str:
    """The URI of components under `site`: ("kitchen", "th1") -> `/edge/kitchen/th1`."""
    return "/" + "/".join((site, *parts))


def parse_pattern(text: str) -> tuple[str, ...]:
    """The components of a pattern; ValueError naming the problem for empty or malformed patterns."""
    if not isinstance(text, str):
        raise ValueError(f"pattern must be text, not {type(text).__name__}")
    body = text[1:] if text.startswith("/") else text
    if body == "":
        raise ValueError(f"empty pattern {text!r}: write components such as 'kitchen/*/temperature' or '**'")
    parts = tuple(body.split("/"))
    for index, part in enumerate(parts, 1):
        if part == "":
            raise ValueError(f"pattern {text!r} has an empty component (number {index}); "
                             "separate components with a single '/'")
        if "*" in part and part not in (ONE, ANY):
            raise ValueError(f"pattern {text!r} has component {part!r} mixing '*' with other characters; "
                             "use '*' for one whole component or '**' for any number")
    return parts


def format_pattern(parts: Sequence[str]) -> str:
    """The canonical text of a parsed pattern (no leading `/`)."""
    return "/".join(parts)


def matches(pattern: Sequence[str], name: Sequence[str]) -> bool:
    """True if `name` (components relative to the site) matches `pattern`."""
    p = n = 0
    star_p = -1  # index of the last `**` seen in the pattern, -1 for none
    star_n = 0   # where in the name that `**` currently stops consuming
    plen, nlen = len(pattern), len(name)
    while n < nlen:
        if p < plen and pattern[p] == ANY:
            star_p, star_n = p, n
            p += 1
        elif p < plen and (pattern[p] == ONE or pattern[p] == name[n]):
            p += 1
            n += 1
        elif star_p >= 0:
            # Let the last `**` swallow one more component and retry what follows it.
            star_n += 1
            p, n = star_p + 1, star_n
        else:
            return False
    while p < plen and pattern[p] == ANY:
        p += 1
    return p == plen


def allowed(rules: Iterable[Sequence[str]], name: Sequence[str]) -> bool:
    """True if any rule matches `name`; no rules, no access."""
    return any(matches(rule, name) for rule in rules)


def reaches(pattern: Sequence[str], prefix: Sequence[str]) -> bool:
    """True if `pattern` matches `prefix` followed by at least one more component: a rule that lets its client
    call something on the device `prefix` (so the client may see the device listed, and its membership)."""
    for k in range(len(pattern) + 1):
        head = pattern[:k]
        if (k < len(pattern) or (k and head[-1] == ANY)) and matches(head, prefix):
            return True
    return False


def may_reach(rules: Iterable[Sequence[str]], prefix: Sequence[str]) -> bool:
    """True if any rule reaches below `prefix` (see `reaches`)."""
    return any(reaches(rule, prefix) for rule in rules)


def overlap(a: Sequence[str], b: Sequence[str]) -> bool:
    """True if some name matches both patterns (`sim/*/tick` and `sim/1/**` do; `sim/*` and `lab/**` do not).

    A walk over pairs of positions, remembered, so it is O(len(a) * len(b)) however many `**` there are."""
    seen: dict[tuple[int, int], bool] = {}

    def walk(i: int, j: int) -> bool:
        key = (i, j)
        if key in seen:
            return seen[key]
        seen[key] = False  # a cycle through (i, j) adds nothing
        if i == len(a) and j == len(b):
            result = True
        elif i < len(a) and a[i] == ANY:
            # `**` takes nothing, or takes one more of what `b` names (then stays)
            result = walk(i + 1, j) or (j < len(b) and walk(i, j + 1))
        elif j < len(b) and b[j] == ANY:
            result = walk(i, j + 1) or (i < len(a) and walk(i + 1, j))
        elif i < len(a) and j < len(b):
            result = (a[i] == ONE or b[j] == ONE or a[i] == b[j]) and walk(i + 1, j + 1)
        else:
            result = False
        seen[key] = result
        return result

    return walk(0, 0)
