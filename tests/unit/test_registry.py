"""pyproject.toml carries what the Comfy Registry requires (docs.comfy.org/registry/specifications)."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_has_the_registry_fields():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = data["project"], data["tool"]["comfy"]
    name = project["name"]
    assert len(name) < 100 and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", name)
    assert "comfyui" not in name.lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["description"] and project["requires-python"]
    assert "text" in project["license"] or "file" in project["license"]
    assert any(c.startswith("Operating System ::") for c in project["classifiers"])
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert re.fullmatch(r"[<>=!~]=?\s*\d+(\.\d+)*", comfy["requires-comfyui"])
    # required by the registry; the maintainers add it once the public repository exists
    repo_url = project.get("urls", {}).get("Repository")
    assert repo_url is None or repo_url.startswith("https://")
    assert "Repository" in (REPO / "pyproject.toml").read_text()  # the note saying what to add is kept
    # every file the README shows exists and is small
    pic = REPO / "docs" / "viewer.png"
    assert pic.stat().st_size < 300 * 1024 and "(docs/viewer.png)" in (REPO / "README.md").read_text()[:400]
