"""The one config loader and its command-line syntax (vidjax/config.py), through every CLI that takes a config."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vidjax.config import load_config
from vidjax.errors import ConfigError, MissingFileError

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs/shapes_tiny.py")


def cli(module, *args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_overrides_of_every_type():
    c = load_config(f"{TINY}:quick", ["train.steps=7", "train.lr=0.5", "progress=false", "model.patch=(1, 2, 2)",
                                      "data.captions=/x/y.jsonl", "model.name='dit'", "train.init_from=a.pth"])
    assert c.train.steps == 7 and c.train.lr == 0.5 and c.progress is False and tuple(c.model.patch) == (1, 2, 2)
    assert c.data.captions == "/x/y.jsonl" and c.model.name == "dit" and c.train.init_from == "a.pth"
    assert c.name == "shapes_quick"  # the variant


@pytest.mark.parametrize("override,message", [
    ("train.stepz=3", "no such field; did you mean train.steps?"),
    ("foo.bar=1", "has no section 'foo'; its sections are data, "),
    ("train.steps=abc", "expected an integer"),
    ("progress=maybe", "expected true or false"),
    ("model.patch=x", "expected a tuple"),
    ("train=3", "is a section"),
    ("train={3: 4", "expected a Python dict literal"),
    ("train.steps", "expected --config.KEY=VALUE"),
])
def test_bad_overrides_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        load_config(TINY, [override])


def test_bucket_tables_override_by_entry_or_whole():
    stage1 = str(REPO / "configs/three_stage_shapes.py:stage1")
    c = load_config(stage1, ["data.bucket_config.64px.1=(0.5, 32)"])  # an int-keyed entry of a nested table
    assert tuple(c.data.bucket_config["64px"][1]) == (0.5, 32) and tuple(c.data.bucket_config["96px"][1]) == (0.4, 8)
    c = load_config(stage1, ['data.bucket_config={"240p": {51: (1.0, 4)}}'])  # the whole table
    assert list(c.data.bucket_config) == ["240p"] and tuple(c.data.bucket_config["240p"][51]) == (1.0, 4)
    with pytest.raises(ConfigError, match=r"no such field; did you mean data.bucket_config.64px.1\?"):
        load_config(stage1, ["data.bucket_config.64px.7=(0.5, 32)"])


def test_bad_files_and_variants(tmp_path):
    with pytest.raises(MissingFileError, match="config file not found"):
        load_config(tmp_path / "nope.py")
    (tmp_path / "bad.py").write_text("def get_config(arg=None):\n    return (\n")
    with pytest.raises(ConfigError, match=r"bad.py:2: syntax error"):
        load_config(tmp_path / "bad.py")
    with pytest.raises(ConfigError, match="unknown variant"):
        load_config(f"{TINY}:pixel")


@pytest.mark.parametrize("args,message", [
    (["--config.train.stepz=3"], "did you mean train.steps?"),
    (["--config.foo.bar=1"], "no section 'foo'"),
    (["--config", f"{TINY}:pixel"], "unknown variant"),
])
def test_train_cli_errors_are_one_line(args, message):
    r = cli("vidjax.train", *(["--config", TINY] if args[0] != "--config" else []), *args)
    assert r.returncode == 2 and r.stderr.strip().startswith("vidjax.train: error:"), r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_help_exits_0():
    r = cli("vidjax.train", "--help")
    assert r.returncode == 0 and "--config.SECTION.KEY=VALUE" in r.stdout


def test_space_separated_override():
    import argparse

    from vidjax.config import add_config_arguments, parse_config_args

    p = argparse.ArgumentParser()
    add_config_arguments(p, default=TINY)
    args, c = parse_config_args(p, ["--config.train.steps", "11", "--config.model.hidden=32"])
    assert c.train.steps == 11 and c.model.hidden == 32 and args.config == TINY


def test_configs_named_inside_a_config_load_from_any_directory(tmp_path, monkeypatch):
    # three_stage_shapes.py names its stage-0 VAE config as "configs/vae_shapes.py:stage0_images"; a run started
    # from another directory must still find it (in the checkout vidjax runs from), and a missing one still fails
    monkeypatch.chdir(tmp_path)
    c = load_config(load_config(REPO / "configs/three_stage_shapes.py").vae.train_config)
    assert c.name == "vae_shapes_stage0_images"
    with pytest.raises(MissingFileError, match="configs/nope.py: config file not found"):
        load_config("configs/nope.py")
