"""prm-search scored by a REAL process reward model (vLLM's pooling API), through the gateway.

The PRM server is started for this module only (the machine has two cores). SmolLM2 with a
No/Yes head is not a trained PRM: the wire, batching, errors and latency are real, the scores
are not meaningful.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import SHIPPED_CONFIG, local_server, running_gateway
from tests.integration.test_strategies import delta, vllm_metrics

pytestmark = pytest.mark.integration

EXAMPLE = SHIPPED_CONFIG.parent / "examples" / "prm.yaml"


@pytest.fixture(scope="module")
def prm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with local_server(tmp_path_factory.mktemp("vllm-prm"), "prm backend", kind="prm") as url:
        yield url


@pytest.fixture(scope="module")
def prm_gateway(
    prm_url: str, backend_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway on the shipped PRM example, pointed at the test servers."""
    config: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    pools = {b["name"]: b for b in config["backends"]}
    pools["default"]["replicas"] = [backend_url]
    pools["prm"]["replicas"] = [prm_url]
    path: Path = tmp_path_factory.mktemp("prm-gateway") / "prm.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with running_gateway(path, path.parent) as url:
        yield url


def test_prm_search_with_real_prm(prm_gateway: str, prm_url: str, backend_url: str) -> None:
    body = {
        "model": "prm-search",
        "max_tokens": 48,
        "messages": [
            {
                "role": "user",
                "content": "Tom has 3 apples and buys 4 more. How many apples does he have?",
            }
        ],
    }
    gen_before, prm_before = vllm_metrics(backend_url), vllm_metrics(prm_url)
    r = httpx.post(prm_gateway + "/v1/chat/completions", json=body, timeout=300)
    gen_after, prm_after = vllm_metrics(backend_url), vllm_metrics(prm_url)
    assert r.status_code == 200, r.text
    data = r.json()
    ext = data["deliberate"]
    assert ext["scorer"] == "prm" and ext["verifier_calls"] >= 1
    assert ext["prm_seconds"] > 0
    # PRM inputs count as prompt tokens of the request; every generated token is counted.
    prm_prompt = delta(prm_before, prm_after, "vllm:prompt_tokens_total")
    assert prm_prompt > 0
    assert data["usage"]["prompt_tokens"] > prm_prompt
    assert data["usage"]["completion_tokens"] == delta(
        gen_before, gen_after, "vllm:generation_tokens_total"
    )


def test_ready_checks_the_prm_pool(prm_gateway: str) -> None:
    r = httpx.get(prm_gateway + "/ready", timeout=10)
    assert r.status_code == 200
    assert set(r.json()["backends"]) == {"default", "prm"}
