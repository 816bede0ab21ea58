"""The project as a user installs it: a wheel (``pip install .``) in a fresh virtual environment,
its console scripts run from another folder, results under that folder's outputs/."""

import json
import shutil
import subprocess
import sys
import venv

import pandas as pd
import pytest
from conftest import ROOT

SKIP = shutil.ignore_patterns(".git", "build", "dist", "outputs", "multirun", "*.egg-info", "__pycache__",
                              ".pytest_cache", ".ruff_cache", ".devsite", "scratch", "*.parquet", "docs")


def sh(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of this checkout, installed into a fresh venv (the rest of the
    dependencies from this environment: the venv sees its site-packages, not this checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    sh(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", src)
    wheel = next((tmp / "dist").glob("*.whl"))
    env_dir = tmp / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    py = env_dir / "bin" / "python"
    sh(py, "-m", "pip", "install", "-q", "--no-deps", "--ignore-installed", "--no-index", wheel)
    return {"bin": env_dir / "bin", "python": py, "wheel": wheel}


def test_the_wheel_carries_the_configs(installed):
    import zipfile

    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for conf in ["config.yaml", "report.yaml", "sweep/smoke.yaml", "sweep/full.yaml", "workload/encoder.yaml",
                 "hydra/help/sweep.yaml", "hydra/job_logging/sweep.yaml"]:
        assert f"orchestrator/conf/{conf}" in names, conf


@pytest.mark.slow
def test_an_installed_sweep_runs_from_any_folder(installed, tmp_path):
    where = sh(installed["python"], "-c", "import orchestrator; print(orchestrator.__file__)", cwd=tmp_path)
    assert str(installed["bin"].parent) in where.stdout and str(ROOT) not in where.stdout  # the wheel, not the checkout
    sweep = sh(installed["bin"] / "attn-sweep", "+sweep=smoke", "grid.backends=[math,flash]", cwd=tmp_path)
    assert "4 cells run (4 ok)" in sweep.stdout, sweep.stdout[-2000:]
    df = pd.read_parquet(tmp_path / "outputs" / "results")  # under the folder it ran from
    assert len(df) == 4 and (df.status == "ok").all()
    assert df.git_commit.isna().all() and (df.tool_version == "0.1.0").all()
    runs = list((tmp_path / "outputs" / "runs").glob("*/*_smoke"))
    assert len(runs) == 1 and (runs[0] / "report.html").is_file() and (runs[0] / "sweep.log").is_file()
    again = sh(installed["python"], "-m", "orchestrator", "+sweep=smoke", "grid.backends=[math,flash]", cwd=tmp_path)
    assert "0 cells run" in again.stdout and "4 already done" in again.stdout
    report = sh(installed["bin"] / "attn-report", "+sweep=smoke", f"output_dir={tmp_path / 'rep'}", cwd=tmp_path)
    assert (tmp_path / "rep" / "summary.md").is_file(), report.stdout[-1000:]
    helptext = sh(installed["bin"] / "attn-sweep", "--help", cwd=tmp_path).stdout
    assert "+sweep=NAME" in helptext and "smoke" in helptext
    saved = json.loads(next((tmp_path / "outputs" / "results.meta" / "runs").glob("*.json")).read_text())
    assert saved["config"]["sweep_name"] == "smoke"
