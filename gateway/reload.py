"""Hot reload of the policy file: poll it, validate it, swap the policy state atomically.

An invalid file (or one that changes ``backends``, which needs a restart to re-pool
connections) keeps the old policy; the failure is logged line by line and counted. Requests
in flight keep the state they started with (``services.state`` is read once per request).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from budgets.tenants import TenantDirectory
from gateway.policy_state import PredictorUnavailable, build_state, init_metrics
from gateway.services import Services
from routing.loader import ConfigError, load_config

log = logging.getLogger(__name__)


class ConfigWatcher:
    def __init__(
        self,
        path: Path,
        services: Services,
        interval_s: float,
        seen: tuple[int, ...] | None = None,
    ) -> None:
        self.path = path
        self.services = services
        self.interval_s = interval_s
        self._seen = seen if seen is not None else self._stamp()

    def _stamp(self) -> tuple[int, ...] | None:
        """What identifies a version of the file: a replaced file (new inode), an edit (mtime,
        ctime, size) — ctime also moves when a copy keeps the old mtime."""
        return file_stamp(self.path)

    def reload(self) -> bool:
        """Load, validate and swap in the policy file now; False (old policy kept) on error."""
        services = self.services
        self._seen = self._stamp()  # also after a SIGHUP, so the poller does not repeat it
        try:
            cfg = load_config(self.path)
            if cfg.backends != services.config.backends:
                raise ConfigError(
                    [f"{self.path}:backends: changed; backend pools need a restart to apply"]
                )
            state = build_state(cfg, self.path, services.online)
            if cfg.policy is not None:
                services.online.step = cfg.policy.online_update.step
        except ConfigError as e:
            for line in e.lines:
                log.error("config reload failed, keeping the current policy: %s", line)
            services.metrics.config_reloads.labels("error").inc()
            return False
        except PredictorUnavailable as e:
            log.error("config reload failed, keeping the current policy: %s", e)
            services.metrics.config_reloads.labels("error").inc()
            return False
        services.state = state
        init_metrics(services.metrics, cfg)
        services.budgets.tenants = TenantDirectory.build(cfg.tenants, os.environ)
        for warning in services.budgets.tenants.warnings:
            log.warning("config: %s", warning)
        services.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded from %s", self.path)
        return True

    async def run(self) -> None:
        """Poll the file every ``interval_s``; reload when its mtime or size changes."""
        while True:
            await asyncio.sleep(self.interval_s)
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                try:
                    self.reload()
                except Exception:  # never let one bad reload end hot reload for good
                    log.exception("config reload failed unexpectedly; keeping the current policy")
                    self.services.metrics.config_reloads.labels("error").inc()


def file_stamp(path: Path) -> tuple[int, ...] | None:
    """The stamp of ``path`` as the watcher compares it (taken when the file is first read)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size
