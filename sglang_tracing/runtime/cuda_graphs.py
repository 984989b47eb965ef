"""Which forward phases a server replays as CUDA graphs: a replay is one launch, so no Python runs per
layer there and per-layer ranges and timing show only for eager forwards."""
from __future__ import annotations


def graph_phases(server_args) -> list[str]:
    """The forward phases this server replays as CUDA graphs (where no layer ranges show)."""
    if not str(getattr(server_args, "device", "cuda") or "cuda").startswith("cuda"):
        return []
    if getattr(server_args, "disable_cuda_graph", False):
        return []

    def replayed(phase: str) -> bool:
        return not (getattr(server_args, f"disable_{phase}_cuda_graph", False)
                    or getattr(server_args, f"cuda_graph_backend_{phase}", None) == "disabled")

    phases = ["decode"] if replayed("decode") else []
    if hasattr(server_args, "disable_prefill_cuda_graph") and replayed("prefill"):
        phases.append("prefill")
    return phases


def graph_note(phases: list[str]) -> str:
    """What a detail window will show, in one sentence."""
    if not phases:
        return "every forward runs eagerly: each shows its layers"
    return (f"{' and '.join(phases)} forwards replay CUDA graphs and show no layers (they still count toward "
            "the window); add --disable-prefill-cuda-graph or --disable-cuda-graph to see them")
