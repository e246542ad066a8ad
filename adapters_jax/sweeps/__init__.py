"""Sweeps: grids declared in config files (grid), run as one process per point here or on Ray (runner),
evaluations of trained runs under variations (evaluate), and the results page (report)."""
