"""Every figure of this example's README, recomputed from the raw files with nothing but json, gzip and
statistics (no analyzer code, no polars): the check that the README and the analyzer's reports agree.

    python3 traces/examples/h100-features/recompute_figures.py [--json]

Rounds: results.json.gz lists each round's requests by SGLang's rid, so a span belongs to a round by its
rid; tier operations without a rid (backups, evictions, load completions) belong to the traced server's
round that began last before them. Round 1 fills the caches; the summaries are over rounds 2-6.
"""
from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BLOCK = 16  # tokens per prefix digest (the recorder's block)


def _value(v: dict):
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    (kind, raw), = v.items()
    return int(raw) if kind == "intValue" else raw


def spans(trace_dir: Path) -> list[dict]:
    out = []
    for path in sorted(trace_dir.glob("spans-*.jsonl.gz")):
        with gzip.open(path, "rt") as f:
            for line in f:
                for rs in json.loads(line)["resourceSpans"] if line.strip() else []:
                    for ss in rs["scopeSpans"]:
                        out += [{"name": s["name"], "span_id": s["spanId"], "start": int(s["startTimeUnixNano"]),
                                 "end": int(s["endTimeUnixNano"]),
                                 "attrs": {a["key"]: _value(a["value"]) for a in s.get("attributes", [])}}
                                for s in ss["spans"]]
    return out


def named(all_spans, name):
    return [s for s in all_spans if s["name"] == name]


def med(xs):
    return statistics.median(xs) if xs else None


def client_summary(rounds: list[dict]) -> dict:
    """Per round from each request's client record (not the script's per-round figures), then median, min
    and max over rounds 2..: throughput = output tokens / round wall, TTFT and ITL = medians over requests."""
    per_round = []
    for r in rounds:
        reqs = r["requests"]
        itls = [q["mean_itl_ns"] for q in reqs if q["mean_itl_ns"]]
        per_round.append({"tok_per_s": sum(q["completion_tokens"] for q in reqs) / r["wall_s"],
                          "ttft_ms": statistics.median(q["ttft_ns"] for q in reqs) / 1e6,
                          "itl_ms": statistics.median(itls) / 1e6,
                          # per token after the first, as a streaming user waits for them
                          "token_itl_ms": statistics.median((q["e2e_ns"] - q["ttft_ns"]) / (q["completion_tokens"] - 1)
                                                            for q in reqs) / 1e6})
    measured = per_round[1:]
    return {f: {"median": med([r[f] for r in measured]), "min": min(r[f] for r in measured),
                "max": max(r[f] for r in measured)} for f in per_round[0]} | {"rounds": len(measured)}


def round_of(rounds: list[dict]) -> tuple[dict, list[int]]:
    rid_round = {q["rid"]: i + 1 for i, r in enumerate(rounds) for q in r["requests"]}
    starts = [min(q["sent_ns"] for q in r["requests"]) for r in rounds]
    return rid_round, starts


def by_time(t: int, starts: list[int]) -> int:
    return max([i + 1 for i, s in enumerate(starts) if s <= t], default=0)  # 0: before round 1 (warm-up)


