"""A pySigma backend that writes CEL conditions over our event fields.

Semantics kept from the Sigma specification: plain values (and contains/startswith/endswith) match
without regard to case (`lowerAscii()` on the field, the value lowered), `|cased` and `|re` match
case as written, `re` searches (unanchored, RE2 as CEL's matches()), wildcards `*`/`?` inside a
value become an anchored RE2 pattern. A field that an event may lack is read only under its
presence test, so `not filter` is true on an event without the field, as Sigma means it.
Anything that cannot be written with the same meaning raises Refused with the reason.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionItem,
    ConditionNOT,
    ConditionOR,
    ConditionValueExpression,
)
from sigma.conversion.base import Backend
from sigma.conversion.state import ConversionState
from sigma.exceptions import SigmaError
from sigma.types import (
    CompareOperators,
    Placeholder,
    SigmaBool,
    SigmaCasedString,
    SigmaCIDRExpression,
    SigmaCompareExpression,
    SigmaExists,
    SigmaExpansion,
    SigmaFieldReference,
    SigmaNull,
    SigmaNumber,
    SigmaRegularExpression,
    SigmaRegularExpressionFlag,
    SigmaString,
    SigmaTimestampPart,
    SpecialChars,
)

from monitor.policy.prefilter import compile_regex
from monitor.policy.sigma.fields import Access, Variant

ATOM, AND, OR = 3, 2, 1  # precedence of what a conversion returns
Cel = tuple[str, int]
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")
_COMPARE = {CompareOperators.LT: "<", CompareOperators.LTE: "<=", CompareOperators.GT: ">",
            CompareOperators.GTE: ">=", CompareOperators.NEQ: "!="}
_FLAGS = {SigmaRegularExpressionFlag.IGNORECASE: "i", SigmaRegularExpressionFlag.MULTILINE: "m",
          SigmaRegularExpressionFlag.DOTALL: "s"}


class Refused(SigmaError):
    """The rule cannot be converted with its meaning intact; str() is the reason."""


def cel_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def re2_escape(text: str) -> str:
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)


def _has_letters(text: str) -> bool:
    return any("a" <= c.lower() <= "z" for c in text)


def wrap(expr: Cel, least: int) -> str:
    text, precedence = expr
    return text if precedence >= least else f"({text})"


class CelBackend(Backend):
    name: ClassVar[str] = "sandbox-monitor CEL"
    formats: ClassVar[dict[str, str]] = {"default": "CEL conditions over sandbox-monitor events"}

    def __init__(self, variant: Variant) -> None:
        super().__init__(processing_pipeline=None)
        self.variant = variant

    # -- fields ------------------------------------------------------------------------------
    def access(self, name: str) -> Access:
        found = self.variant.fields.get(name)
        if found is None:
            reason = self.variant.refused.get(name) or f"{name} is not available on {self.variant.kind} events"
            raise Refused(reason)
        return found

    # -- boolean structure -------------------------------------------------------------------
    def _same_field(self, cond: ConditionAND | ConditionOR) -> str | None:
        fields = {arg.field if isinstance(arg, ConditionFieldEqualsValueExpression)
                  and not isinstance(arg.value, SigmaExists | SigmaNull) else None
                  for arg in cond.args}
        return fields.pop() if len(fields) == 1 and None not in fields else None

    def _join(self, cond: ConditionAND | ConditionOR, state: ConversionState, operator: str,
              precedence: int) -> Cel:
        field = self._same_field(cond)
        if field is not None:  # one presence test for all the values of a field
            access = self.access(field)
            tests = [self.test(access, arg) for arg in cond.args]
            body = f" {operator} ".join(wrap(t, precedence + 1) for t in tests)
            return self._guarded(access, (body, precedence if len(tests) > 1 else tests[0][1]))
        parts = [self.convert_condition(arg, state) for arg in cond.args]
        return f" {operator} ".join(wrap(p, precedence + 1) for p in parts), precedence

    def convert_condition_or(self, cond: ConditionOR, state: ConversionState) -> Cel:
        return self._join(cond, state, "||", OR)

    def convert_condition_and(self, cond: ConditionAND, state: ConversionState) -> Cel:
        return self._join(cond, state, "&&", AND)

    def convert_condition_not(self, cond: ConditionNOT, state: ConversionState) -> Cel:
        inner = self.convert_condition(cond.args[0], state)
        return f"!{wrap(inner, ATOM)}", ATOM

    def convert_condition_as_in_expression(self, cond: ConditionItem, state: ConversionState) -> Cel:
        raise Refused("in-expressions are not used by this backend")  # convert_or_as_in is False

    # -- field = value -----------------------------------------------------------------------
    def _guarded(self, access: Access, test: Cel) -> Cel:
        if test[0] == "true":
            return access.guard, AND
        return f"{access.guard} && {wrap(test, AND + 1)}", AND

    def convert_condition_field_eq_val(self, cond: ConditionFieldEqualsValueExpression,
                                       state: ConversionState) -> Cel:
        access = self.access(cond.field)
        if isinstance(cond.value, SigmaExists):
            return (access.guard, AND) if cond.value.exists else (f"!({access.guard})", ATOM)
        if isinstance(cond.value, SigmaNull):
            return f"!({access.guard})", ATOM
        return self._guarded(access, self.test(access, cond))

    def test(self, access: Access, cond: ConditionFieldEqualsValueExpression) -> Cel:
        """The test of one value, assuming the field is present."""
        value = cond.value
        if isinstance(value, SigmaExpansion):  # windash, base64offset: any of the variants
            tests = [self.test(access, ConditionFieldEqualsValueExpression(cond.field, v))
                     for v in value.values]
            return " || ".join(wrap(t, OR + 1) for t in tests), OR if len(tests) > 1 else tests[0][1]
        if isinstance(value, SigmaTimestampPart):
            raise Refused("time-of-day modifiers (minute, hour, ...) are not supported")
        if isinstance(value, SigmaString):
            return self.string_test(access, value, cased=isinstance(value, SigmaCasedString))
        if isinstance(value, SigmaNumber):
            if access.type == "int":
                return f"{access.cel} == {value.number}", ATOM
            return self.string_test(access, SigmaString(str(value.number)), cased=True)
        if isinstance(value, SigmaBool):
            if access.type == "direction":
                return self.direction_test(access, bool(value.boolean))
            raise Refused(f"boolean value on {cond.field}, which is not a boolean")
        if isinstance(value, SigmaRegularExpression):
            return self.regex_test(access, value)
        if isinstance(value, SigmaCIDRExpression):
            if access.type != "string":
                raise Refused(f"cidr modifier on {cond.field}, which is not an address")
            return f"in_cidr({access.cel}, {cel_string(str(value.network))})", ATOM
        if isinstance(value, SigmaCompareExpression):
            if access.type != "int":
                raise Refused(f"numeric comparison on {cond.field}, which is not a number")
            return f"{access.cel} {_COMPARE[value.op]} {value.number.number}", ATOM
        if isinstance(value, SigmaFieldReference):
            other = self.access(value.field)
            if value.starts_with or value.ends_with:
                raise Refused("fieldref with startswith/endswith is not supported")
            return f"{other.guard} && {access.cel} == {other.cel}", AND
        raise Refused(f"{type(value).__name__.removeprefix('Sigma')} values are not supported "
                      f"(field {cond.field})")

    def direction_test(self, access: Access, initiated: bool) -> Cel:
        if not initiated:
            raise Refused("Initiated: false (inbound connections) is not converted: the rule's "
                          "kinds are outgoing (connect, dns)")
        return f'{access.cel} == "egress"', ATOM

    def string_test(self, access: Access, value: SigmaString, cased: bool) -> Cel:
        parts = list(value.iter_parts())
        if any(isinstance(p, Placeholder) for p in parts):
            raise Refused("placeholders (the expand modifier) have no values here")
        if access.type == "int":
            return self._int_from_string(access, parts)
        if access.type == "uid":
            return self._uid_from_string(access, parts)
        if access.type == "direction":
            if parts in (["true"], ["false"]):
                return self.direction_test(access, parts == ["true"])
            raise Refused(f"Initiated must be 'true' or 'false', not {value.original!r}")
        text = "".join(p for p in parts if isinstance(p, str))
        lower = not cased and _has_letters(text)
        field = f"{access.cel}.lowerAscii()" if lower else access.cel
        parts = [p.lower() if lower and isinstance(p, str) else p for p in parts]
        any_chars = SpecialChars.WILDCARD_MULTI
        if not parts:
            return f'{field} == ""', ATOM
        if all(p is any_chars for p in parts):
            return "true", ATOM
        inner = parts[1:-1]
        if not any(isinstance(p, SpecialChars) for p in inner) and len(parts) <= 3:
            head, tail = parts[0] is any_chars, parts[-1] is any_chars
            literal = "".join(p for p in parts if isinstance(p, str))
            if not any(isinstance(p, SpecialChars) and p is not any_chars for p in parts):
                if head and tail and len(parts) == 3:
                    return f"{field}.contains({cel_string(literal)})", ATOM
                if tail and not head and len(parts) == 2:
                    return f"{field}.startsWith({cel_string(literal)})", ATOM
                if head and not tail and len(parts) == 2:
                    return f"{field}.endsWith({cel_string(literal)})", ATOM
                if len(parts) == 1:
                    return f"{field} == {cel_string(literal)}", ATOM
        pattern = "".join(".*" if p is any_chars else "." if p is SpecialChars.WILDCARD_SINGLE
                          else re2_escape(p) for p in parts)
        return f"{field}.matches({cel_string('(?s)^' + pattern + '$')})", ATOM

    def _int_from_string(self, access: Access, parts: list[Any]) -> Cel:
        if len(parts) == 1 and isinstance(parts[0], str) and parts[0].isdigit():
            return f"{access.cel} == {int(parts[0])}", ATOM
        raise Refused(f"{access.cel.removeprefix('event.')} is a number; the value "
                      f"{''.join(map(str, parts))!r} is not")

    def _uid_from_string(self, access: Access, parts: list[Any]) -> Cel:
        if parts == ["root"]:
            return f"{access.cel} == 0", ATOM
        if len(parts) == 1 and isinstance(parts[0], str) and parts[0].isdigit():
            return f"{access.cel} == {int(parts[0])}", ATOM
        raise Refused("User: events carry the uid, and only root has the same uid on every host "
                      f"(got {''.join(p if isinstance(p, str) else '*' for p in parts)!r})")

    def regex_test(self, access: Access, value: SigmaRegularExpression) -> Cel:
        if access.type != "string":
            raise Refused(f"re modifier on {access.cel.removeprefix('event.')}, which is not text")
        flags = "".join(sorted(_FLAGS[f] for f in value.flags))
        pattern = (f"(?{flags})" if flags else "") + value.regexp.to_plain()
        try:
            compile_regex(pattern)
        except ValueError as exc:
            raise Refused(f"regular expression {value.regexp.to_plain()[:60]!r} is not RE2 "
                          f"(CEL's engine): {exc}") from None
        return f"{access.cel}.matches({cel_string(pattern)})", ATOM

    # -- what has no meaning here ------------------------------------------------------------
    def _refuse(self, what: str) -> Cel:
        raise Refused(what)

    def convert_condition_field_eq_val_str(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_val_str_case_sensitive(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_val_num(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_val_bool(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_val_re(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_val_cidr(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_compare_op_val(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_field(self, cond: Any, state: Any) -> Cel:
        return self.convert_condition_field_eq_val(cond, state)

    def convert_condition_field_eq_val_timestamp_part(self, cond: Any, state: Any) -> Cel:
        return self._refuse("time-of-day modifiers (minute, hour, ...) are not supported")

    def convert_condition_field_eq_val_null(self, cond: Any, state: Any) -> Cel:
        access = self.access(cond.field)
        return f"!({access.guard})", ATOM

    def convert_condition_field_exists(self, cond: Any, state: Any) -> Cel:
        return self.access(cond.field).guard, AND

    def convert_condition_field_not_exists(self, cond: Any, state: Any) -> Cel:
        return f"!({self.access(cond.field).guard})", ATOM

    def convert_condition_field_eq_query_expr(self, cond: Any, state: Any) -> Cel:
        return self._refuse("query expressions are not supported")

    def convert_condition_val_str(self, cond: ConditionValueExpression, state: Any) -> Cel:
        return self._refuse("keyword (field-less) search: our events have no free text to search")

    def convert_condition_val_num(self, cond: ConditionValueExpression, state: Any) -> Cel:
        return self.convert_condition_val_str(cond, state)

    def convert_condition_val_re(self, cond: ConditionValueExpression, state: Any) -> Cel:
        return self.convert_condition_val_str(cond, state)

    def convert_condition_query_expr(self, cond: ConditionValueExpression, state: Any) -> Cel:
        return self.convert_condition_val_str(cond, state)

    # -- correlation rules: converted elsewhere (or refused), never by this backend ---------
    def _no_correlation(self, *args: Any, **kwargs: Any) -> Any:
        raise Refused("correlation rules are not converted")

    convert_correlation_event_count_rule = _no_correlation
    convert_correlation_value_count_rule = _no_correlation
    convert_correlation_temporal_rule = _no_correlation
    convert_correlation_temporal_ordered_rule = _no_correlation
    convert_correlation_extended_temporal_rule = _no_correlation
    convert_correlation_extended_temporal_ordered_rule = _no_correlation
    convert_correlation_value_sum_rule = _no_correlation
    convert_correlation_value_avg_rule = _no_correlation
    convert_correlation_value_percentile_rule = _no_correlation
    convert_correlation_value_median_rule = _no_correlation
