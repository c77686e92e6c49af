"""Sigma rule files -> our rule entries (CEL over event fields), or a one-line refusal each.

    result = convert_text(text, "rules/x.yml")    # Conversion(rules=[Converted], refusals=[Refusal])
    result = convert_paths(["sigma/rules"])       # folders recursively, *.yml / *.yaml
    text = rules_yaml(result.rules)               # a rule file of ours (what import-sigma writes)
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sigma.conversion.state import ConversionState
from sigma.correlations import (
    SigmaCorrelationCondition,
    SigmaCorrelationConditionOperator,
    SigmaCorrelationRule,
    SigmaCorrelationType,
)
from sigma.exceptions import SigmaError
from sigma.rule import SigmaRule

from monitor.policy.engine import CelEngine, CompileError
from monitor.policy.sigma.backend import AND, OR, CelBackend, Refused, wrap
from monitor.policy.sigma.fields import CATEGORY_FIELDS, CATEGORY_VARIANTS, CONNECT, DNS, Variant, tactic_tag
from monitor.policy.sigma.pipeline import event_pipeline

SEVERITY = {"informational": "info", "low": "low", "medium": "medium", "high": "high",
            "critical": "critical"}
_TECHNIQUE = re.compile(r"t(\d{4})(\.\d{3})?\Z")
DRL = "DRL-1.1"


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, when present: same marks, faster


@dataclass(slots=True)
class Refusal:
    file: str
    line: int
    sigma_id: str
    title: str
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        who = f"sigma rule {self.sigma_id or '(no id)'}" + (f" ({self.title})" if self.title else "")
        return f"{where}: {who}: {self.reason}"


@dataclass(slots=True)
class Converted:
    entry: dict[str, Any]  # rule, description, when, condition|threshold|sequence, severity, tags, origin
    file: str
    line: int
    condition_line: int
    category: str = ""  # the Sigma log source category (for a correlation's group-by fields)
    name: str = ""      # the Sigma `name` a correlation may reference it by

    @property
    def sigma_id(self) -> str:
        return str(self.entry["origin"].get("sigma_id", ""))


@dataclass(slots=True)
class Conversion:
    rules: list[Converted] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    def extend(self, other: Conversion) -> None:
        self.rules += other.rules
        self.refusals += other.refusals


def _documents(text: str, file: str) -> list[tuple[yaml.Node, Any]] | Refusal:
    try:
        loader = _Loader(text)
        documents = []
        while loader.check_node():
            node = loader.get_node()
            documents.append((node, loader.construct_document(node)))
        return documents
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        return Refusal(file, mark.line + 1 if mark else 1, "", "",
                       f"YAML error: {exc.problem or exc.context or 'invalid YAML'}")
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        return Refusal(file, 1, "", "", f"YAML error: {str(exc).splitlines()[0] if str(exc) else exc}")


def _key_line(node: yaml.Node, key: str) -> int:
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                return key_node.start_mark.line + 1
    return node.start_mark.line + 1


@functools.lru_cache(maxsize=256)
def license_of(folder: Path) -> str:
    """DRL-1.1 when a LICENSE file at or above `folder` is the Detection Rule License, else ""."""
    for parent in (folder, *folder.parents):
        for name in ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENSE.Detection.Rules.md"):
            path = parent / name
            try:
                if path.is_file() and "Detection Rule License" in path.read_text(errors="replace")[:4000]:
                    return DRL
            except OSError:
                continue
    return ""


def _tags(rule: SigmaRule | SigmaCorrelationRule) -> list[str]:
    out: list[str] = []
    for tag in rule.tags:
        if tag.namespace == "attack":
            technique = _TECHNIQUE.match(tag.name)
            if technique:
                out.append("T" + tag.name[1:].upper())
            elif re.fullmatch(r"[gs]\d{4}", tag.name):
                out.append(tag.name.upper())
            else:
                out.append(tactic_tag(tag.name))
        else:
            out.append(f"{tag.namespace}.{tag.name}")
    return list(dict.fromkeys(out))


def _variants(rule: SigmaRule) -> tuple[Variant, ...]:
    category = rule.logsource.category or ""
    if category == "network_connection":
        return (DNS,) if "net.hostname" in _fields(rule) else (CONNECT,)
    return CATEGORY_VARIANTS[category]


def _fields(rule: SigmaRule) -> set[str]:
    found: set[str] = set()

    def walk(items: list[Any]) -> None:
        for item in items:
            if hasattr(item, "detection_items"):
                walk(item.detection_items)
            elif item.field:
                found.add(item.field)
    for detection in rule.detection.detections.values():
        walk(detection.detection_items)
    return found


def condition_for(rule: SigmaRule, variants: tuple[Variant, ...]) -> str:
    """The CEL of a rule whose pipeline has been applied: per variant its kind's prefix and the
    OR of the rule's conditions, then the OR of the variants. Refused / SigmaError on failure."""
    branches = []
    for variant in variants:
        backend = CelBackend(variant)
        parts = [backend.convert_condition(c.parsed, ConversionState())
                 for c in rule.detection.parsed_condition]
        body = (" || ".join(wrap(p, OR + 1) for p in parts), OR) if len(parts) > 1 else parts[0]
        branch = (f"{variant.prefix} && {wrap(body, AND + 1)}", AND) if variant.prefix else body
        branches.append(branch)
    if len(branches) == 1:
        return branches[0][0]
    return " || ".join(f"({text})" for text, _ in branches)


