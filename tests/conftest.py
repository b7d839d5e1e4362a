"""Shared test settings."""

import torch

# The test models are tiny: one thread avoids contention on a 2-core machine, where two
# threads per process made small steps many times slower.
torch.set_num_threads(1)
