"""Access-rule patterns: parsing errors, the matching table, and no exponential blow-up."""
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ndn_edge.names import allowed, format_pattern, matches, parse_pattern


def name(text):
    return tuple(text.split("/")) if text else ()


@pytest.mark.parametrize("text, parts", [
    ("kitchen/th1/temperature", ("kitchen", "th1", "temperature")),
    ("/kitchen/th1", ("kitchen", "th1")),
    ("**", ("**",)),
    ("/*/temperature", ("*", "temperature")),
    ("a/**/b/*", ("a", "**", "b", "*")),
])
def test_parse_pattern_accepts(text, parts):
    assert parse_pattern(text) == parts
    assert format_pattern(parts) == text.lstrip("/")


@pytest.mark.parametrize("text, fragment", [
    ("", "empty pattern"),
    ("/", "empty pattern"),
    ("a//b", "empty component (number 2)"),
    ("kitchen/", "empty component (number 2)"),
    ("//a", "empty component (number 1)"),
    ("temp*", "mixing '*'"),
    ("a/***/b", "mixing '*'"),
    ("a/*b", "mixing '*'"),
])
def test_parse_pattern_rejects_with_clear_message(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_pattern(text)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_pattern_rejects_non_text():
    with pytest.raises(ValueError, match="must be text"):
        parse_pattern(None)


@pytest.mark.parametrize("pattern, target, expected", [
    # literals
    ("kitchen/th1/temperature", "kitchen/th1/temperature", True),
    ("kitchen/th1/temperature", "kitchen/th1/humidity", False),
    ("kitchen/th1", "kitchen/th1/temperature", False),
    ("kitchen/th1/temperature", "kitchen/th1", False),
    # `*` is exactly one component
    ("kitchen/*/temperature", "kitchen/th1/temperature", True),
    ("kitchen/*/temperature", "kitchen/temperature", False),
    ("kitchen/*/temperature", "kitchen/a/b/temperature", False),
    ("*", "kitchen", True),
    ("*", "", False),
    ("*/*", "a/b", True),
    ("*/*", "a/b/c", False),
    # `**` at the end: zero or more
    ("kitchen/**", "kitchen", True),
    ("kitchen/**", "kitchen/th1", True),
    ("kitchen/**", "kitchen/th1/temperature", True),
    ("kitchen/**", "garage/th1", False),
    # `**` at the start
    ("**/temperature", "temperature", True),
    ("**/temperature", "kitchen/th1/temperature", True),
    ("**/temperature", "kitchen/th1/humidity", False),
    ("**/temperature", "temperature/x", False),
    # `**` in the middle
    ("kitchen/**/temperature", "kitchen/temperature", True),
    ("kitchen/**/temperature", "kitchen/a/b/c/temperature", True),
    ("kitchen/**/temperature", "kitchen/a/temperature/x", False),
    ("kitchen/**/temperature", "garage/a/temperature", False),
    ("a/**/b/**/c", "a/b/c", True),
    ("a/**/b/**/c", "a/x/b/y/z/c", True),
    ("a/**/b/**/c", "a/x/c/y/b", False),
    ("a/**/b", "a/b/b/b", True),
    ("a/**/b/*", "a/b/x/b/y", True),
    # `**` alone, zero components
    ("**", "", True),
    ("**", "a/b/c", True),
    ("**/**", "", True),
    ("*/**", "", False),
    ("*/**", "a", True),
])
def test_matches(pattern, target, expected):
    assert matches(parse_pattern(pattern), name(target)) is expected


def test_star_in_a_name_is_plain_text():
    assert matches(("*",), ("*",))
    assert not matches(("a",), ("*",))


def reference_matches(pattern, target):
    """Obviously correct (and exponential) recursive definition, for small inputs."""
    if not pattern:
        return not target
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(reference_matches(rest, target[i:]) for i in range(len(target) + 1))
    if not target:
        return False
    return (head == "*" or head == target[0]) and reference_matches(rest, target[1:])


@given(st.lists(st.sampled_from(["a", "b", "*", "**"]), min_size=1, max_size=7),
       st.lists(st.sampled_from(["a", "b", "c"]), max_size=8))
def test_matches_agrees_with_the_recursive_definition(pattern, target):
    assert matches(tuple(pattern), tuple(target)) == reference_matches(tuple(pattern), tuple(target))


def test_many_double_stars_do_not_blow_up():
    pattern = ("**",) * 20 + ("nomatch",)
    target = tuple(f"c{i}" for i in range(30))
    started = time.perf_counter()
    assert matches(pattern, target) is False
    assert matches((*pattern[:-1], "c29"), target) is True
    assert matches(tuple(x for pair in zip(("**",) * 20, ("c5",) * 20) for x in pair), target) is False
    assert time.perf_counter() - started < 0.5


def test_allowed_is_deny_by_default():
    target = name("kitchen/th1/temperature")
    assert allowed([], target) is False
    assert allowed([parse_pattern("garage/**")], target) is False
    assert allowed([parse_pattern("garage/**"), parse_pattern("kitchen/*/temperature")], target) is True
    assert allowed(iter([parse_pattern("**")]), target) is True


@pytest.mark.parametrize("a, b, expected", [
    ("sim/*/tick", "sim/1/**", True), ("sim/*", "lab/**", False), ("**", "x", True), ("a/**/c", "a/b/*/c", True),
    ("a/**/c", "a/b", False), ("*/*", "**", True), ("*", "a/b", False), ("a/**", "**/b", True),
    ("sim/1/echo", "sim/1/tick", False), ("**/tick", "sim/**", True), ("a/*/b/**", "a/x/c/**", False),
])
def test_two_patterns_overlap_when_some_name_matches_both(a, b, expected):
    from ndn_edge.names import overlap

    pa, pb = parse_pattern(a), parse_pattern(b)
    assert overlap(pa, pb) is expected and overlap(pb, pa) is expected


_TOKENS = st.sampled_from(["x", "y", "*", "**"])


@given(st.lists(_TOKENS, min_size=1, max_size=3), st.lists(_TOKENS, min_size=1, max_size=3))
def test_overlap_agrees_with_a_search_over_short_names(a, b):
    import itertools

    from ndn_edge.names import overlap

    witness = any(matches(a, name) and matches(b, name)
                  for n in range(7) for name in itertools.product("xyz", repeat=n))
    assert overlap(a, b) is witness
