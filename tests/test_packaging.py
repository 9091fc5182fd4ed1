"""Packaging: kernels/ installs as vidjax.kernels, no top-level kernels/configs/launch, lint-clean."""

import configparser
import os
import shutil
import subprocess
import sys
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

    import vidjax as package

    here = Path(vidjax.kernels.__file__).parent  # the top-level kernels/ folder of the installed checkout
    checkout = Path(package.__file__).parent.parent
    assert here == checkout / "kernels" and (here / "spatial.py").exists()  # whatever the checkout's folder name


def test_no_top_level_kernels_module_is_installed(tmp_path):
    """Outside the checkout (no repo root on sys.path), ``import kernels`` finds nothing of ours (at most Hugging
    Face's ``kernels``, which transformers >= 5 installs)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", "import importlib.util as u, vidjax.kernels as k; "
                        "s = u.find_spec('kernels'); print(k.__file__); print(s.origin if s else None)"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ours, top = r.stdout.split()
    assert ours.endswith("kernels/__init__.py") and (top == "None" or Path(top).parent != Path(ours).parent)


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_run_from_the_checkout_our_kernels_do_not_hide_hugging_face_kernels():
    # transformers >= 5 imports Hugging Face's `kernels`; `python -m vidjax...` from the checkout puts the checkout
    # first on sys.path, where our kernels/ folder would stand in for it and break every T5 / CLIP import
    import importlib.metadata

    try:
        importlib.metadata.distribution("kernels")  # Hugging Face's, when transformers pulled it in
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels package is not installed")
    code = ("import vidjax, sys, vidjax.kernels; import transformers.integrations.hub_kernels; "
            "print(sys.modules['kernels'].__file__, vidjax.kernels.__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(REPO / "kernels") not in out.stdout and "vidjax.kernels" in out.stdout


def test_ruff_clean():
    r = subprocess.run(["ruff", "check", "--quiet", "vidjax", "kernels", "configs", "tests"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