def hicache(results: dict) -> dict:
    raw = spans(HERE / "hicache-traced")
    rounds = results["hicache"]["rounds"]["hicache-traced"]
    rid_round, starts = round_of(rounds)
    per = {i: {"requests": 0, "computed": 0, "device_hits": 0, "host_hits": 0, "device_tokens": 0,
               "host_tokens": 0, "load_backs": 0, "load_back_tokens": 0, "backups": 0, "backup_tokens": 0,
               "device_evictions": 0, "evicted_tokens": 0, "evicted_nodes": 0, "host_evictions": 0}
           for i in range(0, len(rounds) + 1)}
    for p in named(raw, "sglang.request.prefill"):
        a, r = p["attrs"], rid_round.get(p["attrs"]["sglang.rid"])
        if r is None:
            continue
        d, h = a.get("sglang.request.cached_tokens_device", 0), a.get("sglang.request.cached_tokens_host", 0)
        row = per[r]
        row["requests"] += 1
        row["device_tokens"] += d
        row["host_tokens"] += h
        row["host_hits" if h else "device_hits" if d else "computed"] += 1
    for s in named(raw, "sglang.hicache.load_back"):
        if s["attrs"]["sglang.hicache.tokens"] > 0:
            row = per[rid_round.get(s["attrs"]["sglang.rid"], by_time(s["start"], starts))]
            row["load_backs"] += 1
            row["load_back_tokens"] += s["attrs"]["sglang.hicache.tokens"]
    for s in named(raw, "sglang.hicache.backup"):
        row = per[by_time(s["start"], starts)]
        row["backups"] += 1
        row["backup_tokens"] += s["attrs"]["sglang.hicache.tokens"]
    for s in named(raw, "sglang.cache.evict"):
        row = per[by_time(s["start"], starts)]
        row["device_evictions"] += 1
        row["evicted_tokens"] += s["attrs"]["sglang.cache.freed_tokens"]
        row["evicted_nodes"] += len(s["attrs"].get("sglang.hicache.evicted_ages_ns", []))
    for s in named(raw, "sglang.hicache.evict_host"):
        per[by_time(s["start"], starts)]["host_evictions"] += 1

    # thrash: age of each hit (its lookup minus the last touch of an earlier request with the same prefix
    # block) against the age of device nodes at eviction
    match = {s["attrs"]["sglang.rid"]: s for s in named(raw, "sglang.request.prefix_match")}
    prefill = {s["attrs"]["sglang.rid"]: s for s in named(raw, "sglang.request.prefill")}
    ends = {s["attrs"]["sglang.rid"]: s["end"] for s in named(raw, "sglang.request")}
    hit_ages, hit_ages_by_tier = [], {}
    for rid, p in prefill.items():
        matched = p["attrs"].get("sglang.request.cached_tokens_device", 0) + p["attrs"].get("sglang.request.cached_tokens_host", 0)
        digests = match[rid]["attrs"].get("sglang.prefix.block_digests") or [] if rid in match else []
        k = matched // BLOCK - 1
        if matched < BLOCK or len(digests) <= k:
            continue
        t = match[rid]["start"]
        touches = []
        for other, m in match.items():
            od = m["attrs"].get("sglang.prefix.block_digests") or []
            if other != rid and other in prefill and len(od) > k and od[k] == digests[k] and prefill[other]["start"] < t:
                touches.append(ends[other] if ends.get(other, t) < t else prefill[other]["start"])
        if touches:
            hit_ages.append(t - max(touches))
            tier = "host" if p["attrs"].get("sglang.request.cached_tokens_host", 0) else "device"
            hit_ages_by_tier.setdefault(tier, []).append(t - max(touches))
    evicted_ages = [a for s in named(raw, "sglang.cache.evict") for a in s["attrs"].get("sglang.hicache.evicted_ages_ns", [])]
    dones = named(raw, "sglang.hicache.load_done")
    loads = [s for s in named(raw, "sglang.hicache.load_back") if s["attrs"]["sglang.hicache.tokens"] > 0]

    forwards = {s["span_id"]: s["attrs"] for s in named(raw, "sglang.scheduler.forward")}
    waited = []  # the prefill's forward began on the GPU before the copy that carried its prefix ended
    for load in loads:
        nodes = set(load["attrs"]["sglang.hicache.node_ids"])
        done = min((d for d in dones if d["start"] >= load["start"] and nodes & set(d["attrs"]["sglang.hicache.node_ids"])),
                   key=lambda d: d["start"])
        fwd = forwards[prefill[load["attrs"]["sglang.rid"]]["attrs"]["sglang.forward.span_id"]]
        waited.append(done["attrs"]["sglang.forward.gpu_end_ns"] - fwd["sglang.forward.gpu_start_ns"])
    roots = {s["attrs"]["sglang.rid"]: s for s in named(raw, "sglang.request")}
    http = {s["attrs"]["sglang.rid"]: s for s in named(raw, "sglang.request.http")}
    ttft = {"computed": [], "device hit": [], "host load-back": []}
    client_ttft = {q["rid"]: q["ttft_ns"] for r in rounds for q in r["requests"]}
    client_by = {k: [] for k in ttft}
    for rid, p in prefill.items():
        if rid not in rid_round:
            continue
        a = p["attrs"]
        src = "host load-back" if a.get("sglang.request.cached_tokens_host", 0) else \
            "device hit" if a.get("sglang.request.cached_tokens_device", 0) else "computed"
        ttft[src].append(http[rid]["attrs"]["sglang.request.first_byte_ns"] - roots[rid]["start"])
        client_by[src].append(client_ttft[rid])
    host_used = [s["attrs"]["sglang.hicache.host_used_tokens"] for s in raw if "sglang.hicache.host_used_tokens" in s["attrs"]]
    host_total = {s["attrs"]["sglang.hicache.host_total_tokens"] for s in raw if "sglang.hicache.host_total_tokens" in s["attrs"]}
    return {
        "per_round": {r: v for r, v in per.items() if any(v.values())},
        "load_backs": len(loads), "load_back_tokens": sum(s["attrs"]["sglang.hicache.tokens"] for s in loads),
        "load_back_MiB": sum(s["attrs"]["sglang.hicache.bytes"] for s in loads) / 2**20,
        "load_back_gpu_ms_median": med([d["attrs"]["sglang.hicache.gpu_duration_ns"] for d in dones]) / 1e6,
        "load_back_GB_per_s_median": med([d["attrs"]["sglang.hicache.bytes"] / d["attrs"]["sglang.hicache.gpu_duration_ns"]
                                          for d in dones]),
        "load_done": len(dones),
        "prefills_that_waited": f"{sum(w > 0 for w in waited)} of {len(waited)}",
        "wait_ms_median_upper_bound": med([max(w, 0) for w in waited]) / 1e6,
        "backups": len(named(raw, "sglang.hicache.backup")), "device_evictions": len(named(raw, "sglang.cache.evict")),
        "host_evictions": len(named(raw, "sglang.hicache.evict_host")),
        "device_evicted_nodes": len(evicted_ages),
        "hit_age_ms_median": med(hit_ages) / 1e6, "hits_with_age": len(hit_ages),
        "hit_age_ms_median_by_where_it_hit": {k: (med(v) / 1e6, len(v)) for k, v in sorted(hit_ages_by_tier.items())},
        "device_evicted_age_ms_median": med(evicted_ages) / 1e6,
        "device_thrashing": med(evicted_ages) < med(hit_ages),
        "host_used_max": max(host_used), "host_total": sorted(host_total),
        "ttft_ms_median_server": {k: (med(v) / 1e6, len(v)) for k, v in ttft.items()},
        "ttft_ms_median_client": {k: (med(v) / 1e6, len(v)) for k, v in client_by.items()},
        "client": {n: client_summary(rs) for n, rs in results["hicache"]["rounds"].items()},
    }


