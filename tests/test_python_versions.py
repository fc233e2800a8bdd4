"""The Python versions the README promises are the ones pyproject.toml lets pip install on."""

from __future__ import annotations

import re
import tomllib

from jikimi_host.paths import REPO_ROOT


def test_the_readme_states_the_python_versions_pyproject_allows():
    spec = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low, below = (int(n) for n in re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec).groups())
    assert low >= 11, "the relay reads its config with tomllib (Python 3.11)"
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"Python 3.{low}-3.{below - 1}" in readme
