"""CEL policy: rule files (YAML: list / macro / rule) -> compiled rules indexed by event kind.

    from monitor.policy import load_rules, PolicyError, DEFAULT_RULES_DIR
    rules = load_rules([DEFAULT_RULES_DIR], audit=False)   # PolicyError: "file:line: rule 'x': why"
    alerts = rules.evaluate(event)                         # list[monitor.event.Alert]
    rules.reload()            # SIGHUP: keeps the previous set (and returns False) when the new one is bad
    rules.reload_if_changed() # file-change polling; RuleWatcher(rules).start() does it on a thread

Engine: cel-expr-python (C++ CEL), one activation per event, programs compiled once at load; a
Python pre-filter (a necessary condition derived from the CEL, see prefilter.py) skips CEL for events
that cannot match. Evaluation errors are counted per rule in `eval_errors` and logged once.

Rule files: a folder loads its *.yaml files (not sub-folders). Lists and macros share one namespace
across all loaded files; a rule whose name appears again in a later file replaces the earlier one
(so a site file can retune a pack rule). Fixtures for `monitor rules test` live in `tests/<same
file name>` beside each rule file (rules/tests/execution.yaml for rules/execution.yaml):
    - rule: NAME
      match:    [ {kind: exec, process: {...}}, ... ]   # partial Event dicts that must alert
      no_match: [ ... ]                                   # and that must not

The default pack (rules/*.yaml) only alerts (and kills nothing): a rule pack that stops agents on
a false positive costs more trust than it buys. Kernel `deny` rules ship opt-in in rules/enforce/
(add `--rules rules/enforce`): deny exec of miners and netcat-like tools, deny connects to cloud
metadata endpoints. A `deny` rule must be kernel-compilable (see deny.py); its `rule.deny_spec`
holds the executable paths/prefixes or (cidr, port) pairs for the BPF maps.

llm tool calls: `event.llm.tool_calls[].arguments` is a JSON-encoded string (OpenAI's wire form;
the llm source serialises Anthropic's `input` object with json.dumps), so rules match it as text.
"""

from __future__ import annotations

from pathlib import Path

from monitor.policy.deny import DenySpec
from monitor.policy.errors import PolicyError
from monitor.policy.loader import Selector
from monitor.policy.ruleset import Rule, RuleSet, RuleWatcher, lint_paths, load_rules, selector_predicate

DEFAULT_RULES_DIR = Path(__file__).resolve().parents[2] / "rules"

__all__ = ["DEFAULT_RULES_DIR", "DenySpec", "PolicyError", "Rule", "RuleSet", "RuleWatcher",
           "Selector", "lint_paths", "load_rules", "selector_predicate"]
