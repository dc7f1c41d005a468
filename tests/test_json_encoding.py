"""store/_json.py: orjson where it is byte-identical to the standard library, the standard library elsewhere.

The reference is ``json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=...)`` encoded as
UTF-8 (what the cache wrote for its keys and payloads before orjson), and ``json.loads``. Property tests
compare the two over JSON-like values (lone surrogates, integers past 64 bits, every kind of float, keys that
are not strings) and over arbitrary bytes; a whole offline run, cold and warm, writes the same output file,
cache keys, cache payloads and quarantine entries with either encoder.
"""

from __future__ import annotations

import datetime
import enum
import hashlib
import json
import math
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service_ambitions.store import _json
from service_ambitions.store.cache import cache_key
from tests.conftest import SAMPLES, service, write_jsonl

Cli = Callable[..., Any]

# Characters of every kind, lone surrogates included (the standard library encodes them into a str that
# UTF-8 then refuses; orjson refuses them itself).
_CHARACTERS = st.one_of(
    st.characters(codec="utf-8"),
    st.characters(max_codepoint=0x7F),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
)
_TEXT = st.text(_CHARACTERS, max_size=12)
_EDGE_INTEGERS = [0, -1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**40, -(10**40)]
_INTEGERS = st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.sampled_from(_EDGE_INTEGERS))
_FLOATS = st.one_of(
    st.floats(),  # NaN, infinities, subnormals and -0.0 included
    st.floats(min_value=1e-12, max_value=1e-3),  # where orjson and repr part ways
    st.floats(min_value=1e15, max_value=1e17),  # where repr switches to an exponent
    st.builds(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0], st.integers(0, 2**64 - 1)),
)
_SCALARS = st.one_of(st.none(), st.booleans(), _INTEGERS, _FLOATS, _TEXT)
_KEYS = st.one_of(_TEXT, st.text(max_size=6), _INTEGERS, _FLOATS, st.booleans(), st.none())


def _values(keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        _SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=5),
            st.lists(children, max_size=3).map(tuple),
            st.dictionaries(keys, children, max_size=5),
        ),
        max_leaves=30,
    )


_JSON_VALUES = _values(st.text(_CHARACTERS, max_size=8))
_ANY_KEYS_VALUES = _values(_KEYS)


