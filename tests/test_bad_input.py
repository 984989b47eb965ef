"""Issue 20: every bad input ends in one line on stderr naming the file and what to do, exit 2."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sglang_tracing.analyzer import api
from sglang_tracing.app.cli import main

ROOT = Path(__file__).resolve().parent.parent
TRITON = ROOT / "traces" / "examples" / "h200-llama2-7b-triton"
KINETO = ROOT / "tests" / "data" / "realdata" / "kineto" / "tracelens_h100_hf_Qwen1.5-0.5B-Chat.json.gz"
NOBODY = 65534


def _one_line_exit_2(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("sglang-trace: error: "), err
    return err[0]


def _kineto_file(tmp_path: Path, doc) -> Path:
    p = tmp_path / "k.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.parametrize("doc", [[1, 2, 3], [], {"traceEvents": []},
                                 {"traceEvents": [{"ph": "X", "ts": "abc", "dur": 1, "name": "k", "cat": "kernel"}]}],
                         ids=["list-of-ints", "empty-list", "no-events", "ts-not-a-number"])
def test_bad_kineto_is_one_line(tmp_path, capsys, doc):
    bad = _kineto_file(tmp_path, doc)
    line = _one_line_exit_2(capsys, ["analyze", "--kineto", str(bad), "--out", str(tmp_path / "r")])
    assert str(bad) in line


def test_bad_kineto_in_diff_is_one_line(tmp_path, capsys):
    bad = _kineto_file(tmp_path, [1, 2, 3])
    assert str(bad) in _one_line_exit_2(capsys, ["diff", str(KINETO), str(bad)])


@pytest.mark.parametrize("command", ["analyze", "diff", "requests"])
def test_out_naming_a_file_is_one_line(tmp_path, capsys, command):
    taken = tmp_path / "taken"
    taken.write_text("x")
    argv = {"analyze": ["analyze", str(TRITON), "--report", "radix"], "diff": ["diff", str(KINETO), str(KINETO)],
            "requests": ["requests", str(TRITON)]}[command]
    line = _one_line_exit_2(capsys, argv + ["--out", str(taken)])
    assert str(taken) in line and "--out" in line
    assert taken.read_text() == "x"


def test_request_prefix_matching_nothing_is_one_line(tmp_path, capsys):
    line = _one_line_exit_2(capsys, ["analyze", str(TRITON), "--report", "story", "--request", "no-such-rid",
                                     "--out", str(tmp_path)])
    assert "no-such-rid" in line


def _as_other_user(*argv: str, cache: Path) -> subprocess.CompletedProcess:
    """``sglang-trace ARGV`` as a user who may not write where root may (root ignores file modes)."""
    prefix = [] if os.geteuid() else ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {**os.environ, "SGLANG_TRACE_CACHE_DIR": str(cache), "HOME": str(cache)}
    return subprocess.run([*prefix, sys.executable, "-m", "sglang_tracing", *argv], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture()
def shared_tmp():
    """A folder every user may read (pytest's tmp_path is root's alone); the cache in it anyone may write."""
    d = Path(tempfile.mkdtemp(prefix="contact-bad-input-"))
    d.chmod(0o755)
    (d / "cache").mkdir()
    (d / "cache").chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _read_only_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in [dst, *dst.iterdir()]:
        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
                                                                 if p.is_dir() else 0))
    return dst


@pytest.mark.parametrize("command", ["analyze", "requests"])
def test_read_only_trace_dir_without_out_is_one_line(shared_tmp, command):
    trace = _read_only_copy(TRITON, shared_tmp / "trace")
    argv = [command, str(trace)] + (["--report", "radix"] if command == "analyze" else [])
    done = _as_other_user(*argv, cache=shared_tmp / "cache")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert str(trace / "reports") in lines[0] and "--out" in lines[0]


@pytest.mark.parametrize("command", ["analyze", "diff"])
def test_out_where_one_may_not_write_is_one_line(shared_tmp, command):
    locked = shared_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    argv = {"analyze": ["analyze", str(TRITON), "--report", "radix"], "diff": ["diff", str(KINETO), str(KINETO)]}
    done = _as_other_user(*argv[command], "--out", str(locked / "reports"), cache=shared_tmp / "cache")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert str(locked / "reports") in lines[0]


def test_cut_last_span_line_is_in_the_reports_sources(tmp_path):
    trace = tmp_path / "trace"
    shutil.copytree(TRITON, trace)
    gz = trace / "spans-tokenizer-pid871.jsonl.gz"
    plain = trace / "spans-tokenizer-pid871.jsonl"
    plain.write_bytes(gzip.decompress(gz.read_bytes()) + b'{"resourceSpans": [{"resource": ')
    gz.unlink()
    model = api.load(str(trace))
    reports = api.build_reports(model, ["story", "radix"])
    for report in reports:
        cut = [f for sec in report.sections for f in sec.figures if f.value == str(plain)]
        assert len(cut) == 1, report.name


def test_perfetto_output_naming_a_folder_is_one_line(tmp_path, capsys):
    assert str(tmp_path) in _one_line_exit_2(capsys, ["perfetto", str(TRITON), "-o", str(tmp_path)])
