"""Packaging: kernels/ installs as vidjax.kernels, no top-level kernels/configs/launch, lint-clean."""

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setup_cfg():
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    return cp


def test_every_package_folder_is_listed():
    listed = set(_setup_cfg()["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "vidjax").rglob("__init__.py")}
    found.add("vidjax.kernels")
    assert found == listed, f"setup.cfg packages missing {found - listed}, stale {listed - found}"


def test_no_top_level_names_owned_by_other_projects():
    cfg = _setup_cfg()["options"]
    packages = cfg["packages"].split()
    assert not any(p.split(".")[0] in {"kernels", "configs", "launch"} for p in packages)
    assert "vidjax.kernels = kernels" in cfg["package_dir"]


def test_kernels_import_as_vidjax_kernels():
    import vidjax.kernels

    here = Path(vidjax.kernels.__file__).parent  # the top-level kernels/ folder of the installed checkout
    assert here.name == "kernels" and here.parent.name != "vidjax" and (here / "spatial.py").exists()


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    r = subprocess.run(["ruff", "check", "--quiet", "vidjax", "kernels", "configs", "tests"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