def _origin(rule: SigmaRule | SigmaCorrelationRule, doc: dict[str, Any], file: str) -> dict[str, Any]:
    origin: dict[str, Any] = {"format": "sigma", "sigma_id": str(rule.id or ""), "title": rule.title}
    if rule.author:
        origin["author"] = rule.author
    if rule.date:
        origin["date"] = str(rule.date)
    if rule.status:
        origin["status"] = rule.status.name.lower()
    if rule.level:
        origin["level"] = rule.level.name.lower()
    if rule.references:
        origin["references"] = list(rule.references)
    if rule.falsepositives:
        origin["falsepositives"] = [str(f) for f in rule.falsepositives]
    license_name = doc.get("license") if isinstance(doc.get("license"), str) else ""
    origin["license"] = license_name or license_of(Path(file).resolve().parent)
    if not origin["license"]:
        del origin["license"]
    origin["file"] = Path(file).name
    return origin


def _convert_document(node: yaml.Node, doc: Any, file: str, engine: CelEngine | None) -> Converted | Refusal:
    line = node.start_mark.line + 1
    if not isinstance(doc, dict):
        return Refusal(file, line, "", "", "a Sigma document is a mapping")
    sigma_id, title = str(doc.get("id") or ""), str(doc.get("title") or "")

    def refuse(reason: str, at: int = line) -> Refusal:
        return Refusal(file, at, sigma_id, title, reason)
    if "action" in doc:
        return refuse(f"rule collections (action: {doc['action']}) are not supported", _key_line(node, "action"))
    if "detection" not in doc or "logsource" not in doc:
        return refuse("not a Sigma rule (needs logsource and detection)")
    try:
        rule = SigmaRule.from_dict(doc)
    except SigmaError as exc:
        return refuse(_reason(exc), _key_line(node, "detection"))
    except (ValueError, TypeError, AttributeError, KeyError) as exc:  # pySigma on malformed input
        return refuse(f"invalid Sigma rule: {exc}", _key_line(node, "detection"))
    try:
        event_pipeline().apply(rule)
        condition = condition_for(rule, _variants(rule))
    except SigmaError as exc:
        return refuse(_reason(exc), _key_line(node, "detection"))
    try:
        if engine is not None:
            engine.compile(condition)
    except CompileError as exc:  # a converter fault, not the rule's: say so
        return refuse(f"converted condition does not compile ({exc}); please report")
    level = rule.level.name.lower() if rule.level else "medium"
    entry: dict[str, Any] = {
        "rule": title.strip() or sigma_id,
        "description": " ".join(str(rule.description or title).split()),
        "when": list(dict.fromkeys(v.kind for v in _variants(rule))),
        "condition": condition,
        "severity": SEVERITY.get(level, "medium"),
        "tags": _tags(rule),
        "origin": _origin(rule, doc, file),
    }
    return Converted(entry, file, line, _key_line(node, "detection"), rule.logsource.category or "",
                     str(doc.get("name") or ""))


