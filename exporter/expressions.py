"""``--input NAME=EXPR``: an input value written as a Python literal or a small numpy constructor.

``saved_model_cli run --input_exprs 'x=np.ones((2,8))'`` evaluates the text with ``eval``; tfship does
not. The text is parsed with :mod:`ast` and only an allow-list is interpreted: literals (numbers,
strings, bytes, booleans, None, lists, tuples), unary minus, ``+ - * /`` between numbers and arrays,
the numpy constructors in :data:`CONSTRUCTORS` (``np.`` or ``numpy.``), random values from
:data:`RANDOM` drawn from a generator with a fixed seed (the same text gives the same array), the array
methods ``.reshape`` and ``.astype``, ``.T``, and numpy dtype names. Anything else (names, other
attributes, calls, lambdas, comprehensions, subscripts) is refused with the piece of text it was.
Sizes are bounded before anything is allocated.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from tfship.core.errors import UsageError

MAX_TEXT = 10_000
MAX_NODES = 2_000
MAX_ELEMENTS = 16_000_000  # 64 MB of float32: far more than one tries by hand
SEED = 0

NUMPY_NAMES = ("np", "numpy")
DTYPES = frozenset({
    "float16", "float32", "float64", "half", "single", "double", "int8", "int16", "int32", "int64", "uint8",
    "uint16", "uint32", "uint64", "bool_", "bool", "str_", "bytes_", "object_",
})
CONSTANTS = {"pi": math.pi, "e": math.e, "inf": math.inf, "nan": math.nan}


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, tuple, list)):
        raise UsageError(f"a shape must be an integer or a tuple of integers, not {value!r}")
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise UsageError(f"a shape must hold non-negative integers, not {value!r}")
    _check_count(math.prod(int(d) for d in dims))
    return tuple(int(d) for d in dims)


def _check_count(count: float) -> None:
    if count > MAX_ELEMENTS:
        raise UsageError(f"the expression asks for {count:.0f} elements, more than the {MAX_ELEMENTS} tfship builds from --input; "
                         f"write the array to an .npz and pass --inputs")


def _dtype(value: Any) -> np.dtype[Any]:
    if isinstance(value, np.dtype):
        return value
    if isinstance(value, str) and value in DTYPES:
        return np.dtype("bool" if value == "bool_" else value)
    if isinstance(value, type) and value in (float, int, bool, str, bytes):
        return np.dtype(value)
    raise UsageError(f"unknown dtype {value!r} (use a numpy dtype name such as 'float32' or np.int64)")


def _count_of(length: float) -> float:
    return max(0.0, math.ceil(length))


def _arange(*args: Any, dtype: Any = None) -> np.ndarray:
    if not 1 <= len(args) <= 3 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise UsageError("np.arange takes 1 to 3 numbers: stop, or start, stop[, step]")
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) == 3 else 1)
    if step == 0:
        raise UsageError("np.arange: step must not be 0")
    _check_count(_count_of((stop - start) / step))
    return np.arange(start, stop, step, dtype=None if dtype is None else _dtype(dtype))


def _linspace(start: Any, stop: Any, num: Any = 50, endpoint: Any = True, dtype: Any = None) -> np.ndarray:
    if not isinstance(num, int) or isinstance(num, bool) or num < 0:
        raise UsageError("np.linspace: num must be a non-negative integer")
    _check_count(num)
    return np.linspace(start, stop, num, endpoint=bool(endpoint), dtype=None if dtype is None else _dtype(dtype))


def _array(value: Any, dtype: Any = None) -> np.ndarray:
    array = np.asarray(value, dtype=None if dtype is None else _dtype(dtype))
    if array.dtype == object:
        raise UsageError("np.array: the nested lists are ragged or mix types; every row needs the same length")
    return array


def _filled(fill: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def build(shape: Any, dtype: Any = None) -> np.ndarray:
        return fill(_shape(shape), dtype=np.float64 if dtype is None else _dtype(dtype))
    return build


def _full(shape: Any, fill_value: Any, dtype: Any = None) -> np.ndarray:
    return np.full(_shape(shape), fill_value, dtype=None if dtype is None else _dtype(dtype))


def _eye(n: Any, m: Any = None, dtype: Any = None) -> np.ndarray:
    rows, cols = _shape(n)[0], _shape(n if m is None else m)[0]
    _check_count(rows * cols)
    return np.eye(rows, cols, dtype=np.float64 if dtype is None else _dtype(dtype))


def _like(fill: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
    def build(value: Any, dtype: Any = None) -> np.ndarray:
        return fill(np.asarray(value), dtype=None if dtype is None else _dtype(dtype))
    return build


CONSTRUCTORS: dict[str, Callable[..., np.ndarray]] = {
    "array": _array, "asarray": _array, "zeros": _filled(np.zeros), "ones": _filled(np.ones), "empty": _filled(np.zeros),
    "full": _full, "arange": _arange, "linspace": _linspace, "eye": _eye, "identity": lambda n, dtype=None: _eye(n, None, dtype),
    "zeros_like": _like(np.zeros_like), "ones_like": _like(np.ones_like),
}


def _random(kind: str) -> Callable[..., np.ndarray]:
    def draw(*args: Any, **kwargs: Any) -> np.ndarray:
        rng = np.random.default_rng(SEED)
        if kind in ("rand", "randn"):
            dims = _shape(tuple(args)) if args else ()
            if kwargs:
                raise UsageError(f"np.random.{kind} takes only dimensions")
            return rng.random(dims) if kind == "rand" else rng.standard_normal(dims)
        size = kwargs.pop("size", None)
        shape = None if size is None else _shape(size)
        if kind == "random":
            if args or kwargs:
                raise UsageError("np.random.random takes only size=")
            return np.asarray(rng.random(shape))
        if kind == "randint":
            low, high = (args + (None, None))[:2]
            low = kwargs.pop("low", low)
            high = kwargs.pop("high", high)
            dtype = kwargs.pop("dtype", "int64")
            if kwargs or not isinstance(low, int):
                raise UsageError("np.random.randint takes low[, high][, size=][, dtype=]")
            return np.asarray(rng.integers(low, high, size=shape, dtype=_dtype(dtype)))
        first, second = (args + (None, None))[:2]
        if kind == "uniform":
            low, high = kwargs.pop("low", 0.0 if first is None else first), kwargs.pop("high", 1.0 if second is None else second)
            if kwargs:
                raise UsageError("np.random.uniform takes low, high, size=")
            return np.asarray(rng.uniform(low, high, size=shape))
        loc, scale = kwargs.pop("loc", 0.0 if first is None else first), kwargs.pop("scale", 1.0 if second is None else second)
        if kwargs:
            raise UsageError("np.random.normal takes loc, scale, size=")
        return np.asarray(rng.normal(loc, scale, size=shape))
    return draw


RANDOM = {kind: _random(kind) for kind in ("rand", "randn", "random", "randint", "uniform", "normal")}


class _Evaluator:
    def __init__(self, text: str) -> None:
        self.text = text

    def refuse(self, node: ast.AST, what: str) -> UsageError:
        piece = ast.get_source_segment(self.text, node) or type(node).__name__
        return UsageError(f"--input: {what} is not allowed here: {piece!r} (use literals, lists, np.array/ones/zeros/full/"
                          f"arange/linspace/eye, np.random.* and .reshape/.astype)")

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float, complex, str, bytes, bool)) or node.value is None:
                if isinstance(node.value, int) and not isinstance(node.value, bool) and abs(node.value) > 2**64:
                    raise self.refuse(node, "an integer this large")
                return node.value
            raise self.refuse(node, "this constant")
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.value(node.operand)
            if not _numeric(operand):
                raise self.refuse(node, "a sign on something other than a number or an array")
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = self.value(node.left), self.value(node.right)
            if not (_numeric(left) and _numeric(right)):
                raise self.refuse(node, "arithmetic on something other than numbers and arrays")
            _check_count(math.prod(np.broadcast_shapes(np.shape(left), np.shape(right))))
            operation = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}[type(node.op)]
            result = operation(left, right)
            return result if isinstance(result, np.ndarray) else result.item() if isinstance(result, np.generic) else result
        if isinstance(node, ast.Attribute):
            return self.attribute(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.refuse(node, "this kind of expression" if not isinstance(node, ast.Name) else f"the name '{node.id}'")

    def numpy_path(self, node: ast.AST) -> list[str] | None:
        """``np.random.rand`` -> ``["random", "rand"]``; None unless rooted at ``np`` / ``numpy``."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and node.id in NUMPY_NAMES and parts:
            return parts[::-1]
        return None

    def attribute(self, node: ast.Attribute) -> Any:
        path = self.numpy_path(node)
        if path is not None and len(path) == 1:
            if path[0] in DTYPES:
                return _dtype(path[0])
            if path[0] in CONSTANTS:
                return CONSTANTS[path[0]]
        if path is None and node.attr == "T":
            target = self.value(node.value)
            if isinstance(target, np.ndarray):
                return target.T
        raise self.refuse(node, "this attribute")

    def call(self, node: ast.Call) -> Any:
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise self.refuse(node, "argument unpacking")
        func = node.func
        path = self.numpy_path(func)
        if path is not None:
            if len(path) == 1 and path[0] in CONSTRUCTORS:
                function = CONSTRUCTORS[path[0]]
            elif len(path) == 2 and path[0] == "random" and path[1] in RANDOM:
                function = RANDOM[path[1]]
            else:
                raise self.refuse(func, "this function")
            return self.invoke(node, function)
        if isinstance(func, ast.Attribute) and func.attr in ("reshape", "astype"):
            target = self.value(func.value)
            if not isinstance(target, np.ndarray):
                raise self.refuse(func, f".{func.attr} on something other than an array")
            if func.attr == "reshape":
                args = [self.value(a) for a in node.args]
                if node.keywords:
                    raise self.refuse(node, "keywords to .reshape")
                shape = args[0] if len(args) == 1 else tuple(args)
                dims = (shape,) if isinstance(shape, int) else shape
                if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                    raise self.refuse(node, ".reshape with something other than integers")
                try:
                    return target.reshape(tuple(dims))
                except ValueError as exc:
                    raise UsageError(f"--input: {ast.get_source_segment(self.text, node)}: {exc}") from None
            if len(node.args) != 1 or node.keywords:
                raise self.refuse(node, ".astype with other than one dtype")
            return target.astype(_dtype(self.value(node.args[0])))
        raise self.refuse(func, "calling this")

    def invoke(self, node: ast.Call, function: Callable[..., np.ndarray]) -> np.ndarray:
        args = [self.value(a) for a in node.args]
        kwargs = {str(k.arg): self.value(k.value) for k in node.keywords}
        try:
            return np.asarray(function(*args, **kwargs))
        except UsageError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise UsageError(f"--input: {ast.get_source_segment(self.text, node)}: {exc}") from None


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biufc"
    return isinstance(value, (int, float, complex))


