"""Prometheus metrics: names and labels live here only."""

from metrics.registry import Metrics, RequestRecord

__all__ = ["Metrics", "RequestRecord"]
