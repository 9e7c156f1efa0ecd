"""compose.yaml stays consistent with the code (no Docker engine runs here to try it):
settings it sets exist and validate, commands exist, model files and templates match."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from core.models import MODELS
from core.settings import Settings

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SIEVE_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "sieve:latest"}


def test_every_sieve_service_has_settings_that_validate(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(SIEVE_SERVICES) == {"api", "worker", "finetune-worker", "models"}
    for name, service in SIEVE_SERVICES.items():
        for key in [k for k in os.environ if k.startswith("SIEVE_")]:
            monkeypatch.delenv(key)
        for key, value in service["environment"].items():
            assert key.startswith("SIEVE_"), f"{name}: {key}"
            field = key.removeprefix("SIEVE_").lower().split("__")[0]
            assert field in Settings.model_fields, f"{name}: {key} is not a setting"
            monkeypatch.setenv(key, str(value))
        settings = Settings()
        if name != "models":
            assert settings.qdrant_url and settings.redis_url and settings.database_url
            assert settings.small.url and settings.large.url
            assert settings.small.stop == ["\n\n", "\nQuestion:"]
    assert Settings.model_validate({}).run_worker_in_api  # the embedded default
    assert SERVICES["api"]["environment"]["SIEVE_RUN_WORKER_IN_API"] == "false"


def test_commands_exist() -> None:
    from cli.main import app, models_app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands}
    groups = {g.name for g in app.registered_groups}
    for name, service in SIEVE_SERVICES.items():
        command = service["command"]
        assert command[0] == "sieve" and (command[1] in commands or command[1] in groups), name
    assert "prepare" in {c.name for c in models_app.registered_commands}


def test_model_servers_load_what_models_prepare_writes() -> None:
    defaults = Settings.model_validate({})
    for service, tier in (("small-model", defaults.small), ("large-model", defaults.large)):
        command = _command_line(service)
        assert f"/models/{MODELS[tier.gguf].filename}" in command, service
        assert f"--alias {tier.model}" in command
        if tier.chat_template:
            template = re.search(r"--chat-template-file /templates/(\S+)", command).group(1)
            assert (REPO / "core" / "templates" / template).is_file()
            assert template == f"{tier.chat_template}.jinja"


def _command_line(service: str) -> str:
    command = SERVICES[service]["command"]
    return " ".join(command) if isinstance(command, list) else command


def test_small_model_server_loads_every_fine_tuned_adapter(tmp_path: Path) -> None:
    """Runs small-model's shell command with `echo` in place of llama-server, over a copy of
    the adapters folder the fine-tuning jobs write to."""
    from finetune.registry import adapters_dir

    service = SERVICES["small-model"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    volume_dir = Path(SIEVE_SERVICES["worker"]["environment"]["SIEVE_DATA_DIR"])
    assert f"sieve-data:{volume_dir}:ro" in service["volumes"]
    script = service["command"][0].replace("$$", "$")  # compose's escape for a literal $
    assert f"{adapters_dir(volume_dir)}/*/*.gguf" in script
    script = script.replace("exec /app/llama-server", "exec echo").replace(str(volume_dir), str(tmp_path))

    def server_args() -> list[str]:
        return subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True).stdout.split()

    assert "--lora-scaled" not in server_args()  # no adapters yet: the base model alone
    for ident in ("legal-0a1b2c3d4e5f", "finance-9f8e7d6c5b4a"):
        (adapters_dir(tmp_path) / ident).mkdir(parents=True)
        (adapters_dir(tmp_path) / ident / f"{ident}.gguf").write_bytes(b"GGUF")
    (adapters_dir(tmp_path) / "legal-0a1b2c3d4e5f" / "adapter.json").write_text("{}")
    args = server_args()
    loaded = [args[i + 1] for i, arg in enumerate(args) if arg == "--lora-scaled"]
    assert sorted(loaded) == sorted(
        f"{adapters_dir(tmp_path) / ident / ident}.gguf:0" for ident in ("legal-0a1b2c3d4e5f", "finance-9f8e7d6c5b4a")
    )
    assert args[:2] == ["-m", "/models/gemma-3-270m-q4_k_m.gguf"]


def test_the_image_holds_every_package() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    pyproject = (REPO / "pyproject.toml").read_text()
    packages = re.search(r'include = \[(.*?)\]', pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} {package}" in dockerfile, package
    assert "torch==2.13.0" in dockerfile


def test_named_volumes_are_declared() -> None:
    used = set()
    for service in SERVICES.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                used.add(source)
    assert used <= set(COMPOSE["volumes"])
