"""The project plan's experiments as commands: each launches traced servers (or uses --url), drives
the workload, writes everything under traces/<experiment>-<timestamp>/ and renders its report."""
