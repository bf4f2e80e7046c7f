"""The README's commands work as written: the quick start runs, and CI runs the test command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def _command_under(heading: str) -> str:
    """Return the first shell block after ``heading``, joined into one line."""
    section = README.split(f"## {heading}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return block.replace("\\\n", " ")


def _adapterhub_steps(command: str) -> list[str]:
    """Split a command on ``&&`` and keep the adapterhub invocations, in order."""
    return [step.strip() for step in command.split("&&") if step.strip().startswith("adapterhub ")]


def test_quick_start_runs(tmp_path):
    shutil.copytree(PROJECT_ROOT / "examples", tmp_path / "examples")
    steps = _adapterhub_steps(_command_under("Quick start"))
    executable = str(Path(sys.executable).parent / "adapterhub")
    environment = {"ADAPTERHUB_HOME": str(tmp_path / "home"), "PATH": str(Path(sys.executable).parent)}

    outputs = []
    for step in steps:
        result = subprocess.run([executable, *step.split()[1:]], cwd=tmp_path, env=environment,
                                capture_output=True, text=True)
        assert result.returncode == 0, (step, result.stderr)
        outputs.append(result.stdout)

    assert len(steps) == 4
    assert outputs[2].startswith("stored ")
    assert "recipe:      svd (rank=8)" in outputs[3]
    assert "  +0.6 × style  sha256:" in outputs[3]


def test_quick_start_installs_cpu_torch_first():
    command = _command_under("Quick start")

    assert command.index("pip install torch==2.13.0") < command.index("pip install -e .")


def test_ci_runs_the_readme_test_command():
    ci_script = (PROJECT_ROOT / ".ci" / "run").read_text()
    steps = [step.strip() for step in _command_under("Tests").split("&&")]

    lines = [line.strip() for line in ci_script.splitlines()]
    assert steps[0] == "python3 -m venv .venv"
    for step in steps:
        assert step in lines, step
