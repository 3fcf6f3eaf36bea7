"""One structured JSON line per finished request on the ``deliberate.access`` logger.

Route, class, decision, tokens by kind, TTFT, latency, outcome — never a key, and the prompt
only when ``DELIBERATE_LOG_PROMPTS`` is set.
"""

from __future__ import annotations

import logging
import time

import orjson

from gateway.context import RequestContext
from metrics.registry import RequestRecord

log = logging.getLogger("deliberate.access")


def access_line(ctx: RequestContext, rec: RequestRecord) -> bytes:
    u = rec.usage
    line = {
        "ts": round(time.time(), 3),
        "request_id": ctx.request_id,
        "route": rec.route,
        "strategy": rec.strategy,
        "backend": ctx.backend,
        "class": ctx.decision.request_class if ctx.decision else None,
        "decision": ctx.decision.header_reason() if ctx.decision else None,
        "requested_route": ctx.requested_route,
        "downgrade": ctx.downgrade_cause,
        "tenant": ctx.tenant,
        "outcome": rec.outcome,
        "tokens": {"prompt": u.prompt, "visible": u.visible, "hidden": u.hidden},
        "ttft_ms": None if rec.ttft_s is None else round(rec.ttft_s * 1000, 2),
        "latency_ms": round(rec.duration_s * 1000, 2),
    }
    if ctx.prompt_preview is not None:
        line["prompt"] = ctx.prompt_preview
    return orjson.dumps(line)


def log_access(ctx: RequestContext, rec: RequestRecord) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(access_line(ctx, rec).decode())
