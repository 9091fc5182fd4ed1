"""The command lines beside training: one-line errors for bad input (before any compute), warnings, and the
same wrapper everywhere (vidjax.cli.run: user errors are one line and exit 2, bugs keep their traceback)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import quick

from configs.shapes_tiny import get_config
from vidjax import cli
from vidjax.errors import UserError
from vidjax.training import run

REPO = Path(__file__).resolve().parents[1]


def call(module, *args, cwd=REPO, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(r, prog, *fragments):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr[-2000:]
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """2 steps of the quick config with temporal_pos="input" (what export must warn about)."""
    tmp = tmp_path_factory.mktemp("cli")
    c = quick(get_config("quick"), tmp, **{"train.steps": 2, "train.ckpt_every": 2, "sample.num_prompts": 0,
                                            "model.temporal_pos": "input"})
    run(c, tmp / "work")
    return tmp / "work"


def test_wrapper_turns_user_errors_into_one_line_and_keeps_bugs(capsys):
    def bad_input(argv):
        raise UserError("config.x=3: expected a colour")

    with pytest.raises(SystemExit) as e:
        cli.run("prog", bad_input, [])
    assert e.value.code == 2 and capsys.readouterr().err == "prog: error: config.x=3: expected a colour\n"

    def bug(argv):
        return {}["missing"]

    with pytest.raises(KeyError):  # a bug is not dressed up as a user error
        cli.run("prog", bug, [])


def test_sample_rejects_bad_steps_and_unwritable_out_before_compute(workdir, tmp_path):
    for steps in ("-3", "0"):
        r = call("vidjax.sample", "--workdir", str(workdir), "--prompt", "a red circle moving left", "--steps", steps)
        one_line_error(r, "vidjax.sample", f"--steps={steps}")
    (tmp_path / "file").write_text("x")
    r = call("vidjax.sample", "--workdir", str(workdir), "--prompt", "a red circle", "--out",
             str(tmp_path / "file" / "s.mp4"))
    one_line_error(r, "vidjax.sample", "is a file, not a folder")
    r = call("vidjax.sample", "--workdir", str(tmp_path / "nothing"), "--prompt", "x")
    one_line_error(r, "vidjax.sample", "no checkpoints folder")  # and no orbax noise after it


def test_sample_prompts_files(workdir, tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    one_line_error(call("vidjax.sample", "--workdir", str(workdir), "--prompts", str(blank)), "vidjax.sample",
                   str(blank), "no prompts")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("a red caf\xe9 circle\n".encode("latin-1"))
    one_line_error(call("vidjax.sample", "--workdir", str(workdir), "--prompts", str(latin)), "vidjax.sample",
                   str(latin), "not UTF-8")
    good = tmp_path / "good.txt"
    good.write_text("a red circle moving left\n\na blue square moving up\n")
    r = call("vidjax.sample", "--workdir", str(workdir), "--prompts", str(good), "--steps", "2", "--out",
             str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 1 blank line" in r.stderr and len(list((tmp_path / "out").glob("*.mp4"))) == 2


def test_export_warns_about_temporal_pos_input_and_checks_out(workdir, tmp_path):
    r = call("vidjax.export", "--workdir", str(workdir), "--out", str(tmp_path / "m.safetensors"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "temporal_pos='input'" in r.stderr and "computes something else" in r.stderr
    assert "computes something else" in json.loads((tmp_path / "m.json").read_text())["warning"]
    (tmp_path / "file").write_text("x")
    one_line_error(call("vidjax.export", "--workdir", str(workdir), "--out", str(tmp_path / "file" / "m.safetensors")),
                   "vidjax.export", "is a file, not a folder")
    one_line_error(call("vidjax.export", "--workdir", str(workdir), "--out", str(tmp_path / "m.pt")),
                   "vidjax.export", ".safetensors")


def test_evaluate_errors(tmp_path):
    one_line_error(call("vidjax.evaluate", "--captions", str(tmp_path / "none.jsonl")), "vidjax.evaluate",
                   "captions file not found")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"file": "a.mp4"}) + "\n")
    one_line_error(call("vidjax.evaluate", "--captions", str(bad)), "vidjax.evaluate", "missing shape")


@pytest.mark.skipif(sys.platform != "linux" or "[madvise]" not in cli._read(cli.THP_SETTING),
                    reason="needs Linux with transparent huge pages on madvise")
def test_commands_restart_with_huge_pages(tmp_path):
    """``python -m vidjax.*`` restarts itself once with glibc's hugetlb tunable, so a fresh malloc block lands in
    transparent huge pages (the train step's scratch memory: the mid step of step_vs_torch.py at ~0.83x the time);
    ``VIDJAX_HUGE_PAGES=0`` opts out, other tunables are kept, and a plain ``import vidjax`` never restarts."""
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VIDJAX_HUGE_PAGES")}

    def report(extra, *cmd):
        r = subprocess.run([sys.executable, *cmd], env=dict(env, **extra), cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout.strip().splitlines()[-1]

    def huge_mb(line):
        return int(line.split(" has ")[1].split(" MB")[0])

    line = report({}, "-m", "vidjax.tools.hugepages")
    assert line.startswith("GLIBC_TUNABLES='glibc.malloc.hugetlb=1';") and huge_mb(line) >= 32, line
    line = report({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "-m", "vidjax.tools.hugepages")
    assert line.startswith("GLIBC_TUNABLES='glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1';"), line
    line = report({"VIDJAX_HUGE_PAGES": "0"}, "-m", "vidjax.tools.hugepages")
    assert line.startswith("GLIBC_TUNABLES='';") and huge_mb(line) == 0, line
    code = "import os, vidjax; print(repr(os.environ.get('GLIBC_TUNABLES')))"
    assert report({}, "-c", code) == "None"


@pytest.mark.parametrize("libc, thp, restarts", [(("glibc", "2.36"), "always [madvise] never", True),
                                                 (("glibc", "2.34"), "always [madvise] never", False),
                                                 (("glibc", "2.36"), "[always] madvise never", False),
                                                 (("glibc", "2.36"), "always madvise [never]", False),
                                                 (("", ""), "always [madvise] never", False)])
def test_huge_pages_restart_only_where_they_help(monkeypatch, tmp_path, libc, thp, restarts):
    """The restart's conditions, without restarting: glibc >= 2.35 and transparent huge pages on madvise."""
    setting = tmp_path / "enabled"
    setting.write_text(thp + "\n")
    calls = []
    monkeypatch.setattr(cli, "THP_SETTING", setting)
    monkeypatch.setattr(cli.platform, "libc_ver", lambda: libc)
    monkeypatch.setattr(cli.os, "execv", lambda exe, argv: calls.append((exe, argv)))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("VIDJAX_HUGE_PAGES", raising=False)
    cli.use_huge_pages()
    assert calls == ([(sys.executable, sys.orig_argv)] if restarts else [])
    assert (os.environ.get("GLIBC_TUNABLES") == cli.HUGE_PAGES) == restarts
