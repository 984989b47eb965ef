"""Issue 15: other people's profiler files get what nsys stats, Kineto and ncu users expect, checked
against figures computed here independently of the readers (plain SQL over the nsys export, the json
module over Kineto, the csv module over ncu CSVs, regexes over ncu's console text)."""
from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from sglang_tracing import semconv as sc
from sglang_tracing.analyzer import api
from sglang_tracing.analyzer.analyses import diff, stats_tables, timeline
from sglang_tracing.analyzer.analyses.ncu_metrics import kernel_metrics, ranked_hints
from sglang_tracing.analyzer.analyses.ncu_stalls import warp_stalls
from sglang_tracing.analyzer.loaders import ncu, nsys
from sglang_tracing.analyzer.renderers.base import ROW_LIMIT
from sglang_tracing.errors import TraceError

from test_readers import KERN_SUM, KINETO, NCU_NEW, NCU_OLD, NCU_TEXT, NSYS_2022, NSYS_2024, NSYS_REP, plain_sqlite

EXAMPLES = Path(__file__).resolve().parent.parent / "traces" / "examples"
NSYS_H200 = EXAMPLES / "h200-nsys" / "nsys-triton" / "trace"
NCU_H200 = EXAMPLES / "h200-ncu" / "ncu-flashinfer" / "trace"
MEMCPY_LABELS = {1: "Host-to-Device", 2: "Device-to-Host", 8: "Device-to-Device", 10: "Peer-to-Peer"}  # CUPTI enum


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang_tracing", *args], capture_output=True, text=True)


