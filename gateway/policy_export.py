"""``GET /v1/policy/export``: the policy file with the live quality tables written in.

The online tables (``routing.online``) only ever live in memory; this is the one way out. The
exported file is the loaded policy file (as parsed YAML, so comments are not kept) with each
live quality in its route's ``measured`` table; it passes ``deliberate check-config``.
"""

from __future__ import annotations

from typing import Any

import yaml

from gateway.services import Services
from routing.loader import ConfigError, load_config
from routing.online import exported


def export_policy(services: Services) -> tuple[str, int]:
    """(YAML text, observations written in)."""
    raw = _source(services)
    snapshot = services.online.snapshot()
    observations = sum(int(v["observations"]) for c in snapshot.values() for v in c.values())
    return yaml.safe_dump(exported(raw, services.online), sort_keys=False), observations


def _source(services: Services) -> dict[str, Any]:
    """The policy file as parsed YAML when the serving policy came from it (the file may also
    have changed since, or the app was built from an object): else the policy's set fields."""
    path = services.settings.config
    try:
        if path.is_file() and load_config(path) == services.config:
            raw = yaml.safe_load(path.read_text())
            if isinstance(raw, dict):
                return raw
    except (ConfigError, OSError, yaml.YAMLError):
        pass
    return services.config.model_dump(mode="json", exclude_unset=True, by_alias=True)
