"""The pySigma processing pipeline for our events: refuse log sources we do not see, map Sigma's
field names to neutral event-field names per category, refuse fields we do not capture."""

from __future__ import annotations

from dataclasses import dataclass

from sigma.correlations import SigmaCorrelationRule
from sigma.exceptions import SigmaTransformationError
from sigma.processing.conditions import LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations.base import DetectionItemTransformation, PreprocessingTransformation
from sigma.processing.transformations.fields import FieldMappingTransformation
from sigma.rule import SigmaDetectionItem, SigmaRule

from monitor.policy.sigma.fields import CATEGORIES, CATEGORY_FIELDS, UNCAPTURED


@dataclass
class RefuseLogsource(PreprocessingTransformation):
    """A rule whose log source has no counterpart among our event kinds is refused, named."""

    def apply(self, rule: SigmaRule | SigmaCorrelationRule) -> None:
        super().apply(rule)
        if not isinstance(rule, SigmaRule):
            return
        source = rule.logsource
        named = ", ".join(f"{key} {value}" for key, value in (
            ("product", source.product), ("category", source.category), ("service", source.service))
            if value) or "none"
        if source.product != "linux" or source.service is not None or source.category not in CATEGORIES:
            raise SigmaTransformationError(
                f"log source ({named}) is not one we see: product linux with category one of "
                f"{', '.join(CATEGORIES)}")


@dataclass
class RefuseUnmappedFields(DetectionItemTransformation):
    """After the mapping every field is a neutral name (it has a dot); anything else is refused."""

    category: str = ""

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> None:
        name = detection_item.field
        if name is None:
            raise SigmaTransformationError(
                "keyword (field-less) search: our events have no free text to search")
        if "." not in name:
            reason = UNCAPTURED.get(name) or (f"field '{name}' has no counterpart in our "
                                              f"{self.category} events")
            raise SigmaTransformationError(reason)


def event_pipeline() -> ProcessingPipeline:
    items = [ProcessingItem(RefuseLogsource(), identifier="monitor_logsource")]
    for category, mapping in CATEGORY_FIELDS.items():
        items.append(ProcessingItem(FieldMappingTransformation(dict(mapping)),
                                    rule_conditions=[LogsourceCondition(product="linux", category=category)],
                                    identifier=f"monitor_fields_{category}"))
        items.append(ProcessingItem(RefuseUnmappedFields(category=category),
                                    rule_conditions=[LogsourceCondition(product="linux", category=category)],
                                    identifier=f"monitor_refuse_{category}"))
    return ProcessingPipeline(items=items, name="sandbox-monitor events")