def _reason(exc: SigmaError) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return " ".join(text.split()) or type(exc).__name__


def convert_text(text: str, file: str, engine: CelEngine | None = None) -> Conversion:
    """With `engine`, each converted condition is compiled too (the loader compiles them itself)."""
    out = Conversion()
    documents = _documents(text, file)
    if isinstance(documents, Refusal):
        out.refusals.append(documents)
        return out
    correlations = []
    for node, doc in documents:
        if isinstance(doc, dict) and "correlation" in doc:
            correlations.append((node, doc))
            continue
        result = _convert_document(node, doc, file, engine)
        (out.refusals if isinstance(result, Refusal) else out.rules).append(result)  # type: ignore[arg-type]
    hidden: set[int] = set()
    for node, doc in correlations:
        result, referenced, generate = _convert_correlation(node, doc, file, out.rules)
        (out.refusals if isinstance(result, Refusal) else out.rules).append(result)  # type: ignore[arg-type]
        if isinstance(result, Converted) and not generate:
            hidden |= {id(rule) for rule in referenced}
    out.rules = [rule for rule in out.rules if id(rule) not in hidden]
    return out


_PLAIN_FIELD = re.compile(r"event(\.[a-z_]+)+\Z")


def _event_field(sigma_field: str, category: str) -> str:
    """A Sigma field (group-by, value_count) as the plain event field our scopes read."""
    neutral = CATEGORY_FIELDS.get(category, {}).get(sigma_field)
    access = CATEGORY_VARIANTS[category][0].fields.get(neutral or "") if category in CATEGORY_VARIANTS else None
    if access is None or not _PLAIN_FIELD.match(access.cel):
        raise Refused(f"field '{sigma_field}' cannot group or count here (it is not one plain event field)")
    return access.cel