def speculative(results: dict) -> dict:
    raw = spans(HERE / "spec-traced")
    rounds = results["spec"]["rounds"]
    rid_round, _ = round_of(rounds["spec-traced"])
    users = {q["rid"] for r in rounds["spec-traced"] for q in r["requests"]}
    accepts = named(raw, "sglang.spec.accept")
    decodes = {s["attrs"]["sglang.rid"]: s for s in named(raw, "sglang.request.decode")}
    roots = {s["attrs"]["sglang.rid"]: s for s in named(raw, "sglang.request")}
    returned = {rid: s["attrs"]["sglang.request.output_tokens"] for rid, s in roots.items()}
    every = [(a, rid, c) for a in accepts
             for rid, c in zip(a["attrs"]["sglang.batch.rids"], a["attrs"]["sglang.spec.correct_drafts"])]

    def after_finish(a, rid):
        """The step's result was processed after the request's last tokens were stamped (its decode span's end,
        on the same scheduler clock): a step launched before the previous one showed the request finished
        (overlap scheduling), whose result SGLang dropped."""
        return rid in decodes and a["start"] > decodes[rid]["end"]

    kept = [(a, rid, c) for a, rid, c in every if not after_finish(a, rid)]
    dropped = [(a, rid, c) for a, rid, c in every if after_finish(a, rid)]
    entries = [(rid, c) for _, rid, c in kept]
    proposed = sum(a["attrs"]["sglang.spec.draft_tokens"] - 1 for a, _, _ in kept)
    accepted = sum(c for _, c in entries)
    per_round = {}
    for rid, c in entries:
        r = per_round.setdefault(rid_round.get(rid, 0), {"request_steps": 0, "accepted": 0})
        r["request_steps"] += 1
        r["accepted"] += c
    for r in per_round.values():
        r["tokens_per_request_step"] = (r["accepted"] + r["request_steps"]) / r["request_steps"]
    dist = {}
    for _, c in entries:
        dist[c + 1] = dist.get(c + 1, 0) + 1

    def step_itl(trace_raw, rids, cut=True):
        """Mean over requests of the mean gap > 0 between token times (a step's tokens share a time), and the
        gaps of 0; ``cut``: only the tokens the request returned (its request span's count), as the client got
        them, not those a step accepted past its end."""
        out_of = {s["attrs"]["sglang.rid"]: s["attrs"]["sglang.request.output_tokens"] for s in named(trace_raw, "sglang.request")}
        per_req, zero, steps = [], 0, []
        for d in named(trace_raw, "sglang.request.decode"):
            rid = d["attrs"]["sglang.rid"]
            if rid not in rids:
                continue
            t = d["attrs"]["sglang.request.token_times_ns"]
            t = t[:out_of[rid]] if cut else t
            gaps = [b - a for a, b in zip(t, t[1:])]
            zero += sum(g == 0 for g in gaps)
            pos = [g for g in gaps if g > 0]
            steps.append(pos)
            if pos:
                per_req.append(statistics.mean(pos))
        return statistics.mean(per_req) / 1e6, zero, sum(map(len, steps))

    steps_of: dict[str, int] = {}
    correct_of: dict[str, int] = {}
    for rid, c in entries:
        steps_of[rid] = steps_of.get(rid, 0) + 1
        correct_of[rid] = correct_of.get(rid, 0) + c
    all_steps_of: dict[str, int] = {}
    for _, rid, _ in every:
        all_steps_of[rid] = all_steps_of.get(rid, 0) + 1
    user_decodes = [decodes[rid]["attrs"] for rid in users]
    forwards = {s["span_id"]: s["attrs"] for s in raw if s["name"] == "sglang.scheduler.forward"}
    ended = {rid: s["end"] for rid, s in roots.items()}
    by_root_end = [(a, rid, c) for a, rid, c in every if ended[rid] < a["start"]]
    delays = [(a["start"] - ended[rid]) / 1e6 for a, rid, _ in by_root_end]
    spec_rids = {rid for rid, _ in entries}
    consistency = {  # SGLang's per-request counts against our accept spans, and tokens past max_new_tokens
        "user_requests": len(user_decodes),
        # before the fix: every accept entry counted
        "all_accept_steps_minus_sglang_verify_ct": _histogram(
            all_steps_of[a["sglang.rid"]] - a["sglang.request.spec_verify_ct"] for a in user_decodes),
        "all_entries_tokens_per_request_step": statistics.mean(c + 1 for _, _, c in every),
        "all_entries_acceptance": sum(c for _, _, c in every)
        / sum(a["attrs"]["sglang.spec.draft_tokens"] - 1 for a, _, _ in every),
        "uncut_zero_gaps": step_itl(raw, spec_rids, cut=False)[1],
        # the steps after a request finished, by its request span's end (tokenizer process, later)
        "entries_after_request_span_end": len(by_root_end),
        "accept_spans_with_such_an_entry": len({id(a) for a, _, _ in by_root_end}),
        "of_them_in_their_forward_span_rids": sum(
            1 for a, rid, _ in by_root_end if rid in forwards[a["attrs"]["sglang.forward.span_id"]]["sglang.batch.rids"]),
        "forwards_with_overlap_on": f'{sum(1 for f in forwards.values() if f.get("sglang.scheduler.overlap"))} of {len(forwards)}',
        "step_after_request_end_ms_median_max": (med(delays), max(delays)),
        # ... and by its decode span's end (scheduler clock): what the analyzer leaves out
        "entries_after_finish": len(dropped), "steps_with_such_an_entry": len({id(a) for a, _, _ in dropped}),
        "tokens_accepted_after_finish": sum(c + 1 for _, _, c in dropped),
        "user_requests_delivered_steps_equal_sglang_verify_ct": sum(
            steps_of[a["sglang.rid"]] == a["sglang.request.spec_verify_ct"] for a in user_decodes),
        "user_requests_delivered_correct_equal_sglang": sum(
            correct_of[a["sglang.rid"]] == a["sglang.request.spec_correct_drafts"] for a in user_decodes),
        # tokens a finishing step accepted past max_new_tokens: stamped on the decode span, never returned
        "decode_span_tokens_over_returned_requests": sum(
            1 for a in user_decodes if a["sglang.request.output_tokens"] > returned[a["sglang.rid"]]),
        "tokens_not_returned": sum(max(0, d["attrs"]["sglang.request.output_tokens"] - returned[rid])
                                   for rid, d in decodes.items() if rid in spec_rids),
        "decode_span_tokens_max": max(a["sglang.request.output_tokens"] for a in user_decodes),
        "returned_tokens_per_sglang_verify_step": sum(returned[a["sglang.rid"]] - 1 for a in user_decodes)
        / sum(a["sglang.request.spec_verify_ct"] for a in user_decodes),
        "returned_tokens_per_request_step": sum(returned[rid] - 1 for rid in spec_rids if rid in decodes)
        / sum(steps_of[rid] for rid in spec_rids if rid in decodes),
    }
    # the client's own streamed chunks against the steps that reached it (returned tokens only)
    client = [q for r in rounds["spec-traced"] for q in r["requests"]]
    users_itl_ms, _, users_steps = step_itl(raw, users)
    consistency["user_step_itl_ms_mean_trace_vs_client_chunks"] = (
        users_itl_ms, statistics.mean(q["mean_itl_ns"] for q in client) / 1e6)
    consistency["user_gaps_between_steps_trace_vs_client_chunks"] = (users_steps, sum(len(q["itls_ns"]) for q in client))
    nospec_raw = spans(HERE / "nospec-traced")
    nospec_users = {q["rid"] for r in rounds["nospec-traced"] for q in r["requests"]}
    return {
        "steps": len(accepts), "proposed": proposed, "accepted": accepted, "acceptance": accepted / proposed,
        "draft_tokens_per_step": sorted({a["attrs"]["sglang.spec.draft_tokens"] for a in accepts}),
        "tokens_per_request_step_mean": statistics.mean(c + 1 for _, c in entries),
        "accepted_drafts_per_request_step_mean": statistics.mean(c for _, c in entries),
        "batch_size_mean": statistics.mean(len(a["attrs"]["sglang.batch.rids"]) for a in accepts),
        "steps_at_max_tokens": dist.get(max(dist)), "request_steps": len(entries), "max_tokens": max(dist),
        "per_round": dict(sorted(per_round.items())),
        "draft_gpu_ms": sum(s["attrs"].get("sglang.forward.gpu_duration_ns", 0) for s in named(raw, "sglang.spec.draft")) / 1e6,
        "verify_gpu_ms": sum(s["attrs"].get("sglang.forward.gpu_duration_ns", 0) for s in named(raw, "sglang.spec.verify")) / 1e6,
        "draft_wall_ms": sum(s["end"] - s["start"] for s in named(raw, "sglang.spec.draft")) / 1e6,
        "verify_wall_ms": sum(s["end"] - s["start"] for s in named(raw, "sglang.spec.verify")) / 1e6,
        "spec_step_itl_ms_mean_all": step_itl(raw, spec_rids)[0], "spec_zero_gaps": step_itl(raw, spec_rids)[1],
        "nospec_itl_ms_mean_users": step_itl(nospec_raw, nospec_users)[0],
        "nospec_zero_gaps": step_itl(nospec_raw, nospec_users)[1],
        "client": {n: client_summary(rs) for n, rs in rounds.items()},
        "consistency": consistency,
    }


