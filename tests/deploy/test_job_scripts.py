"""The job scripts Parsl's real providers write for rendered endpoints (shell call captured)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inference_bundle.config.catalog import Catalog, load_catalog
from inference_bundle.rendering.render import render_catalog
from inference_bundle.rendering.verify import load_rendered

ROOT = Path(__file__).resolve().parents[2]


def submitted_script(
    cluster: str, endpoint: str, tmp_path: Path, answer: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, str]:
    """Submit one block through the endpoint's real provider; return (command, script)."""
    catalog = load_catalog(ROOT, cluster)
    profile = catalog.profile.model_copy(update={"network_interface": None})
    rendered = render_catalog(Catalog(profile=profile, entries=catalog.entries), ROOT / "templates")
    config = load_rendered(next(e for e in rendered if e.name == endpoint), tmp_path / "ep")
    provider = config.engine.executor.provider
    config.engine.shutdown()
    provider.script_dir = str(tmp_path)
    commands: list[str] = []

    def execute_wait(cmd: str, timeout: Any = None) -> tuple[int, str, str]:
        commands.append(cmd)
        return 0, answer, ""

    monkeypatch.setattr(provider, "execute_wait", execute_wait)
    provider.submit("process_worker_pool.py --fake-args", tasks_per_node=1, job_name=endpoint)
    [command] = commands
    script = Path(command.split()[-1]).read_text()
    return command, script


def test_pbspro_job_script_for_a_four_node_sophia_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "sophia-meta-llama-3-1-405b-instruct"
    command, script = submitted_script("sophia", name, tmp_path, "4242.sophia-pbs\n", monkeypatch)
    assert command.split()[:5] == ["qsub", "-q", "by-node", "-A", "argonne_tpc"]
    assert "#PBS -l select=4:ncpus=128:ngpus=8\n" in script
    assert "#PBS -l filesystems=home:eagle\n" in script
    assert "#PBS -l walltime=24:00:00\n" in script
    assert "conda activate /eagle/argonne_tpc/inference-service/envs/endpoint\n" in script
    assert 'mpiexec -n "$(sort -u "$PBS_NODEFILE" | wc -l)" --ppn 1 bash -c "$stage_weights"' in (
        script
    )
    assert '"$ray" start --head --port=6379' in script
    assert "process_worker_pool.py --fake-args" in script


def test_pbspro_job_script_for_a_single_node_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = "sophia-meta-llama-3-1-8b-instruct"
    _, script = submitted_script("sophia", name, tmp_path, "4243.sophia-pbs\n", monkeypatch)
    assert "#PBS -l select=1:ncpus=128:ngpus=8\n" in script
    assert "ray" not in script
    assert 'bash -c "$stage_weights"' in script


def test_slurm_job_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "example-slurm-qwen2-5-7b-instruct"
    command, script = submitted_script(
        "example-slurm", name, tmp_path, "Submitted batch job 77\n", monkeypatch
    )
    assert command.startswith("sbatch")
    assert "#SBATCH --partition=gpu\n" in script
    assert "#SBATCH --account=my_allocation\n" in script
    assert "#SBATCH --gpus-per-node=4\n" in script
    assert "#SBATCH --exclusive\n" in script
    assert "#SBATCH --time=720\n" in script or "#SBATCH --time=12:00:00\n" in script
    assert "#SBATCH --constraint=a100\n" in script
    assert "source /opt/inference-service/envs/endpoint/bin/activate\n" in script
