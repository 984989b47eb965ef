"""The roof: what a user runs. The ``sglang-trace`` command line, the demo, the project's experiments,
traced servers started and driven from here (``serving``, ``workload``) and under Nsight Systems or
Nsight Compute (``profilers``). It builds on the floor (``config``, ``semconv``, ``runtime``, the
``plugin`` that SGLang loads) and on the analyzer; nothing below imports it."""