def stats(values: list) -> dict:
    """nsys stats' figures for one group, computed with the statistics module."""
    return {"total": sum(values), "n": len(values), "avg": statistics.mean(values),
            "med": statistics.median(values), "min": min(values), "max": max(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def check_table(table: pl.DataFrame, key: str, count: str, expected: dict, scale: float = 1.0,
                total: str = "Total Time (ns)", unit: str = "ns") -> None:
    assert sorted(table[key].to_list()) == sorted(expected)
    for row in table.iter_rows(named=True):
        e = expected[row[key]]
        assert row[count] == e["n"], row[key]
        assert row[total] == pytest.approx(e["total"] * scale)
        for col, k in (("Avg", "avg"), ("Med", "med"), ("Min", "min"), ("Max", "max"), ("StdDev", "std")):
            assert row[f"{col} ({unit})"] == pytest.approx(e[k] * scale, rel=1e-9, abs=1e-9), (row[key], col)
    if "Time (%)" in table.columns:
        assert table["Time (%)"].sum() == pytest.approx(100.0)


def nsys_files():
    return [NSYS_2022, NSYS_2024, str(NSYS_H200 / "nsys.sqlite.gz")]


@pytest.fixture(scope="module")
def h200_model():
    return api.load(str(NSYS_H200), nsys=str(NSYS_H200 / "nsys.sqlite.gz"))


# ---- nsys: every stats report against SQL over the export ----
@pytest.mark.parametrize("path", nsys_files(), ids=["2022.2", "2024.6", "2025.3-h200"])
def test_nsys_memops_match_sql(path, tmp_path):
    db = plain_sqlite(path, tmp_path)
    tables = {r[0] for r in db.execute("select name from sqlite_master")}
    groups = collections.defaultdict(list)
    sizes = collections.defaultdict(list)
    labels = dict(db.execute("select id, label from ENUM_CUDA_MEMCPY_OPER")) if "ENUM_CUDA_MEMCPY_OPER" in tables \
        else MEMCPY_LABELS
    if "CUPTI_ACTIVITY_KIND_MEMCPY" in tables:
        for start, end, kind, size in db.execute("select start, end, copyKind, bytes from CUPTI_ACTIVITY_KIND_MEMCPY"):
            groups[f"[CUDA memcpy {labels[kind]}]"].append(end - start)
            sizes[f"[CUDA memcpy {labels[kind]}]"].append(size)
    if "CUPTI_ACTIVITY_KIND_MEMSET" in tables:
        for start, end, size in db.execute("select start, end, bytes from CUPTI_ACTIVITY_KIND_MEMSET"):
            groups["[CUDA memset]"].append(end - start)
            sizes["[CUDA memset]"].append(size)
    assert groups, "every file here moves memory"
    con, _ = nsys.open_export(path)
    mem = nsys.memops(con)
    check_table(stats_tables.memop_time_summary(mem), "Operation", "Count", {k: stats(v) for k, v in groups.items()})
    check_table(stats_tables.memop_size_summary(mem), "Operation", "Count", {k: stats(v) for k, v in sizes.items()},
                scale=1e-6, total="Total (MB)", unit="MB")


@pytest.mark.parametrize("path", nsys_files(), ids=["2022.2", "2024.6", "2025.3-h200"])
def test_nsys_cuda_api_matches_sql(path, tmp_path):
    """Runtime and driver calls (eventClass 0 and 1) per function, 4-digit version suffix dropped as nsys does."""
    db = plain_sqlite(path, tmp_path)
    groups = collections.defaultdict(list)
    for name, dur in db.execute("""select s.value, r.end - r.start from CUPTI_ACTIVITY_KIND_RUNTIME r
                                   join StringIds s on r.nameId = s.id where r.eventClass in (0, 1)"""):
        groups[re.sub(r"_v\d{4}$", "", name)].append(dur)  # nsys keeps cuGetProcAddress_v2, _v10000
    con, _ = nsys.open_export(path)
    table = stats_tables.api_summary(nsys.api_calls(con))
    check_table(table, "Name", "Num Calls", {k: stats(v) for k, v in groups.items()})


@pytest.mark.parametrize("path", nsys_files(), ids=["2022.2", "2024.6", "2025.3-h200"])
def test_nsys_nvtx_sum_matches_sql(path, tmp_path):
    """nvtx_sum: push/pop and start/end ranges by 'domain:name' (name alone in the default domain) and
    style; domains joined per process; a range never closed ends at the last NVTX timestamp."""
    db = plain_sqlite(path, tmp_path)
    domains = {}
    for dom, tid, name in db.execute("""select n.domainId, n.globalTid, coalesce(s.value, n.text) from NVTX_EVENTS n
                                        left join StringIds s on n.textId = s.id where n.eventType = 75"""):
        domains[(dom, tid >> 24)] = name
    last = db.execute("select max(max(start), max(coalesce(end, 0))) from NVTX_EVENTS").fetchone()[0]
    groups = collections.defaultdict(list)
    for start, end, name, dom, tid, etype in db.execute(
            """select n.start, n.end, coalesce(s.value, n.text), n.domainId, n.globalTid, n.eventType
               from NVTX_EVENTS n left join StringIds s on n.textId = s.id where n.eventType in (59, 60, 70, 71)"""):
        domain = domains.get((dom, tid >> 24))
        if domain == "sglang":  # our own ranges end in a span id; grouped by span name
            name = re.sub(r" [0-9a-f]{16}$", "", name)
        tag = f"{domain}:{name}" if domain else name
        groups[(tag, "PushPop" if etype in (59, 70) else "StartEnd")].append((end if end is not None else last) - start)
    con, _ = nsys.open_export(path)
    table = stats_tables.nvtx_summary(nsys.nvtx(con)).with_columns(
        pl.concat_str("Range", "Style", separator="|").alias("key"))
    check_table(table, "key", "Instances", {f"{r}|{s}": stats(v) for (r, s), v in groups.items()})


def test_nsys_osrt_matches_sql(tmp_path):
    path = str(NSYS_H200 / "nsys.sqlite.gz")
    db = plain_sqlite(path, tmp_path)
    groups = collections.defaultdict(list)
    for name, dur in db.execute("select s.value, o.end - o.start from OSRT_API o join StringIds s on o.nameId = s.id"):
        groups[name].append(dur)
    con, _ = nsys.open_export(path)
    check_table(stats_tables.osrt_summary(nsys.osrt_calls(con)), "Name", "Num Calls",
                {k: stats(v) for k, v in groups.items()})


def test_nsys_2024_without_osrt_and_nvtx_tables(tmp_path):
    """2024.5+ exports leave empty tables out: the report says what is missing instead of failing."""
    db = plain_sqlite(NSYS_2024, tmp_path)
    tables = {r[0] for r in db.execute("select name from sqlite_master")}
    assert "OSRT_API" not in tables
    db.execute("drop table NVTX_EVENTS")
    db.execute("drop table CUPTI_ACTIVITY_KIND_MEMCPY")
    db.commit()
    stripped = tmp_path / "stripped.sqlite"
    db.execute(f"vacuum into '{stripped}'")
    result = timeline.compute(api.load(None, nsys=str(stripped)))
    assert result.tables["osrt_sum"][0].is_empty() and result.tables["nvtx_sum"][0].is_empty()
    memsets = db.execute("select count(*) from CUPTI_ACTIVITY_KIND_MEMSET").fetchone()[0]
    assert result.tables["cuda_gpu_mem_time_sum"][0].select("Operation", "Count").rows() == [("[CUDA memset]", memsets)]
    sections = {s.title: s for s in timeline.describe(result).sections}
    for empty in ("osrt_sum", "nvtx_sum"):  # each empty table's section: nothing measured, and why
        title, why = timeline.TABLES[empty]
        assert sections[title].table is None and [(f.value, f.source) for f in sections[title].figures] == [(None, why)]


# ---- Kineto against the json module ----
def _kineto_events():
    return json.loads(gzip.decompress(open(KINETO, "rb").read()))


def test_kineto_memops_api_annotations_devices():
    doc = _kineto_events()
    by_cat = collections.defaultdict(list)
    for e in doc["traceEvents"]:
        if e.get("ph") == "X":
            by_cat[e.get("cat")].append(e)
    model = api.load(None, kineto=KINETO)
    tables = stats_tables.summaries(model)
    # gpu_memcpy / gpu_memset: count, bytes and time per kind
    mem = collections.defaultdict(lambda: [0, 0, 0.0])
    for cat in ("gpu_memcpy", "gpu_memset"):
        for e in by_cat[cat]:
            kind = "[CUDA memset]" if cat == "gpu_memset" else {"DtoH": "[CUDA memcpy Device-to-Host]"}[e["name"][7:11]]
            mem[kind][0] += 1
            mem[kind][1] += e["args"]["bytes"]
            mem[kind][2] += e["dur"]
    t, s = tables["cuda_gpu_mem_time_sum"][0], tables["cuda_gpu_mem_size_sum"][0]
    assert sorted(t["Operation"]) == sorted(mem)
    for op, (n, size, dur_us) in mem.items():
        assert t.filter(pl.col("Operation") == op)["Count"].item() == n
        assert t.filter(pl.col("Operation") == op)["Total Time (ns)"].item() == pytest.approx(dur_us * 1e3, abs=n)
        assert s.filter(pl.col("Operation") == op)["Total (MB)"].item() == pytest.approx(size / 1e6)
    # cuda_runtime and cuda_driver calls: count and time per function
    calls = collections.defaultdict(lambda: [0, 0.0])
    for e in by_cat["cuda_runtime"] + by_cat["cuda_driver"]:
        calls[e["name"]][0] += 1
        calls[e["name"]][1] += e["dur"]
    api_sum = tables["cuda_api_sum"][0]
    assert len(by_cat["cuda_driver"]) >= 1 and "cuLaunchKernel" in api_sum["Name"].to_list()
    for name, (n, dur_us) in calls.items():
        row = api_sum.filter(pl.col("Name") == name).row(0, named=True)
        assert row["Num Calls"] == n and row["Total Time (ns)"] == pytest.approx(dur_us * 1e3, abs=n)
    # user annotations as ranges, and the device name
    ann = by_cat["user_annotation"]
    nvtx = tables["nvtx_sum"][0]
    assert nvtx["Range"].to_list() == [e["name"] for e in ann]
    assert nvtx["Total Time (ns)"].to_list() == [pytest.approx(e["dur"] * 1e3, abs=1) for e in ann]
    assert timeline.compute(model).top.names == {0: doc["deviceProperties"][0]["name"]} == {0: "NVIDIA H100 80GB HBM3"}


# ---- ncu against the csv module and the console text ----
def _details_rows(path):
    raw = open(path, "rb").read()
    raw = gzip.decompress(raw) if path.endswith(".gz") else raw
    return list(csv.DictReader(io.StringIO(raw.decode())))


def test_ncu_dram_bandwidth_from_memory_workload_analysis():
    rows = _details_rows(NCU_NEW)
    mwa = [r for r in rows if r["Section Name"] == "Memory Workload Analysis" and r["Metric Name"] == "Memory Throughput"]
    sol = [r for r in rows if r["Section Name"] == "GPU Speed Of Light Throughput" and r["Metric Name"] == "Memory Throughput"]
    assert mwa[0]["Metric Unit"] == "Gbyte/s" and sol[0]["Metric Unit"] == "%"
    row = kernel_metrics(ncu.read(NCU_NEW)).row(0, named=True)
    assert row["dram_bandwidth_Bps"] == pytest.approx(float(mwa[0]["Metric Value"]) * 1e9)
    assert row["memory_throughput_pct"] == pytest.approx(float(sol[0]["Metric Value"]))
    # the console text: the Memory Workload Analysis section's Memory Throughput line
    textual = open(NCU_TEXT).read()
    section = textual.split("Section: Memory Workload Analysis")[1].split("Section:")[0]
    value, unit = re.search(r"Memory Throughput\s+(\S+)/s\s+([\d.]+)", section).group(2, 1)
    assert unit == "Mbyte"
    assert kernel_metrics(ncu.read(NCU_TEXT)).row(0, named=True)["dram_bandwidth_Bps"] == pytest.approx(float(value) * 1e6)


def test_ncu_na_flops_are_unknown_not_zero(tmp_path):
    rows = _details_rows(NCU_NEW)
    assert {r["Metric Value"] for r in rows if r["Metric Name"].startswith("flop_count")} == {"n/a"}
    row = kernel_metrics(ncu.read(NCU_NEW)).row(0, named=True)
    assert row["flop"] is None and row["arith_intensity_flop_per_byte"] is None and row["achieved_flop_per_s"] is None
    api.analyze(None, reports="attention", out_dir=str(tmp_path), formats="text", ncu=NCU_NEW)
    out = (tmp_path / "attention.txt").read_text()
    assert "arith_intensity_flop_per_byte: not measured  [unknown: " in out and "n/a in the profile" in out
    assert "achieved_flop_per_s: not measured" in out  # the tensor part alone is printed apart, labelled
    # a GEMV-like row: tensor ops counted 0, FP32 counts n/a -> still unknown, never 0 FLOP/byte
    gemv = ncu.read(NCU_NEW).with_columns(
        pl.when(pl.col("metric") == "sm__ops_path_tensor_src_bf16_dst_fp32.sum").then(pl.lit(0.0))
        .otherwise(pl.col("value")).alias("value"))
    assert kernel_metrics(gemv).row(0, named=True)["arith_intensity_flop_per_byte"] is None


def test_ncu_occupancy_limiter_matches_ncus_own_rule():
    """Old layout, 10 kernels: the limiter is the smallest block limit, none at 100% theoretical
    occupancy; where ncu's Occupancy rule names the limiter, it is the same."""
    rows = _details_rows(NCU_OLD)
    limits = collections.defaultdict(dict)
    theoretical, rule = {}, {}
    words = {"registers": "registers", "shared memory": "shared memory", "warps": "warps"}
    for r in rows:
        kid = int(r["ID"])
        if r["Metric Name"].startswith("Block Limit "):
            limits[kid][r["Metric Name"]] = float(r["Metric Value"].replace(",", ""))
        if r["Metric Name"] == "Theoretical Occupancy":
            theoretical[kid] = float(r["Metric Value"].replace(",", ""))
        m = re.search(r"is limited by the (?:number of required |required amount of )?(\w+(?: memory)?)",
                      r.get("Rule Description") or "")
        if m:
            rule[kid] = words.get(m.group(1), m.group(1))
    metrics = kernel_metrics(ncu.read(NCU_OLD))
    assert 100.0 in theoretical.values()
    for row in metrics.iter_rows(named=True):
        kid = row["kernel_id"]
        if theoretical[kid] >= 100:
            assert row["occupancy_limiter"] is None
            continue
        low = min(limits[kid].values())
        named = {k.removeprefix("Block Limit ") for k, v in limits[kid].items() if v == low}
        assert len(row["occupancy_limiter"].split(" = ")) == len(named)
        if kid in rule:
            assert rule[kid] in row["occupancy_limiter"]


def test_ncu_limiter_ties_are_named_together():
    rows = _details_rows(str(NCU_H200 / "attention-details.csv"))
    lim = {r["Metric Name"]: float(r["Metric Value"]) for r in rows
           if r["ID"] == "0" and r["Metric Name"] in ("Block Limit Registers", "Block Limit Shared Mem")}
    assert lim["Block Limit Registers"] == lim["Block Limit Shared Mem"]
    row = kernel_metrics(ncu.read(NCU_H200 / "attention-details.csv")).row(0, named=True)
    assert row["occupancy_limiter"] == "registers = shared memory"


def test_ncu_duration_derived_from_cycles_when_not_measured():
    rows = _details_rows(NCU_OLD)
    assert not any(r["Metric Name"].startswith("gpu__time_duration") for r in rows)
    cycles = {(int(r["ID"]), r["Metric Name"]): float(r["Metric Value"].replace(",", "")) for r in rows
              if r["Metric Name"] in ("sm__cycles_elapsed.avg", "sm__cycles_elapsed.avg.per_second")}
    assert {r["Metric Unit"] for r in rows if r["Metric Name"] == "sm__cycles_elapsed.avg.per_second"} == {"cycle/second"}
    for row in kernel_metrics(ncu.read(NCU_OLD)).iter_rows(named=True):
        kid = row["kernel_id"]
        expected = cycles[(kid, "sm__cycles_elapsed.avg")] / cycles[(kid, "sm__cycles_elapsed.avg.per_second")] * 1e9
        assert row["duration_ns"] == pytest.approx(expected)
        assert row["duration_source"].startswith("sm__cycles_elapsed.avg /")


def test_ncu_text_warp_state_and_hints():
    textual = open(NCU_TEXT).read()
    cpi = float(re.search(r"Warp Cycles Per Issued Instruction\s+cycle\s+([\d.]+)", textual).group(1))
    stall = re.search(r"spends ([\d.]+) cycles being stalled waiting for the MIO.*?represents about ([\d.]+)%",
                      textual, re.S)
    speedups = [float(x) for x in re.findall(r"Est\. (?:Local )?Speedup: ([\d.]+)%", textual)]
    profile = ncu.read_profile(NCU_TEXT)
    assert kernel_metrics(profile.metrics).row(0, named=True)["warp_cycles_per_issued"] == cpi
    stalls = warp_stalls(profile.metrics, profile.rules)
    top = stalls.row(0, named=True)
    assert (top["reason"], top["cycles"], top["share_pct"]) == ("mio_throttle", float(stall.group(1)),
                                                                float(stall.group(2)))
    hints = ranked_hints(profile.rules).drop_nulls("speedup_pct")
    assert hints["speedup_pct"].to_list() == sorted(speedups, reverse=True)
    assert hints.row(0, named=True)["speedup_type"] == "local"  # 'Est. Local Speedup: 83.1%'


def test_ncu_details_rules_ranked_by_estimated_speedup():
    rows = _details_rows(NCU_NEW)
    expected = sorted((float(r["Estimated Speedup"]) for r in rows if r.get("Estimated Speedup")), reverse=True)
    profile = ncu.read_profile(NCU_NEW)
    assert profile.metrics.filter(pl.col("metric") == "").is_empty()  # rule rows are not metrics
    assert ranked_hints(profile.rules).drop_nulls("speedup_pct")["speedup_pct"].to_list() == expected


def test_ncu_header_only_csv_exits_2(tmp_path):
    header = open(NCU_NEW).readline()
    empty = tmp_path / "header-only.csv"
    empty.write_text(header)
    with pytest.raises(TraceError, match="header and no kernel rows"):
        ncu.read(empty)
    done = cli("analyze", "--ncu", str(empty), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "header-only.csv" in done.stderr and "Traceback" not in done.stderr
    raw = tmp_path / "raw-header-only.csv"
    raw.write_text('"ID","Kernel Name","gpu__time_duration.sum"\n"","","usecond"\n')
    assert cli("analyze", "--ncu", str(raw), "--out", str(tmp_path / "o")).returncode == 2


# ---- the timeline report on other people's files ----
def _raw_kernel_count(args: tuple[str, str], tmp_path) -> int:
    """Kernels in the file, counted with SQL over the nsys export or json over the Kineto trace."""
    if args[0] == "--kineto":
        return sum(e.get("cat") == "kernel" and e.get("ph") == "X" for e in json.load(gzip.open(args[1]))["traceEvents"])
    return plain_sqlite(args[1], tmp_path).execute("select count(*) from CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]


@pytest.mark.parametrize("args", [("--nsys", NSYS_2022), ("--nsys", NSYS_2024), ("--kineto", KINETO)],
                         ids=["nsys-2022", "nsys-2024", "kineto"])
def test_timeline_on_foreign_files(args, tmp_path):
    """A profile without our spans: the top-down page and the stats tables, no SGLang side; the CLI writes it."""
    model = api.load(None, **{args[0][2:]: args[1]})
    result = timeline.compute(model)
    assert result.sglang is None and result.span_count == 0
    assert set(result.tables) == set(timeline.TABLES)
    assert result.tables["cuda_gpu_kern_sum"][0]["Instances"].sum() == _raw_kernel_count(args, tmp_path)
    assert result.top.busy.height >= 1 and result.top.look_first.height >= 1
    done = cli("analyze", *args, "--report", "timeline", "--out", str(tmp_path), "--format", "text,md")
    assert done.returncode == 0, done.stderr
    # full kernel names: every kernel of the table is printed whole, in text and Markdown
    out, md = (tmp_path / "timeline.txt").read_text(), (tmp_path / "timeline.md").read_text()
    names = stats_tables.kernel_summary(model.kernels)["Name"].head(ROW_LIMIT).to_list()
    assert all(n in out for n in names) and all(n.replace("|", "\\|") in md for n in names)


def test_timeline_gpu_busy_and_bubbles_match_independent_sweep(tmp_path):
    """GPU busy = union of kernel and memcpy/memset intervals; a bubble is a gap over 50 us."""
    db = plain_sqlite(NSYS_2022, tmp_path)
    iv = sorted(db.execute("select start, end from CUPTI_ACTIVITY_KIND_KERNEL union all "
                           "select start, end from CUPTI_ACTIVITY_KIND_MEMCPY").fetchall())
    busy, gaps, cur_s, cur_e = 0, [], iv[0][0], iv[0][1]
    for s, e in iv[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            gaps.append(s - cur_e)
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    bubbles = [g for g in gaps if g > 50_000]
    (device,) = timeline.compute(api.load(None, nsys=NSYS_2022)).top.busy.iter_rows(named=True)
    assert (device["busy_ns"], device["window_ns"]) == (busy, max(e for _, e in iv) - iv[0][0])
    assert (device["bubbles"], device["bubble_ns"]) == (len(bubbles), sum(bubbles))


def test_timeline_keeps_sglang_sections_for_sglang_traces(h200_model, tmp_path):
    """Our own trace under nsys: the SGLang side is there, and our NVTX ranges are grouped by span name (one
    row per name, as many instances as SQL counts ranges of that name), not one row per span id."""
    result = timeline.compute(h200_model)
    side = result.sglang
    assert side is not None and side.evictions.height == 0
    assert set(side.batch_spans) == {sc.SCHEDULE, sc.FORWARD, sc.PROCESS_RESULT}
    assert side.overlap["gpu_busy_ns"] > 0 and side.overlap["cpu_busy_ns"] > 0
    assert result.top.names == {0: "NVIDIA H200"}
    db = plain_sqlite(str(NSYS_H200 / "nsys.sqlite.gz"), tmp_path)
    forwards = db.execute("select count(*) from NVTX_EVENTS e left join StringIds s on s.id = e.textId "
                          "where coalesce(e.text, s.value) like ? and e.end is not null", (f"{sc.FORWARD} %",)).fetchone()[0]
    nvtx_sum = result.tables["nvtx_sum"][0]
    assert nvtx_sum.filter(pl.col("Range") == f"sglang:{sc.FORWARD}")["Instances"].to_list() == [forwards]
    assert not nvtx_sum["Range"].str.contains(r"[0-9a-f]{16}$").any()


def test_cli_reads_nsys_stats_csv(tmp_path):
    done = cli("analyze", "--nsys", KERN_SUM, "--report", "timeline", "--out", str(tmp_path), "--format", "text")
    assert done.returncode == 0, done.stderr
    out = (tmp_path / "timeline.txt").read_text()
    rows = list(csv.DictReader(open(KERN_SUM)))
    assert "from nsys stats CSV" in out and f"showing {ROW_LIMIT} of {len(rows)} rows" in out
    assert rows[0]["Name"] in out and f"{int(rows[0]['Total Time (ns)']):,}" in out
    assert "nsys stats CSVs hold totals only" in out


# ---- diff ----
def test_diff_same_file_is_all_same():
    model = api.load_input(NSYS_2024)
    report = diff.build_report(model, api.load_input(NSYS_2024))
    tables = {s.title: s.table for s in report.sections if s.table is not None}
    assert set(tables) >= {"Kernels", "NVTX ranges", "GPU memory operations", "CUDA API"}
    for table in tables.values():
        assert set(table["status"]) == {"same"} and (table["delta_ms"] == 0).all()
    assert tables["Kernels"].height == stats_tables.kernel_summary(model.kernels).height == 15  # 19 launches


def test_diff_two_exports_kernel_by_kernel(tmp_path):
    a, b = plain_sqlite(NSYS_2022, tmp_path), plain_sqlite(NSYS_2024, tmp_path)
    q = ("select s.value, sum(k.end - k.start), count(*) from CUPTI_ACTIVITY_KIND_KERNEL k "
         "join StringIds s on k.demangledName = s.id group by 1")
    ta, tb = {r[0]: r[1:] for r in a.execute(q)}, {r[0]: r[1:] for r in b.execute(q)}
    x = stats_tables.kernel_summary(api.load_input(NSYS_2022).kernels)
    y = stats_tables.kernel_summary(api.load_input(NSYS_2024).kernels)
    d = diff.compare(x, y, "Name", "Total Time (ns)", "Instances")
    assert set(d.filter(pl.col("status") == "missing")["name"]) == set(ta) - set(tb)
    assert set(d.filter(pl.col("status") == "new")["name"]) == set(tb) - set(ta)
    for r in d.iter_rows(named=True):
        assert r["delta_ns"] == tb.get(r["name"], (0, 0))[0] - ta.get(r["name"], (0, 0))[0]
    done = cli("diff", NSYS_2022, NSYS_2024, "--out", str(tmp_path / "d"), "--format", "text,md")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "d" / "diff.txt").exists() and (tmp_path / "d" / "diff.md").exists()


def test_diff_scaled_run_reports_slower_by_how_much():
    """B = A with one kernel's launches made 50% longer: that kernel, and only it, is slower by 50%."""
    a = api.load_input(NSYS_2024)
    victim = stats_tables.kernel_summary(a.kernels)["Name"][0]
    b = api.load_input(NSYS_2024)
    b.kernels = b.kernels.with_columns(
        pl.when(pl.col("name") == victim).then(pl.col("dur_ns") * 3 // 2).otherwise(pl.col("dur_ns")).alias("dur_ns"))
    result = diff.compute(a, b)
    kernels = next(t for t in result.tables if t.title == "Kernels")
    rows = kernels.rows.filter(pl.col("status") != "same")
    assert rows["name"].to_list() == [victim] and rows["status"].to_list() == ["slower"]
    assert rows["per_call_pct"][0] == pytest.approx(50, abs=0.1) and rows["calls"].to_list() == ["same"]
    section = next(s for s in diff.describe(result).sections if s.title == "Kernels")
    assert any(f.label == "largest per-call regression" and f.source == victim for f in section.figures)


def test_diff_two_traced_runs_compares_spans():
    a = EXAMPLES / "h200-backends" / "server-flashinfer" / "trace"
    b = EXAMPLES / "h200-backends" / "server-triton" / "trace"
    done = cli("diff", str(a), str(b))
    assert done.returncode == 0, done.stderr
    result = diff.compute(api.load_input(str(a)), api.load_input(str(b)))
    tables = {t.title: t.rows for t in result.tables}
    assert "sglang.scheduler.forward [decode]" in tables[diff.SPANS]["name"].to_list()
    assert tables["Kernels"].height  # the Kineto traces recorded next to the spans
    bad = cli("diff", str(a), "/nonexistent")
    assert bad.returncode == 2 and "no such file" in bad.stderr and "Traceback" not in bad.stderr


# ---- nsys export failures report nsys's own words ----
def test_failing_nsys_export_reports_its_error(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nsys"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error: the report was created by a newer version of nsys'\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    with pytest.raises(TraceError, match="exit status 1.*created by a newer version"):
        nsys.open_export(NSYS_REP)
    silent = tmp_path / "bin2" / "nsys"
    silent.parent.mkdir()
    silent.write_text("#!/bin/sh\nexit 0\n")
    silent.chmod(0o755)
    monkeypatch.setenv("PATH", f"{silent.parent}:{os.environ['PATH']}")
    with pytest.raises(TraceError, match=r"exit status 0 but no .* written\): it printed nothing"):
        nsys.open_export(NSYS_REP)
    from sglang_tracing.app import profilers as runner

    trace = tmp_path / "trace"
    trace.mkdir()
    (trace / "nsys.nsys-rep").write_bytes(b"")
    assert runner.export_sqlite(str(fake), str(trace)) is None  # one line on stderr, no traceback


def test_nsys_stats_csv_layouts(tmp_path):
    """The header variants nsys stats has printed: several reports in one captured stdout, 2021-era
    names (Time(%), Average, Minimum), other --timeunit values."""
    capture = tmp_path / "stats.csv"
    capture.write_text(
        "Processing [report1.sqlite] with [/opt/nsys/reports/cuda_gpu_mem_time_sum.py]... \n\n"
        "Time (%),Total Time (ns),Count,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Operation\n"
        "70.1,3344992,1,3344992.0,3344992.0,3344992,3344992,0.0,[CUDA memcpy Device-to-Host]\n"
        "29.9,1425371,2,712685.5,712685.5,703006,722365,13688.9,[CUDA memcpy Host-to-Device]\n\n"
        "Processing [report1.sqlite] with [/opt/nsys/reports/cuda_gpu_mem_size_sum.py]... \n\n"
        "Total (MB),Count,Avg (MB),Med (MB),Min (MB),Max (MB),StdDev (MB),Operation\n"
        "8.389,2,4.194,4.194,4.194,4.194,0.000,[CUDA memcpy Host-to-Device]\n\n"
        "Time (%),Total Time (ns),Instances,Avg (ns),Med (ns),Min (ns),Max (ns),StdDev (ns),Style,Range\n"
        "95.0,3481709,1,3481709.0,3481709.0,3481709,3481709,0.0,PushPop,Profile_Loop\n")
    old = tmp_path / "report1_cudaapisum.csv"
    old.write_text('"Time(%)","Total Time (ns)","Num Calls","Average","Minimum","Maximum","Name"\n'
                   '"97.0","1250000","3","416666.7","1000","1200000","cudaMalloc"\n')
    micro = tmp_path / "osrt.csv"
    micro.write_text("Time (%),Total Time (us),Num Calls,Avg (us),Med (us),Min (us),Max (us),StdDev (us),Name\n"
                     "67.3,335987.431,2,167993.7155,167993.7155,2971.823,333015.608,233376.1985,sem_wait\n")
    from sglang_tracing.analyzer.loaders import nsys_stats

    t = nsys_stats.read(capture)
    assert set(t) == {"cuda_gpu_mem_time_sum", "cuda_gpu_mem_size_sum", "nvtx_sum"}
    assert t["cuda_gpu_mem_time_sum"]["Count"].to_list() == [1, 2]
    assert t["cuda_gpu_mem_size_sum"]["Total (MB)"].to_list() == [8.389]
    assert t["nvtx_sum"].row(0, named=True)["Range"] == "Profile_Loop"
    api_sum = nsys_stats.read(old)["cuda_api_sum"].row(0, named=True)
    assert (api_sum["Num Calls"], api_sum["Avg (ns)"], api_sum["Max (ns)"], api_sum["Med (ns)"]) == (3, 416666.7, 1200000,
                                                                                                       None)
    osrt = nsys_stats.read(micro)["osrt_sum"].row(0, named=True)
    assert osrt["Total Time (ns)"] == 335987431 and osrt["Min (ns)"] == 2971823
    # a folder of them, read by the CLI
    done = cli("analyze", "--nsys", str(tmp_path), "--report", "timeline", "--out", str(tmp_path / "o"),
               "--format", "text")
    assert done.returncode == 0, done.stderr
    out = (tmp_path / "o" / "timeline.txt").read_text()
    assert "sem_wait" in out and "cudaMalloc" in out and "[CUDA memcpy Device-to-Host]" in out


def test_top_down_ranks_ncu_hints(tmp_path):
    done = cli("analyze", "--kineto", KINETO, "--ncu", NCU_TEXT, "--report", "timeline,attention", "--out",
               str(tmp_path), "--format", "text,html")
    assert done.returncode == 0, done.stderr
    out = (tmp_path / "timeline.txt").read_text()
    hints = out.split("ncu hints, ranked by estimated speedup")[1].split("├─ Sources")[0]
    speedups = [float(x) for x in re.findall(r"\|\s+0 \|\s+([\d.]+) \|", hints)]
    assert speedups and speedups == sorted(speedups, reverse=True) and speedups[0] == 83.1
    attention = (tmp_path / "attention.txt").read_text()
    assert "kernel 0 dominant stall: mio_throttle (36.4%)" in attention
    assert "warp_cycles_per_issued: 10.26" in attention
    assert "<td>" in (tmp_path / "timeline.html").read_text()
