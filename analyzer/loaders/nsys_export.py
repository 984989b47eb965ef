"""Why an ``nsys export`` run wrote no file, in nsys's own words: shared by the loader (which exports an
``.nsys-rep`` it is given) and the ``sglang-trace nsys`` launcher (which exports its own capture)."""
from __future__ import annotations

import os
import subprocess


def export_failure(done: subprocess.CompletedProcess, out: str) -> str | None:
    """Why an ``nsys export`` run did not produce ``out`` (None when it did), in nsys's own words:
    its last lines of output (nsys prints some errors on stdout), else its exit status."""
    if done.returncode == 0 and os.path.exists(out):
        return None
    said = [ln.strip() for ln in f"{done.stdout or ''}\n{done.stderr or ''}".splitlines() if ln.strip()]
    status = f"exit status {done.returncode}" if done.returncode else f"exit status 0 but no {out} written"
    return f"nsys export failed ({status}): " + (" | ".join(said[-2:]) if said else "it printed nothing")
