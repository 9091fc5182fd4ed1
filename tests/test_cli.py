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


MEMORY_ENV = ("GLIBC_TUNABLES", "VIDJAX_MALLOC", "LD_PRELOAD", "MALLOC_CONF")
OUTER_MEMORY_ENV = {key: os.environ.get(key) for key in MEMORY_ENV}  # as pytest started


def memory_report(tmp_path, extra: dict, *cmd: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in MEMORY_ENV}
    r = subprocess.run([sys.executable, *cmd], env=dict(env, **extra), cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def figures(line: str) -> tuple[int, int]:
    """(MB in huge pages of a fresh 64 MB block, page faults re-touching a freed 256 MB block)."""
    return int(line.split(" block has ")[1].split(" MB")[0]), int(line.split(" costs ")[1].split(" page")[0])


@pytest.mark.skipif(sys.platform != "linux" or "[madvise]" not in cli._read(cli.THP_SETTING),
                    reason="needs Linux with transparent huge pages on madvise")
def test_commands_restart_with_glibc_huge_pages(tmp_path):
    """``VIDJAX_MALLOC=glibc`` (and ``auto`` on a host without jemalloc or tcmalloc): ``python -m vidjax.*``
    restarts once with glibc's hugetlb tunable, so a fresh block lands in transparent huge pages and a freed
    256 MB block costs about 128 faults to reuse instead of 65,536; ``off`` opts out, other tunables are kept,
    and a plain ``import vidjax`` never restarts."""
    line = memory_report(tmp_path, {"VIDJAX_MALLOC": "glibc"}, "-m", "vidjax.tools.memory")
    huge, faults = figures(line)
    assert line.startswith("allocator glibc (GLIBC_TUNABLES='glibc.malloc.hugetlb=1');") and huge >= 32, line
    assert 64 <= faults < 8192, line  # zeroed again, in 2 MB pages
    line = memory_report(tmp_path, {"VIDJAX_MALLOC": "glibc", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                         "-m", "vidjax.tools.memory")
    assert line.startswith("allocator glibc (GLIBC_TUNABLES='glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1');")
    line = memory_report(tmp_path, {"VIDJAX_MALLOC": "off"}, "-m", "vidjax.tools.memory")
    assert line.startswith("allocator glibc (GLIBC_TUNABLES='');") and figures(line)[0] == 0, line
    assert figures(line)[1] >= 32768, line  # 4 KB pages, every one zeroed again
    code = "import os, vidjax; print(repr(os.environ.get('GLIBC_TUNABLES')), repr(os.environ.get('LD_PRELOAD')))"
    assert memory_report(tmp_path, {}, "-c", code) == "None None"


INSTALLED = [name for name in cli.MALLOC_LIBS if cli.find_malloc_lib(name)]


@pytest.mark.skipif(sys.platform != "linux" or not INSTALLED, reason="needs jemalloc or tcmalloc on this host")
@pytest.mark.parametrize("choice", ["auto", *INSTALLED])
def test_commands_restart_with_an_allocator_that_keeps_memory(tmp_path, choice):
    """With jemalloc or tcmalloc installed, ``python -m vidjax.*`` runs under it (``auto`` prefers jemalloc): a
    freed 256 MB block (XLA's per-step scratch) is reused without the kernel zeroing it again."""
    line = memory_report(tmp_path, {"VIDJAX_MALLOC": choice}, "-m", "vidjax.tools.memory")
    name = INSTALLED[0] if choice == "auto" else choice
    assert line.startswith(f"allocator {name} (LD_PRELOAD={cli.find_malloc_lib(name)});"), line
    assert figures(line)[1] < 64, line
    if name == "jemalloc":
        assert figures(line)[0] >= 32, line  # MALLOC_CONF's thp:always


def fake_host(monkeypatch, tmp_path, libs=(), libc=("glibc", "2.36"), thp="always [madvise] never"):
    """Pretend a Linux host with ``libs`` installed; returns the list ``os.execv`` calls land in."""
    lib_dir = tmp_path / "lib"
    lib_dir.mkdir(exist_ok=True)
    for name in libs:  # an ELF header is all find_malloc_lib reads
        (lib_dir / cli.MALLOC_LIBS[name]).write_bytes(b"\x7fELF" + bytes(60))
    setting = tmp_path / "enabled"
    setting.write_text(thp + "\n")
    calls = []
    monkeypatch.setattr(cli, "LIB_DIRS", (str(lib_dir),))
    monkeypatch.setattr(cli, "THP_SETTING", setting)
    monkeypatch.setattr(cli.platform, "libc_ver", lambda: libc)
    monkeypatch.setattr(cli.os, "execv", lambda exe, argv: calls.append((exe, argv)))
    monkeypatch.setattr(cli.sys, "platform", "linux")
    # a private environment: what tune_memory writes must not reach the other tests' subprocesses
    monkeypatch.setattr(cli.os, "environ", {k: v for k, v in os.environ.items() if k not in MEMORY_ENV})
    return calls


@pytest.mark.parametrize("libc, thp, restarts", [(("glibc", "2.36"), "always [madvise] never", True),
                                                 (("glibc", "2.34"), "always [madvise] never", False),
                                                 (("glibc", "2.36"), "[always] madvise never", False),
                                                 (("glibc", "2.36"), "always madvise [never]", False),
                                                 (("", ""), "always [madvise] never", False)])
def test_huge_pages_restart_only_where_they_help(monkeypatch, tmp_path, libc, thp, restarts):
    """Without jemalloc or tcmalloc: glibc's tunable only with glibc >= 2.35 and transparent huge pages on madvise."""
    calls = fake_host(monkeypatch, tmp_path, libc=libc, thp=thp)
    cli.tune_memory()
    assert calls == ([(sys.executable, sys.orig_argv)] if restarts else [])
    assert (os.environ.get("GLIBC_TUNABLES") == cli.HUGE_PAGES) == restarts
    assert "LD_PRELOAD" not in os.environ


@pytest.mark.parametrize("libs, env, preload, conf", [
    (("jemalloc", "tcmalloc"), {}, "jemalloc", cli.JEMALLOC_CONF),
    (("tcmalloc",), {}, "tcmalloc", None),
    (("jemalloc", "tcmalloc"), {"VIDJAX_MALLOC": "tcmalloc"}, "tcmalloc", None),
    (("jemalloc",), {"MALLOC_CONF": "narenas:2"}, "jemalloc", "narenas:2"),  # the user's conf is kept
    (("jemalloc",), {"LD_PRELOAD": "libfoo.so"}, "jemalloc", cli.JEMALLOC_CONF),  # ... and their preload
])
def test_allocator_restart_preloads_jemalloc_or_tcmalloc(monkeypatch, tmp_path, libs, env, preload, conf):
    calls = fake_host(monkeypatch, tmp_path, libs=libs)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cli.tune_memory()
    assert calls == [(sys.executable, sys.orig_argv)]
    lib = str(tmp_path / "lib" / cli.MALLOC_LIBS[preload])
    assert os.environ["LD_PRELOAD"] == (f"{lib}:libfoo.so" if "LD_PRELOAD" in env else lib)
    assert os.environ.get("MALLOC_CONF") == conf
    assert "GLIBC_TUNABLES" not in os.environ
    calls.clear()
    cli.tune_memory()  # the restarted process: already set up, no second restart
    assert calls == []


def test_allocator_restart_skips_a_library_that_is_not_elf(monkeypatch, tmp_path):
    """An empty or foreign file named like jemalloc is passed over (the loader would complain in every child)."""
    calls = fake_host(monkeypatch, tmp_path, libs=("tcmalloc",))
    (tmp_path / "lib" / cli.MALLOC_LIBS["jemalloc"]).write_bytes(b"")
    cli.tune_memory()
    assert calls == [(sys.executable, sys.orig_argv)]
    assert os.environ["LD_PRELOAD"] == str(tmp_path / "lib" / cli.MALLOC_LIBS["tcmalloc"])


@pytest.mark.parametrize("env", [{"VIDJAX_MALLOC": "off"}, {"VIDJAX_MALLOC": "glibc"},
                                 {"LD_PRELOAD": "/opt/libtcmalloc.so.4"}, {"GLIBC_TUNABLES": cli.HUGE_PAGES}])
def test_allocator_restart_respects_the_user(monkeypatch, tmp_path, env):
    """``off`` and a process already under an allocator or the tunable never restart; ``glibc`` skips the libraries."""
    calls = fake_host(monkeypatch, tmp_path, libs=("jemalloc", "tcmalloc"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    cli.tune_memory()
    restarts = env == {"VIDJAX_MALLOC": "glibc"}
    assert calls == ([(sys.executable, sys.orig_argv)] if restarts else [])
    assert os.environ.get("LD_PRELOAD") == env.get("LD_PRELOAD")


@pytest.mark.parametrize("value, message", [
    ("fast", "VIDJAX_MALLOC='fast': expected one of auto, jemalloc, tcmalloc, glibc, off"),
    ("jemalloc", "VIDJAX_MALLOC=jemalloc: libjemalloc.so.2 is not in"),
])
def test_allocator_choice_errors_are_one_line(monkeypatch, tmp_path, capsys, value, message):
    calls = fake_host(monkeypatch, tmp_path, libs=("tcmalloc",))
    monkeypatch.setenv("VIDJAX_MALLOC", value)
    with pytest.raises(SystemExit) as e:
        cli.tune_memory()
    err = capsys.readouterr().err
    assert e.value.code == 2 and calls == [] and len(err.strip().splitlines()) == 1
    assert err.startswith(f"vidjax: error: {message}"), err


def test_allocator_tests_leave_the_environment_alone():
    """The fake hosts above write into a private environment: nothing of theirs reaches the real one, where every
    later test's subprocesses would inherit it (a fake ``LD_PRELOAD`` makes the loader complain in each)."""
    assert {key: os.environ.get(key) for key in MEMORY_ENV} == OUTER_MEMORY_ENV
