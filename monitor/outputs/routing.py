"""Which alerts an output takes: a minimum severity, rule names and tags to include or exclude
(shell globs), and sandboxes in the rules' own selector shape ({names, labels, images})."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.event import Alert
from monitor.outputs.payload import SEVERITY_RANK
from monitor.policy import Selector, selector_predicate


@dataclass(slots=True)
class Route:
    min_severity: str = "info"
    rules_include: list[str] = field(default_factory=list)
    rules_exclude: list[str] = field(default_factory=list)
    tags_include: list[str] = field(default_factory=list)
    tags_exclude: list[str] = field(default_factory=list)
    sandboxes: Selector | None = None
    _selects: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        self._selects = selector_predicate(self.sandboxes) if self.sandboxes is not None else None

    def accepts(self, alert: Alert) -> bool:
        if SEVERITY_RANK.get(alert.severity, 0) < SEVERITY_RANK[self.min_severity]:
            return False
        if self.rules_include and not _any_match(alert.rule, self.rules_include):
            return False
        if self.rules_exclude and _any_match(alert.rule, self.rules_exclude):
            return False
        if self.tags_include and not any(_any_match(tag, self.tags_include) for tag in alert.tags):
            return False
        if self.tags_exclude and any(_any_match(tag, self.tags_exclude) for tag in alert.tags):
            return False
        return self._selects is None or self._selects(alert.event.sandbox)


def _any_match(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)