def _convert_correlation(node: yaml.Node, doc: dict[str, Any], file: str,
                         converted: list[Converted]) -> tuple[Converted | Refusal, list[Converted], bool]:
    """A Sigma correlation (event_count, value_count, temporal_ordered) over rules of the same
    file -> a threshold or sequence rule of ours."""
    line = _key_line(node, "correlation")
    sigma_id, title = str(doc.get("id") or ""), str(doc.get("title") or "")
    try:
        rule = SigmaCorrelationRule.from_dict(doc)
        found = {key: c for c in converted for key in (c.name, c.sigma_id) if key}
        referenced = []
        for reference in rule.rules or []:
            if reference.reference not in found:
                raise Refused(f"rule '{reference.reference}' it correlates is not a converted rule of this file")
            referenced.append(found[reference.reference])
        category = referenced[0].category
        by = "sandbox"
        if rule.group_by:
            if len(rule.group_by) > 1:
                raise Refused("grouping by more than one field is not supported")
            by = _event_field(rule.group_by[0], category)
        within = float(rule.timespan.seconds)
        entry = _correlation_entry(rule, referenced, category, by, within)
    except (SigmaError, ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        reason = _reason(exc) if isinstance(exc, SigmaError) else f"invalid correlation: {exc}"
        return Refusal(file, line, sigma_id, title, reason), [], False
    level = rule.level.name.lower() if rule.level else "medium"
    entry = {"rule": title.strip() or sigma_id,
             "description": " ".join(str(rule.description or title).split()),
             **entry, "severity": SEVERITY.get(level, "medium"), "tags": _tags(rule),
             "origin": {**_origin(rule, doc, file),
                        "correlates": [r.sigma_id or r.name for r in referenced]}}
    return Converted(entry, file, node.start_mark.line + 1, line), referenced, bool(rule.generate)


def _correlation_entry(rule: SigmaCorrelationRule, referenced: list[Converted], category: str, by: str,
                       within: float) -> dict[str, Any]:
    kind = rule.type
    if kind == SigmaCorrelationType.TEMPORAL_ORDERED:
        if len(referenced) < 2:
            raise Refused("temporal_ordered needs at least two rules")
        return {"sequence": {"within": within, "by": by,
                             "steps": [{"when": r.entry["when"], "condition": r.entry["condition"]}
                                       for r in referenced]}}
    if kind not in (SigmaCorrelationType.EVENT_COUNT, SigmaCorrelationType.VALUE_COUNT):
        raise Refused(f"correlation type {kind.name.lower()} has no counterpart (event_count, value_count "
                      "and temporal_ordered do)")
    condition = rule.condition
    if not isinstance(condition, SigmaCorrelationCondition) or condition.op not in (
            SigmaCorrelationConditionOperator.GTE, SigmaCorrelationConditionOperator.GT):
        raise Refused("only 'at least' conditions (gte, gt) map onto a threshold")
    count = int(condition.count) + (1 if condition.op == SigmaCorrelationConditionOperator.GT else 0)
    if count < 2:
        raise Refused("a count below 2 is a plain rule, not a correlation")
    threshold: dict[str, Any] = {"count": count, "within": within, "by": by}
    if kind == SigmaCorrelationType.VALUE_COUNT:
        fieldref = condition.fieldref
        if not isinstance(fieldref, str):
            raise Refused("value_count needs one field")
        threshold["distinct"] = _event_field(fieldref, category)
    kinds = list(dict.fromkeys(k for r in referenced for k in r.entry["when"]))
    return {"when": kinds, "condition": " || ".join(f"({r.entry['condition']})" for r in referenced)
            if len(referenced) > 1 else referenced[0].entry["condition"], "threshold": threshold}


def sigma_files(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders -> their *.yml/*.yaml files at any depth, sorted. Missing: OSError."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".yml", ".yaml") and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return files


def convert_paths(paths: list[str | Path]) -> Conversion:
    out = Conversion()
    engine = CelEngine()
    for file in sigma_files(paths):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            out.refusals.append(Refusal(str(file), 0, "", "", f"cannot read: {exc}"))
            continue
        out.extend(convert_text(text, str(file), engine))
    unique_names(out.rules)
    return out


def unique_names(rules: list[Converted]) -> None:
    """Rule names are Sigma titles; a title seen twice gets its Sigma id appended (a later rule of
    the same name would otherwise replace the earlier one)."""
    seen: dict[str, int] = {}
    for rule in rules:
        seen[rule.entry["rule"]] = seen.get(rule.entry["rule"], 0) + 1
    for rule in rules:
        if seen[rule.entry["rule"]] > 1:
            rule.entry["rule"] = f"{rule.entry['rule']} ({rule.sigma_id[:8]})"


class _Dumper(yaml.SafeDumper):
    pass


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def layout(condition: str, depth_limit: int = 1) -> str:
    """The condition with a line break before each && / || at parenthesis depth <= depth_limit
    (outside string literals), indented by depth: CEL ignores the breaks, a reader does not."""
    out, depth, quoted, escaped, index = [], 0, False, False, 0
    while index < len(condition):
        char = condition[index]
        if quoted:
            escaped, quoted = (not escaped and char == "\\"), quoted and (escaped or char != '"')
        elif char == '"':
            quoted = True
        elif char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        elif depth <= depth_limit and condition.startswith((" && ", " || "), index):
            out.append("\n" + "  " * depth + condition[index + 1:index + 3])
            index += 3
            continue
        out.append(char)
        index += 1
    return "".join(out)


_Dumper.add_representer(str, _text)


def rules_yaml(rules: list[Converted], header: str = "") -> str:
    entries = [{**r.entry, "condition": layout(r.entry["condition"])} if "condition" in r.entry else r.entry
               for r in rules]
    body = yaml.dump(entries, Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                     width=float("inf"), default_flow_style=None)
    return header + body
