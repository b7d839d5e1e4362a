"""Shared test settings."""

import os

import torch

# A test checks what a call computes: never a result the run cache kept from another process
# (tests/test_run_cache.py switches it on in a folder of its own).
os.environ.pop("SPARSITY_LAB_RUN_CACHE", None)

# The test models are tiny: one thread avoids contention on a 2-core machine, where two
# threads per process made small steps many times slower.
torch.set_num_threads(1)
