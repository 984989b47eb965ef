"""What per-layer NVTX ranges cost a forward on the CPU side, side by side: none, torch module hooks (how
``--trace-level layer`` installed them first), the first forward wrappers (four calls of ours a range:
push, annotation, close, pop) and the wrappers ``patches.layer_ranges.install`` builds now (one flag read
a range; the domain's own push/pop where an NVTX tool is attached).

    python3 benchmarks/layer_cost.py [--layers 32] [--forwards 3000] [--rounds 3]

A module tree with a Llama's named modules (per layer: the layer, 2 norms, qkv, attention, o, gate_up,
down; plus embedding, final norm, lm_head) whose modules do no math, so what is timed is the range
machinery itself; the NVTX domain is real (no tool attached: pushes are the library's no-op path, as in a
benchmark without nsys). Per arm and round: median and p99 of a forward, and garbage collections run
(``gc.callbacks``) per 1000 forwards. Arms interleave within each round. The GPU figure (batch-1 TTFT at
``--trace-level layer`` against ``batch``) comes from ``overhead.py --configs traced,traced-layer,untraced``.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import time

import torch

from sglang_tracing.patches import layer_ranges
from sglang_tracing.runtime import nvtx_ranges


class _Leaf(torch.nn.Module):
    def forward(self, x):
        return x


class _Attn(torch.nn.Module):
    def __init__(self, leaf):
        super().__init__()
        self.qkv_proj, self.attn, self.o_proj = leaf(), leaf(), leaf()

    def forward(self, x):
        return self.o_proj(self.attn(self.qkv_proj(x)))


class _Mlp(torch.nn.Module):
    def __init__(self, leaf):
        super().__init__()
        self.gate_up_proj, self.down_proj = leaf(), leaf()

    def forward(self, x):
        return self.down_proj(self.gate_up_proj(x))


class _Layer(torch.nn.Module):
    def __init__(self, leaf):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = leaf(), leaf()
        self.self_attn, self.mlp = _Attn(leaf), _Mlp(leaf)

    def forward(self, x):
        return self.mlp(self.post_attention_layernorm(self.self_attn(self.input_layernorm(x))))


class DecoderStack(torch.nn.Module):
    """A Llama's ``model``: embedding, decoder layers, final norm; each named op a ``leaf()``."""

    def __init__(self, layers: int, leaf=_Leaf):
        super().__init__()
        self.embed_tokens, self.norm = leaf(), leaf()
        self.layers = torch.nn.ModuleList(_Layer(leaf) for _ in range(layers))

    def forward(self, x):
        x = self.embed_tokens(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)


class LlamaShaped(torch.nn.Module):
    def __init__(self, layers: int):
        super().__init__()
        self.model, self.lm_head = DecoderStack(layers), _Leaf()

    def forward(self, x):
        return self.lm_head(self.model(x))


def install_hooks(model) -> list:
    """The earlier --trace-level layer: a pre and a post module hook per range, the name's attributes built
    at every push."""
    handles = []
    for module, name in layer_ranges.range_names(model):
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: nvtx_ranges.push(n)))
        handles.append(module.register_forward_hook(lambda m, a, o: nvtx_ranges.pop()))
    return handles


def install_first_wrappers(model) -> layer_ranges.Installed:
    """The first --trace-level layer wrappers, kept as this benchmark's baseline: every range through what
    is now the wrappers' path while a torch profiler records (push, annotation, close, pop)."""
    installed = layer_ranges.Installed()
    for module, name in layer_ranges.range_names(model):
        attrs = nvtx_ranges.attributes(name)
        installed.wrap(module, lambda forward, a=attrs, n=name: layer_ranges.annotated_wrapper(forward, a, n))
    return installed


def time_forwards(model, n: int) -> dict:
    x = torch.zeros(1)
    collections = [0]

    def count(phase, info):
        if phase == "start":
            collections[0] += 1

    gc.callbacks.append(count)
    times = []
    try:
        for _ in range(n):
            t = time.perf_counter_ns()
            model(x)
            times.append(time.perf_counter_ns() - t)
    finally:
        gc.callbacks.remove(count)
    times.sort()
    return {"median_us": statistics.median(times) / 1e3, "p99_us": times[int(0.99 * (len(times) - 1))] / 1e3,
            "gc_per_1000": 1000 * collections[0] / n}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--forwards", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write the per-round figures here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    nvtx_ranges.enable()
    model = LlamaShaped(args.layers)
    ranges = len(layer_ranges.range_names(model))
    rounds: dict[str, list[dict]] = {"none": [], "module hooks": [], "first wrappers": [], "wrappers": []}
    for _ in range(args.rounds):
        rounds["none"].append(time_forwards(model, args.forwards))
        handles = install_hooks(model)
        rounds["module hooks"].append(time_forwards(model, args.forwards))
        for h in handles:
            h.remove()
        installed = install_first_wrappers(model)
        rounds["first wrappers"].append(time_forwards(model, args.forwards))
        installed.remove()
        installed = layer_ranges.install(model)
        rounds["wrappers"].append(time_forwards(model, args.forwards))
        installed.remove()
    print(f"{ranges} ranges a forward ({args.layers} layers), {args.forwards} forwards x {args.rounds} rounds; "
          "medians over rounds")
    base = statistics.median(r["median_us"] for r in rounds["none"])
    for arm, rs in rounds.items():
        med = statistics.median(r["median_us"] for r in rs)
        print(f"{arm:<14} forward {med:8.1f} us (+{med - base:6.1f} us, {(med - base) / ranges:.2f} us a range)  "
              f"p99 {statistics.median(r['p99_us'] for r in rs):8.1f} us  "
              f"gc {statistics.median(r['gc_per_1000'] for r in rs):.1f} per 1000 forwards")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "ranges": ranges, "rounds": rounds}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
