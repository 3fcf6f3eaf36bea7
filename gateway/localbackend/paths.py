"""Where the local vLLM-CPU backend lives on disk, and the error every step of it raises.

Everything the local backend writes is derived from ONE cache directory, so deleting that
directory is a complete uninstall and tests can point the whole thing at a temp dir.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SERVED_MODEL_NAME = "smollm2-135m-instruct"
"""The model name clients send in `"model"` to the generate server (the PRM server adds `-prm`)."""

MODEL_DIR_NAME = "SmolLM2-135M-Instruct"

Progress = Callable[[str], None]
"""Receives one human-readable line per event ("[1/3] vLLM venv: already present")."""


class BackendSetupError(Exception):
    """A step of setting up, starting or stopping the local backend failed.

    `str(error)` is meant for the user as-is: it names the step that failed, what went wrong
    (with the relevant log lines) and what to do about it.
    """


def _absolute(path: Path) -> Path:
    # Relative paths would silently change meaning once a server runs with cwd=run_dir.
    return path.expanduser().absolute()


def default_cache_dir() -> Path:
    """`$DELIBERATE_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/deliberate` (empty = unset)."""
    explicit = os.environ.get("DELIBERATE_CACHE_DIR", "")
    if explicit:
        return _absolute(Path(explicit))
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return _absolute(base / "deliberate")


@dataclass(frozen=True)
class BackendPaths:
    """All on-disk locations of the local backend; every path is absolute.

    - `venv`: the vLLM-CPU virtualenv (kept apart from the gateway's own environment).
    - `model_dir`: the Hugging Face directory converted from the GGUF (model.safetensors,
      config.json, tokenizer files, chat_template.jinja). It exists only when complete.
    - `run_dir`: pid files and server logs (`<kind>-<port>.pid` / `.log`).
    """

    cache_dir: Path
    venv: Path
    model_dir: Path
    run_dir: Path

    @classmethod
    def default(cls, cache_dir: Path | None = None, run_dir: Path | None = None) -> BackendPaths:
        """Derive every path from `cache_dir` (default: see `default_cache_dir`).

        Reads the environment only when `cache_dir` is not given; creates nothing on disk.
        """
        root = _absolute(cache_dir) if cache_dir is not None else default_cache_dir()
        return cls(
            cache_dir=root,
            venv=root / "vllm-venv",
            model_dir=root / "models" / MODEL_DIR_NAME,
            run_dir=_absolute(run_dir) if run_dir is not None else root / "run",
        )

    @property
    def venv_python(self) -> Path:
        """The vLLM venv's interpreter (the only way vLLM is ever run)."""
        return self.venv / "bin" / "python"

    @property
    def downloads_dir(self) -> Path:
        """Where the GGUF is kept after extraction, so a re-conversion needs no network."""
        return self.cache_dir / "downloads"

    @property
    def setup_log(self) -> Path:
        """Output of pip and of the GGUF conversion, for error messages and post-mortems."""
        return self.run_dir / "setup.log"
