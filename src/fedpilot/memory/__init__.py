"""Measured memory cost model: saved-tensor profiler, Mem(S) cost profiles, budgets and reports."""