def evaluate(text: str) -> np.ndarray:
    """The array ``text`` describes; UsageError naming the refused piece for anything outside the allow-list."""
    if len(text) > MAX_TEXT:
        raise UsageError(f"--input: the expression is {len(text)} characters, over {MAX_TEXT}; write the array to an .npz and pass --inputs")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise UsageError(f"--input {text[:80]!r}: not a Python expression ({type(exc).__name__})") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise UsageError(f"--input: the expression has more than {MAX_NODES} parts; write the array to an .npz and pass --inputs")
    evaluator = _Evaluator(text.strip())
    try:
        value = evaluator.value(tree.body)
    except RecursionError:
        raise UsageError("--input: the expression is nested too deeply") from None
    array = np.asarray(value)
    if array.dtype == object:
        raise UsageError(f"--input {text[:80]!r}: not an array (ragged lists or None)")
    return array


def parse_assignment(text: str) -> tuple[str, np.ndarray]:
    """``NAME=EXPR`` -> (NAME, array)."""
    name, sep, expression = text.partition("=")
    name = name.strip()
    if not sep or not name or not expression.strip():
        raise UsageError(f"--input {text!r}: expected NAME=EXPR, e.g. x=np.ones((2,8)) or x=[[1,2,3]]")
    return name, evaluate(expression)
