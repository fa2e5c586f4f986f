"""The job listing on captured scheduler output shapes, and its merge with server state.

No scheduler runs here: qstat answers come from tests/fixtures/qstat (PBS Pro's
`qstat -f -F json` shapes) through a stand-in `qstat` on PATH, squeue lines are literal.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from node_runtime.jobs import JobListingError, list_jobs, parse_job_name
from node_runtime.schedulers.common import seconds
from node_runtime.schedulers.pbspro import parse_qstat_json
from node_runtime.schedulers.slurm import parse_squeue
from node_runtime.server_files import ServerPaths, ServerState, model_key, write_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "qstat"
LLAMA_8B = "sophia-llama-3-1-8b-instruct"
LLAMA_405B = "sophia-llama-3-1-405b-instruct"
ENDPOINTS = {
    LLAMA_8B: "meta-llama/Meta-Llama-3.1-8B-Instruct",
    LLAMA_405B: "meta-llama/Meta-Llama-3.1-405B-Instruct",
}


def qstat_fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


@pytest.fixture
def fake_qstat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `qstat` on PATH that prints whichever fixture the test copies to answer.json."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "qstat"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'answer.json'}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "answer.json"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("parsl.sophia-llama-3-1-8b-HighThroughputExecutor.block-0.1732700000.12", 0),
        ("parsl.sophia-llama-3.1-8b-HighThroughputExecutor.block-12.1732700000", 12),
        ("parsl.sophia-llama-3-1-8b.block-1.1732700000.5", 1),  # a plain Parsl executor
        ("parsl.sophia-llama-3-1-8b-MPIExecutor.block-2.1732700000.5", 2),
    ],
)
def test_a_parsl_block_name_gives_its_endpoint(name: str, expected: int) -> None:
    parsed = parse_job_name(name)
    assert parsed is not None
    assert parsed[1] == expected
    assert parsed[0] in ("sophia-llama-3-1-8b", "sophia-llama-3.1-8b")


@pytest.mark.parametrize("name", ["vllm_bench", "parsl.x.block-a.1", "parsl..block-0.1", ""])
def test_other_job_names_are_not_ours(name: str) -> None:
    assert parse_job_name(name) is None


def test_a_queued_job_carries_the_schedulers_comment() -> None:
    [job] = parse_qstat_json(qstat_fixture("queued.json"))
    assert (job.endpoint, job.block, job.scheduler_state, job.scheduler_code) == (
        LLAMA_8B,
        2,
        "queued",
        "Q",
    )
    assert job.reason == "Not Running: Insufficient amount of resource: ngpus (R: 8 A: 0 T: 192)"
    assert (job.nodes, job.node_count, job.queue) == ((), 1, "by-node")
    assert (job.walltime_used_s, job.walltime_s, job.started_at) == (None, 86400, None)


def test_a_running_job_has_its_nodes_and_walltime_used() -> None:
    [job] = parse_qstat_json(qstat_fixture("running.json"))
    assert job.job_id == "412102.sophia-pbs-01.lab.alcf.anl.gov"
    assert (job.scheduler_state, job.reason) == ("running", None)
    assert job.nodes == ("sophia-gpu-05",)
    assert (job.walltime_used_s, job.walltime_s) == (2 * 3600 + 14 * 60 + 7, 86400)
    assert job.started_at == time.mktime((2024, 11, 27, 9, 10, 5, 0, 0, -1))


def test_a_finished_job_from_qstat_x_has_its_exit_status() -> None:
    [job] = parse_qstat_json(qstat_fixture("finished.json"))
    assert (job.scheduler_state, job.scheduler_code, job.exit_status) == ("finished", "F", 0)
    assert job.walltime_used_s == 2 * 3600 + 3 * 60 + 11


def test_a_whole_server_listing_keeps_only_parsl_blocks() -> None:
    found = {
        job.job_id.split(".")[0]: job for job in parse_qstat_json(qstat_fixture("several.json"))
    }
    assert sorted(found) == ["412102", "412377", "412380", "412391"]  # no array, no user job
    big = found["412380"]
    assert big.nodes == ("sophia-gpu-07", "sophia-gpu-08", "sophia-gpu-09", "sophia-gpu-10")
    assert (big.node_count, big.endpoint) == (4, LLAMA_405B)
    held = found["412391"]
    assert (held.scheduler_state, held.reason) == (
        "held",
        "job held, too many failed attempts to run",
    )


def test_no_jobs_at_all() -> None:
    assert parse_qstat_json(qstat_fixture("empty.json")) == []


def test_unreadable_qstat_output_is_a_clear_error() -> None:
    with pytest.raises(JobListingError, match="not JSON"):
        parse_qstat_json("qstat: cannot connect to server sophia-pbs-01 (errno=15010)")


def test_squeue_lines_map_to_jobs() -> None:
    name = "parsl.polaris-llama-HighThroughputExecutor.block-0.1732700000.1"
    text = "\n".join(
        [
            f"77|PENDING|Resources|2|0:00|1-00:00:00|N/A|gpu||{name}",
            f"78|RUNNING|None|4|1:02:03|1-00:00:00|2024-11-27T09:10:05|gpu|nid[001-004]|{name}",
            "79|RUNNING|None|1|5:00|10:00|2024-11-27T09:10:05|gpu|nid005|someone_else",
        ]
    )
    queued, running = parse_squeue(text, expand=lambda s: ["nid001", "nid002", "nid003"])
    assert (queued.scheduler_state, queued.reason, queued.nodes) == ("queued", "Resources", ())
    assert (queued.walltime_used_s, queued.walltime_s, queued.started_at) == (0, 86400, None)
    assert (running.scheduler_state, running.reason, running.node_count) == ("running", None, 4)
    assert running.nodes == ("nid001", "nid002", "nid003")
    assert running.walltime_used_s == 3723


@pytest.mark.parametrize(
    ("text", "expected"),
    [("24:00:00", 86400), ("1-02:03:04", 93784), ("10:00", 600), ("0:00", 0), ("UNLIMITED", None)],
)
def test_walltimes(text: str, expected: int | None) -> None:
    assert seconds(text) == expected


def test_the_model_folder_name_is_the_runtimes(tmp_path: Path) -> None:
    for name in ("meta-llama/Meta-Llama-3.1-8B-Instruct", "tiny-llama", "a b:c@d"):
        assert model_key(name) == ServerPaths.for_model(str(tmp_path), name).root.name


def _record_server(
    state_dir: Path,
    node: str,
    model: str,
    *,
    ready: bool,
    idle_s: float,
    alive: bool = True,
    pid: int = 1,
    role: str = "interactive",
) -> None:
    paths = ServerPaths(state_dir / node / model_key(model, role))
    paths.root.mkdir(parents=True)
    now = time.time()
    if alive:
        state = ServerState(
            server_id="abc",
            name=model,
            framework="vllm",
            pid=pid,
            pid_ticks=None,
            pgid=1,
            port=8011,
            spec_hash="x",
            started_at=now - 600,
            ready_at=now - 500 if ready else 0.0,
            idle_timeout_s=7200.0,
            stop_grace_s=10.0,
            anchors=((1, None),),
            role=role,
        )
        write_state(paths, state)
    paths.last_use.touch()
    os.utime(paths.last_use, (now - idle_s, now - idle_s))


def _states(answer: Path, state_dir: Path | None) -> dict[str, str]:
    listing = list_jobs("pbspro", ENDPOINTS, str(state_dir) if state_dir else None)
    assert listing["listing_version"] == 1
    json.dumps(listing)  # travels as a task result
    return {job["job_id"].split(".")[0]: job["state"] for job in listing["jobs"]}


def test_states_merge_the_servers_on_each_jobs_nodes(fake_qstat: Path, tmp_path: Path) -> None:
    fake_qstat.write_text(qstat_fixture("several.json"))
    state_dir = tmp_path / "servers"
    # 412102 runs 8B on sophia-gpu-05; 412380 runs 405B on sophia-gpu-07..10.
    _record_server(state_dir, "sophia-gpu-05", ENDPOINTS[LLAMA_8B], ready=True, idle_s=2)
    _record_server(state_dir, "sophia-gpu-07", ENDPOINTS[LLAMA_405B], ready=False, idle_s=9)
    # The mistral job (412391) is not in ENDPOINTS: left out.
    assert _states(fake_qstat, state_dir) == {
        "412102": "ready",
        "412377": "queued",
        "412380": "starting",
    }


def test_an_idle_server_and_a_retired_one_read_as_idle(fake_qstat: Path, tmp_path: Path) -> None:
    fake_qstat.write_text(qstat_fixture("several.json"))
    state_dir = tmp_path / "servers"
    _record_server(state_dir, "sophia-gpu-05", ENDPOINTS[LLAMA_8B], ready=True, idle_s=900)
    # The 405B server was stopped by its watchdog after the job started: no state file left.
    _record_server(
        state_dir, "sophia-gpu-07", ENDPOINTS[LLAMA_405B], ready=True, idle_s=60, alive=False
    )
    states = _states(fake_qstat, state_dir)
    assert (states["412102"], states["412380"]) == ("idle", "idle")


def test_without_readable_server_state_a_running_job_is_running(fake_qstat: Path) -> None:
    fake_qstat.write_text(qstat_fixture("running.json"))
    assert _states(fake_qstat, None) == {"412102": "running"}
    assert _states(fake_qstat, Path("/nonexistent")) == {"412102": "running"}


def test_a_running_job_with_no_server_yet_is_starting(fake_qstat: Path, tmp_path: Path) -> None:
    fake_qstat.write_text(qstat_fixture("running.json"))
    assert _states(fake_qstat, tmp_path) == {"412102": "starting"}


def test_a_failing_scheduler_command_names_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "qstat"
    script.write_text("#!/bin/sh\necho 'Connection refused' >&2\nexit 2\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(JobListingError, match="qstat -f -F json` failed with exit status 2"):
        list_jobs("pbspro", ENDPOINTS)


def test_an_unknown_scheduler_lists_the_known_ones() -> None:
    with pytest.raises(JobListingError, match="use one of pbspro, slurm, local"):
        list_jobs("no-such-scheduler", ENDPOINTS)


def test_local_lists_the_servers_on_this_host(tmp_path: Path) -> None:
    import socket

    _record_server(tmp_path, socket.gethostname(), "tiny-llama", ready=True, idle_s=1)
    [entry] = list_jobs("local", {"local-tiny-llama": "tiny-llama"}, str(tmp_path))["jobs"]
    assert (entry["endpoint"], entry["model"], entry["state"]) == (
        "local-tiny-llama",
        "tiny-llama",
        "ready",
    )


def test_a_dead_server_on_this_host_is_not_listed(tmp_path: Path) -> None:
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    _record_server(tmp_path, socket.gethostname(), "tiny-llama", ready=True, idle_s=1, pid=dead.pid)
    assert list_jobs("local", {"local-tiny-llama": "tiny-llama"}, str(tmp_path))["jobs"] == []


def test_a_batch_jobs_own_server_is_not_the_models(fake_qstat: Path, tmp_path: Path) -> None:
    """A batch server beside a model's job or on this host says nothing of the model's state."""
    import socket

    _record_server(tmp_path, socket.gethostname(), "tiny-llama", ready=True, idle_s=1, role="batch")
    assert list_jobs("local", {"local-tiny-llama": "tiny-llama"}, str(tmp_path))["jobs"] == []
    fake_qstat.write_text(qstat_fixture("several.json"))
    state_dir = tmp_path / "servers"
    _record_server(
        state_dir, "sophia-gpu-05", ENDPOINTS[LLAMA_8B], ready=True, idle_s=2, role="batch"
    )
    assert _states(fake_qstat, state_dir)["412102"] == "starting"
