"""`LlamaServer` starts again without weight repacking after a crash while loading.

A real llama-server dies of SIGILL (or SIGSEGV) while loading only on a CPU that advertises
an instruction set it does not run (AMX in some virtual machines), which a test cannot
choose; so these tests start a stand-in binary that does what such a server does: it dies of
the signal `FAKE_SIGNAL` names unless given `--no-repack`, and otherwise answers `/health`
like llama-server.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from core.errors import ModelError
from core.runtime import LlamaServer

FAKE_SERVER = """\
import http.server, os, signal, sys
args = sys.argv[1:]
if "--help" in args:
    print("--no-webui\\n--repack, -nr, --no-repack   whether to enable weight repacking")
    sys.exit(0)
if os.environ.get("FAKE_EXIT_CODE"):
    sys.exit(int(os.environ["FAKE_EXIT_CODE"]))
if "--no-repack" not in args:
    os.kill(os.getpid(), getattr(signal, os.environ["FAKE_SIGNAL"]))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')
    def log_message(self, *_):
        pass

http.server.HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Health).serve_forever()
"""


@pytest.fixture
def binary(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "llama-server"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\n{FAKE_SERVER}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


def _argv_logged(log: Path) -> str:
    return log.read_text().splitlines()[0]


@pytest.mark.parametrize("crash", ["SIGILL", "SIGSEGV"])
async def test_a_crash_while_loading_starts_it_again_without_repacking(
    tmp_path: Path, binary: Path, gguf: Path, crash: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SIGNAL", crash)
    server = LlamaServer(gguf, data_dir=tmp_path / "first", binary=binary)
    await server.start(timeout_s=30)
    try:
        assert server.running
        assert "--no-repack" in _argv_logged(server.log_path)
        crashed = server.log_path.with_name(server.log_path.name + ".1")
        assert "--no-repack" not in _argv_logged(crashed)
    finally:
        await server.stop()

    later = LlamaServer(gguf, data_dir=tmp_path / "later", binary=binary)  # no second crash
    await later.start(timeout_s=30)
    try:
        assert "--no-repack" in _argv_logged(later.log_path)
        assert not later.log_path.with_name(later.log_path.name + ".1").exists()
    finally:
        await later.stop()


async def test_any_other_exit_while_starting_is_an_error_without_a_second_try(
    tmp_path: Path, binary: Path, gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EXIT_CODE", "3")
    server = LlamaServer(gguf, data_dir=tmp_path, binary=binary)
    with pytest.raises(ModelError, match="exited with code 3"):
        await server.start(timeout_s=30)
    assert server.start_exit_code == 3 and not server.running
    assert not server.log_path.with_name(server.log_path.name + ".1").exists()
