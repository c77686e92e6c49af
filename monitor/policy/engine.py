"""The CEL engine behind one small interface: cel-expr-python (Google's C++ CEL runtime).

`CelEngine.compile(text)` -> `Program` (compiled once at load); `CelEngine.activation(data)` builds
the one activation shared by every rule evaluated on an event; `Program.eval(activation)` returns
True / False, or raises `EvalError` (missing field, type error, non-bool result).

Functions beyond standard CEL (both here and in the cel-python oracle, see `oracle_functions`):
  in_cidr(address: string, cidr: string) -> bool   false when the address does not parse
  list.join(separator: string) -> string           the items (strings) joined, as cel-go's strings
  string.lowerAscii() -> string                    extension (bodies in functions.py)

The runtime reads a Python string only up to its first NUL: "\x00/usr/bin/nc" was "" to every
rule (an evasion open to anything that can put a NUL in a field: model text, tool-call arguments,
a DNS label, container labels). And a string with a lone surrogate (JSON allows "\ud800": a
model's tool call can carry one) made building the activation raise. The activation carries
each NUL as U+2400 (the symbol for NUL), one code point for one, and a lone surrogate as its
escape text ("\\ud800"); anything else the runtime refuses is an EvalError, counted per rule.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

from cel_expr_python import cel

from monitor.event import utf8_safe
from monitor.policy.functions import join, lower_ascii


class CompileError(Exception):
    """The CEL text does not compile; message is the engine's first error line, position kept."""


class EvalError(Exception):
    pass


@functools.lru_cache(maxsize=1024)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def in_cidr(address: str, cidr: str) -> bool:
    network = _network(cidr)
    if network is None:
        return False
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


def valid_cidr(cidr: str) -> bool:
    return _network(cidr) is not None


_ERROR_LINE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")


def _compile_message(exc: Exception) -> str:
    text = str(exc)
    found = _ERROR_LINE.search(text)
    if not found:
        return text.splitlines()[0] if text else "does not compile"
    line, column, message = found.groups()
    undeclared = re.match(r"undeclared reference to '([^']+)'", message)
    if undeclared:
        return f"unknown name '{undeclared.group(1)}' (not a macro, a list or `event`) at {line}:{column}"
    return f"CEL error at {line}:{column}: {message}"


class Program:
    __slots__ = ("_expr", "text")

    def __init__(self, expr: Any, text: str) -> None:
        self._expr = expr
        self.text = text

    def eval(self, activation: Any) -> bool:
        value = self._expr.eval(activation).value()
        if value is True or value is False:
            return value
        raise EvalError(str(value).splitlines()[0] if value is not None else "null result")


class CelEngine:
    def __init__(self) -> None:
        in_cidr_decl = cel.FunctionDecl("in_cidr", [cel.Overload(
            "in_cidr_string_string", cel.Type.BOOL, [cel.Type.STRING, cel.Type.STRING], impl=in_cidr)])
        join_decl = cel.FunctionDecl("join", [cel.Overload(
            "list_join_string", cel.Type.STRING, [cel.Type.List(cel.Type.DYN), cel.Type.STRING],
            is_member=True, impl=join)])
        lower_decl = cel.FunctionDecl("lowerAscii", [cel.Overload(
            "string_lower_ascii", cel.Type.STRING, [cel.Type.STRING], is_member=True, impl=lower_ascii)])
        self._env = cel.NewEnv(variables={"event": cel.Type.Map(cel.Type.STRING, cel.Type.DYN)},
                               functions=[in_cidr_decl, join_decl, lower_decl])

    def compile(self, text: str) -> Program:
        try:
            expr = self._env.compile(text)
        except Exception as exc:  # the binding raises RuntimeError(INVALID_ARGUMENT: ...)
            raise CompileError(_compile_message(exc)) from None
        result = expr.return_type()
        if result not in (cel.Type.BOOL, cel.Type.DYN):
            raise CompileError(f"condition must be a bool, it is {result.name()}")
        return Program(expr, text)

    def activation(self, data: dict[str, Any]) -> Any:
        try:
            return self._env.Activation({"event": cel_safe(data)})
        except RuntimeError as exc:  # the binding's own conversion errors
            raise EvalError(str(exc).splitlines()[0]) from None


NUL_STAND_IN = "\u2400"


def cel_safe(value: Any) -> Any:
    """`value` as the runtime can read it whole: in every string (keys too) a NUL as U+2400 and a
    lone surrogate as its escape text. The same object when nothing needs it (the usual case:
    no copy; `isascii()` is a flag test)."""
    kind = type(value)
    if kind is str:
        value = utf8_safe(value)
        return value.replace("\x00", NUL_STAND_IN) if "\x00" in value else value
    if kind is dict:
        for key, item in value.items():
            if cel_safe(key) is not key or cel_safe(item) is not item:
                return {cel_safe(k): cel_safe(v) for k, v in value.items()}
        return value
    if kind is list:
        for item in value:
            if cel_safe(item) is not item:
                return [cel_safe(v) for v in value]
        return value
    return value


def oracle_functions() -> dict[str, Any]:
    """The same extra functions for cel-python (the pure-Python reference used in tests)."""
    import celpy.celtypes as celtypes

    def oracle_in_cidr(address: Any, cidr: Any) -> Any:
        return celtypes.BoolType(in_cidr(str(address), str(cidr)))

    def oracle_join(items: Any, separator: Any) -> Any:
        return celtypes.StringType(join([str(i) for i in items], str(separator)))

    def oracle_lower_ascii(text: Any) -> Any:
        return celtypes.StringType(lower_ascii(str(text)))

    return {"in_cidr": oracle_in_cidr, "join": oracle_join, "lowerAscii": oracle_lower_ascii}
