"""JSON request bodies parsed within limits: nesting depth and element count are checked first.

``json.loads`` recurses once per nesting level (100k ``[`` end in RecursionError) and builds a Python
object per value (tens of bytes for a two-byte ``0,``). Before it runs, one pass at C speed over the
body measures what parsing would build: strings are blanked out with a regular expression (so brackets
and commas inside them do not count), then the remaining brackets give the nesting depth and the commas
and brackets the number of values. A body over a limit is refused with one line, before any object is
built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfship.serving.local_engine.errors import invalid

# A JSON string, escapes included (the unrolled form: fast on long strings, no backtracking).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_ALL_BUT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPEN = np.frombuffer(b"[{", np.uint8)
_CHUNK = 1 << 20  # brackets per step of the depth scan: its scratch memory is about 10 bytes per bracket of a step


@dataclass(frozen=True)
class JsonLimits:
    max_depth: int = 64
    # Values and containers together. Parsing costs up to ~70 bytes each (an empty list), so this caps
    # the parsed form near 300 MB whatever the body; strings cost about their length.
    max_values: int = 1 << 22


def max_depth(structure: bytes) -> int:
    """Deepest nesting of a string of brackets (strings already removed)."""
    depth = peak = 0
    view = np.frombuffer(structure, np.uint8)
    for start in range(0, view.size, _CHUNK):
        chunk = view[start:start + _CHUNK]
        steps = np.where(np.isin(chunk, _OPEN), np.int8(1), np.int8(-1))
        running = np.cumsum(steps, dtype=np.int64) + depth
        peak = max(peak, int(running.max()))
        depth = int(running[-1])
    return peak


def measure(body: bytes) -> tuple[int, int]:
    """(nesting depth, number of values) of a JSON document, without parsing it."""
    blanked = _STRING.sub(b'""', body)
    structure = blanked.translate(None, delete=_ALL_BUT_BRACKETS)
    del blanked
    # Every value but the last of a container is followed by a comma; containers count as values too.
    values = body.count(b",") + len(structure) // 2 + 1
    return max_depth(structure), values


def loads(body: bytes, limits: JsonLimits) -> Any:
    """Parse ``body`` as JSON, or raise INVALID_ARGUMENT naming the limit or the syntax error."""
    depth, values = measure(body)
    if depth > limits.max_depth:
        raise invalid(f"JSON Parse error: the document nests {depth} levels deep; the limit is {limits.max_depth}")
    if values > limits.max_values:
        raise invalid(f"JSON Parse error: the document holds about {values} values; the limit is {limits.max_values} "
                      f"(the server's --tfship_rest_max_json_values; or send large tensors over gRPC)")
    try:
        return json.loads(body)
    except RecursionError:  # only if the scan and the parser disagree on a malformed document
        raise invalid("JSON Parse error: the document nests too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"JSON Parse error: {str(exc)[:200]}") from None
