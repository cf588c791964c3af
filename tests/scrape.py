"""One /metrics response, parsed, read so that a series that vanished cannot pass for 0."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


class MissingSampleError(AssertionError):
    """No sample has the name and labels asked for: the series is not exported at all."""


class Scrape:
    """One /metrics response, parsed: sample values by name and labels."""

    def __init__(self, url: str) -> None:
        response = httpx.get(url, timeout=10)
        response.raise_for_status()
        self.text = response.text
        self.samples = [
            sample
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        ]

    def _matching(self, name: str, labels: dict[str, str]) -> list[float]:
        return [
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum of `name`'s samples whose labels include `labels`; at least one must exist,
        so a series that is not exported fails instead of reading as 0."""
        found = self._matching(name, labels)
        if not found:
            raise MissingSampleError(f"no sample {name}{labels or ''} in this scrape")
        return sum(found)

    def count(self, name: str, **labels: str) -> float:
        """Like `value`, but 0 when absent: only for a counter before anything increments it
        (prometheus_client exports a labelled series from its first increment on)."""
        return sum(self._matching(name, labels))

    def labels(self, name: str) -> list[dict[str, str]]:
        return [sample.labels for sample in self.samples if sample.name == name]
