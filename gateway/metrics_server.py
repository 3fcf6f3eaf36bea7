"""The optional second listener (``DELIBERATE_METRICS_BIND``) serving ``/metrics`` without a key.

For Prometheus on a private network while the public port keeps ``/metrics`` behind the admin
key. It is prometheus-client's own small threaded server, bound to the app's registry; it
serves nothing but the exposition text.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, start_http_server


def split_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` → (host, port); the form is validated in Settings."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def start_metrics_server(bind: str, registry: CollectorRegistry) -> Callable[[], None]:
    """Start serving ``registry`` on ``bind``; returns the function that stops it."""
    host, port = split_bind(bind)
    server, thread = start_http_server(port, addr=host, registry=registry)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