def _histogram(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def main() -> int:
    with gzip.open(HERE / "results.json.gz", "rt") as f:
        results = json.load(f)
    out = {"gpu": results["gpu"], "hicache": hicache(results), "spec": speculative(results)}
    for phase in ("hicache", "spec"):
        c = out[phase]["client"]
        base = f"{phase}-untraced"
        out[phase]["traced_over_untraced"] = {f: c[f"{phase}-traced"][f]["median"] / c[base][f]["median"]
                                              for f in ("tok_per_s", "ttft_ms", "itl_ms")}
    sp = out["spec"]
    tput = {n: [sum(q["completion_tokens"] for q in r["requests"]) / r["wall_s"] for r in results["spec"]["rounds"][n][1:]]
            for n in ("spec-traced", "spec-untraced")}
    sp["rounds_traced_slower"] = sum(t < u for t, u in zip(tput["spec-traced"], tput["spec-untraced"]))
    sp["draft_share_of_gpu"] = sp["draft_gpu_ms"] / (sp["draft_gpu_ms"] + sp["verify_gpu_ms"])
    sp["draft_gpu_ms_per_step"], sp["verify_gpu_ms_per_step"] = sp["draft_gpu_ms"] / sp["steps"], sp["verify_gpu_ms"] / sp["steps"]
    sp["draft_wall_ms_per_accepted_draft"] = sp["draft_wall_ms"] / sp["accepted"]
    c = out["spec"]["client"]
    out["spec"]["spec_over_nospec_traced"] = {f: c["spec-traced"][f]["median"] / c["nospec-traced"][f]["median"]
                                              for f in ("tok_per_s", "ttft_ms", "itl_ms", "token_itl_ms")}
    if "--json" in sys.argv:
        print(json.dumps(out, indent=1, default=str))
    else:
        _print(out)
    return 0


def _print(d, indent=""):
    for k, v in d.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _print(v, indent + "  ")
        else:
            print(f"{indent}{k}: {round(v, 4) if isinstance(v, float) else v}")


if __name__ == "__main__":
    sys.exit(main())
