"""The README stays true to the code: its commands and every dataset column."""

from conftest import ROOT

from orchestrator.rows import COLUMNS

README = (ROOT / "README.md").read_text()


def test_readme_documents_every_column():
    missing = [name for name, _, _ in COLUMNS if f"| `{name}` |" not in README]
    assert not missing, f"README lacks columns: {missing}"


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    assert "\n    pip install torch==2.13.0 && pip install -e . && python -m orchestrator\n" in README
    test_cmd = "pip install torch==2.13.0 && pip install -e '.[test]' && pytest"
    assert f"\n    {test_cmd}\n" in README
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_names_every_sweep():
    for sweep in (ROOT / "conf" / "sweep").glob("*.yaml"):
        assert sweep.stem in README, sweep.stem