def _outcome(function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    """What a call gives: its result (as ``repr``, so 1 and 1.0, -0.0 and 0.0 differ) or its error."""
    try:
        return "value", repr(function(*args, **kwargs))
    except (TypeError, ValueError, RecursionError) as exc:
        return "error", f"{type(exc).__name__}: {exc}"


# encoding --------------------------------------------------------------------------------------------------


def _reference(value: Any, sort_keys: bool = False) -> bytes:
    """What the cache wrote before orjson, spelled out."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")


@given(_ANY_KEYS_VALUES, st.booleans())
@settings(max_examples=600, deadline=None)
def test_dumps_is_the_standard_library_byte_for_byte(value: Any, sort_keys: bool) -> None:
    expected = _outcome(_reference, value, sort_keys)
    assert _outcome(_json.dumps, value, sort_keys=sort_keys) == expected
    assert _outcome(_json.stdlib_dumps, value, sort_keys=sort_keys) == expected


@given(st.one_of(_FLOATS, st.lists(_FLOATS, max_size=4)))
@settings(max_examples=1500, deadline=None)
def test_every_float_given_to_orjson_comes_out_as_repr(value: Any) -> None:
    """The threshold behind the fast path: every float it lets through, orjson writes as ``repr`` does."""
    if _json._plain(value, 0):
        assert orjson.dumps(value) == _json.stdlib_dumps(value)
    assert _json.dumps(value) == _json.stdlib_dumps(value)


def test_floats_at_every_power_of_ten() -> None:
    """Seven neighbours of 1, 1.5 and 9.99... times every power of ten: where the formats switch."""
    checked = 0
    for exponent in range(-324, 309):
        power = float(f"1e{exponent}")
        for start in (power, power * 1.5, power * 9.999999999999999):
            value = start
            for _ in range(3):
                value = math.nextafter(value, math.inf)
            for _ in range(7):
                for number in (value, -value):
                    assert _json.dumps(number) == _json.stdlib_dumps(number), number
                    if _json._plain(number, 0):
                        assert orjson.dumps(number) == repr(number).encode(), number
                    checked += 1
                value = math.nextafter(value, -math.inf)
    assert checked > 20_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e-05, b"1e-05"),  # orjson: 0.00001
        (1e-07, b"1e-07"),  # orjson: 1e-7
        ([9.99e-05], b"[9.99e-05]"),
        (float("nan"), b"NaN"),  # orjson: null
        ({"x": [float("inf"), -math.inf]}, b'{"x":[Infinity,-Infinity]}'),
        (2**64, b"18446744073709551616"),  # orjson refuses integers past 64 bits
        (-(2**63) - 1, b"-9223372036854775809"),
        ({1: 2, None: 3, 1.5: 4, False: 5}, b'{"1":2,"null":3,"1.5":4,"false":5}'),  # orjson: str keys only
        ({"é": "ü", "\u2028": "😀"}, '{"é":"ü","\u2028":"😀"}'.encode()),
        ('\x00\x1f\x7f"\\/', b'"\\u0000\\u001f\x7f\\"\\\\/"'),
        ((1, [2, (3,)]), b"[1,[2,[3]]]"),
    ],
)
def test_where_orjson_differs_the_standard_library_writes(value: Any, expected: bytes) -> None:
    assert _json.dumps(value) == expected == _json.stdlib_dumps(value)


class _Colour(enum.Enum):
    RED = "red"


class _Text(str):
    pass


@dataclass
class _Point:
    x: int


@pytest.mark.parametrize(
    "value",
    [_Colour.RED, uuid.UUID(int=1), _Point(1), {"when": datetime.date(2024, 1, 2)}, {1, 2}],
)
def test_types_the_standard_library_refuses_stay_refused(value: Any) -> None:
    """orjson would write enums, UUIDs, dataclasses and dates; the cache never did, and still does not."""
    with pytest.raises(TypeError) as expected:
        _json.stdlib_dumps(value)
    with pytest.raises(TypeError) as got:
        _json.dumps(value)
    assert str(got.value) == str(expected.value)


def test_subclasses_and_deep_nesting_match() -> None:
    deep: Any = "leaf"
    for _ in range(300):  # past orjson's 254 levels and the walk's limit
        deep = [deep]
    for value in ({_Text("k"): _Text("v")}, [_Text("a")], deep, {"sorted": {"b": 1, "a": 2}}):
        for sort_keys in (False, True):
            assert _json.dumps(value, sort_keys=sort_keys) == _json.stdlib_dumps(value, sort_keys=sort_keys)
    circular: list[Any] = []
    circular.append(circular)
    assert _outcome(_json.dumps, circular) == _outcome(_json.stdlib_dumps, circular)
    assert _outcome(_json.dumps, {"a": "\ud800"}) == _outcome(_json.stdlib_dumps, {"a": "\ud800"})


def test_sorted_keys_follow_code_points() -> None:
    keys = ["b", "a", "B", "é", "z", "\u00ff", "\u0100", "😀", "\uffff", "aa", "", "A1", "a\x00"]
    value = {key: index for index, key in enumerate(keys)}
    assert _json.dumps(value, sort_keys=True) == _json.stdlib_dumps(value, sort_keys=True)


def test_the_fast_path_is_taken_for_cache_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys and payloads of the shapes the cache stores never reach the standard library."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the standard library was used")

    record = {"line": json.dumps(service("A", "Café ☕")), "problems": [], "unknown_ids": 0}
    answer = {
        "output": {"features": [{"name": "Réservé", "score": {"level": 3, "label": "Defined"}}]},
        "model": "offline",
        "usage": {"input_tokens": 1200, "output_tokens": 300},
    }
    parts = {"stage": "features", "model_settings": {"temperature": 0.7, "top_p": 1.0, "seed": 7}}
    expected = [
        _json.stdlib_dumps(record),
        _json.stdlib_dumps(answer),
        _json.stdlib_dumps(parts, sort_keys=True),
    ]
    monkeypatch.setattr(_json, "stdlib_dumps", refuse)
    monkeypatch.setattr(_json, "stdlib_loads", refuse)
    assert [_json.dumps(record), _json.dumps(answer), _json.dumps(parts, sort_keys=True)] == expected
    assert _json.loads(expected[0]) == record
    assert _json.loads(expected[1]) == answer
    assert _json.loads(expected[2]) == dict(sorted(parts.items()))


@pytest.mark.parametrize("temperature", [0.7, 1e-05])
def test_cache_keys_are_unchanged(temperature: float) -> None:
    """A key is the SHA-256 of the very bytes json.dumps wrote before: caches made earlier stay valid."""
    parts = {
        "stage": "mapping",
        "prompt": "Åland — 「サービス」",
        "model_settings": {"temperature": temperature},
    }
    canonical = _reference({"cache_format": 1, **parts}, sort_keys=True)
    assert cache_key(parts) == hashlib.sha256(canonical).hexdigest()


# decoding --------------------------------------------------------------------------------------------------


def _numbers_hidden(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _numbers_hidden(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_numbers_hidden(item) for item in value]
    return "<number>" if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@given(_JSON_VALUES, st.sampled_from(["compact", "spaced", "ascii", "indented", "newline", "bom"]))
@settings(max_examples=600, deadline=None)
def test_loads_is_the_standard_library(value: Any, form: str) -> None:
    try:
        text = {
            "compact": lambda: json.dumps(value, ensure_ascii=False, separators=(",", ":")),
            "spaced": lambda: json.dumps(value, ensure_ascii=False),
            "ascii": lambda: json.dumps(value),
            "indented": lambda: json.dumps(value, ensure_ascii=False, indent=2),
            "newline": lambda: json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n",
            "bom": lambda: "\ufeff" + json.dumps(value, ensure_ascii=False),
        }[form]()
    except (ValueError, RecursionError):
        return  # integers past Python's 4300-digit conversion limit
    data = text.encode("utf-8", "surrogatepass")
    expected = _outcome(json.loads, data)
    assert _outcome(_json.loads, data) == expected
    if expected[0] == "value":
        assert _numbers_hidden(_json.loads(data, exact=False)) == _numbers_hidden(json.loads(data))


@given(
    st.one_of(
        st.binary(max_size=40),
        st.text(st.sampled_from('{}[]",:0123456789.eE+-truefalsnNaIiy\\u \n\t\x00é\ud800'), max_size=40).map(
            lambda text: text.encode("utf-8", "surrogatepass")
        ),
    )
)
@settings(max_examples=1500, deadline=None)
def test_loads_of_any_bytes_is_the_standard_library(data: bytes) -> None:
    expected = _outcome(json.loads, data)
    assert _outcome(_json.loads, data) == expected
    lenient = _outcome(_json.loads, data, exact=False)
    assert lenient[0] == expected[0]
    if expected[0] == "error":
        assert lenient == expected


@pytest.mark.parametrize(
    "data",
    [
        b"18446744073709551616",  # orjson: 1.8446744073709552e+19
        b'{"big":-9223372036854775809,"f":1.5}',
        b'{"n":' + b"9" * 400 + b"}",
        b'{"line":"' + b"x" * 100_000 + b'","n":123456789012345678901234567890}',  # walked, not re-encoded
        b"[NaN,Infinity,-Infinity,1e400]",  # orjson refuses these
        b'"\\ud800"',
        b"\xef\xbb\xbf{}",
        '{"a":1}'.encode("utf-16"),
        b'{"a":1,"a":2.50}',
        b'{"a": 1.0}\n',
        b"[0.00001, 1e-05, 1E5, -0.0, -0]",
    ],
)
def test_loads_where_orjson_differs(data: bytes) -> None:
    assert _outcome(_json.loads, data) == _outcome(json.loads, data)


# a whole run -----------------------------------------------------------------------------------------------


def _tree(directory: Path, prefix: str) -> dict[str, bytes]:
    """Every file under ``directory``, by ``prefix`` + its relative path."""
    return {
        f"{prefix}{path.relative_to(directory)}": path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_a_whole_run_writes_the_same_bytes_with_either_encoder(
    cli: Cli, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Output, cache keys and payloads, and quarantine entries: cold with one encoder, warm with the other."""
    lines = [line for line in SAMPLES.read_text(encoding="utf-8").splitlines() if line.strip()]
    unusual = service(
        "ODD-1",
        "Ærø ferry — 「予約」 \u2028 😀",
        jobs_to_be_done=[
            {
                "name": "Book a crossing",
                "weight": 1e-05,
                "tiny": 5e-324,
                "big": 123456789012345678901234567890,
            },
            {
                "name": "Change a booking",
                "ratio": 1e16,
                "nested": {"z": [1, 2.5, None, True], "a": "\\u00e9"},
            },
        ],
    )
    write_jsonl(
        isolated / "services.jsonl", [*lines, unusual, "{not json", json.dumps({"service_id": "bad"})]
    )
    runs: dict[str, dict[str, bytes]] = {}
    for encoder in ("stdlib", "orjson"):
        with monkeypatch.context() as patch:
            if encoder == "stdlib":
                patch.setattr(_json, "dumps", _json.stdlib_dumps)
                patch.setattr(_json, "loads", _json.stdlib_loads)
            result = cli("run", "--cache-dir", f"cache-{encoder}", "--output-file", f"{encoder}.jsonl")
        assert result.exit_code == 0, result.stderr
        runs[encoder] = {
            "output": (isolated / f"{encoder}.jsonl").read_bytes(),
            **_tree(isolated / f"cache-{encoder}" / "entries", "cache/"),
            **_tree(isolated / f"{encoder}.jsonl.quarantine", "quarantine/"),
        }
    assert runs["orjson"].keys() == runs["stdlib"].keys()
    assert runs["orjson"] == runs["stdlib"]
    assert sum(name.startswith("cache/") for name in runs["orjson"]) > 12 * 21
    assert sum(name.startswith("quarantine/") for name in runs["orjson"]) == 2
    assert b"123456789012345678901234567890" in runs["orjson"]["output"]

    # Warm: each encoder reads the cache the other one wrote, and writes the same files from it.
    for encoder, other in (("orjson", "stdlib"), ("stdlib", "orjson")):
        with monkeypatch.context() as patch:
            if encoder == "stdlib":
                patch.setattr(_json, "dumps", _json.stdlib_dumps)
                patch.setattr(_json, "loads", _json.stdlib_loads)
            warm = cli("run", "--cache-dir", f"cache-{other}", "--output-file", f"warm-{encoder}.jsonl")
        assert warm.exit_code == 0, warm.stderr
        assert "records from cache: 13;" in warm.stderr, warm.stderr
        assert (isolated / f"warm-{encoder}.jsonl").read_bytes() == runs["stdlib"]["output"]
        assert _tree(isolated / f"warm-{encoder}.jsonl.quarantine", "quarantine/") == {
            name: data for name, data in runs["stdlib"].items() if name.startswith("quarantine/")
        }
