import random

import numpy as np
import pytest
import torch

from sparsity_lab.seeding import seed_everything, torch_generator


def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_same_seed_gives_same_draws_from_all_three_libraries():
    seed_everything(123)
    first = _draws()
    random.random(), np.random.rand(), torch.rand(1)  # move every generator on
    seed_everything(123)
    assert _draws() == first


def test_different_seeds_give_different_draws():
    seed_everything(1)
    one = _draws()
    seed_everything(2)
    two = _draws()
    for a, b in zip(one, two, strict=True):
        assert a != b


def test_torch_generator_is_independent_of_the_global_state():
    a = torch.rand(4, generator=torch_generator(7))
    torch.manual_seed(999)
    torch.rand(10)
    b = torch.rand(4, generator=torch_generator(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(4, generator=torch_generator(8)))


def test_seeding_does_not_force_deterministic_algorithms():
    before = torch.are_deterministic_algorithms_enabled()
    seed_everything(0)
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_out_of_range_seed_is_rejected(seed):
    with pytest.raises(ValueError, match="seed must be in"):
        seed_everything(seed)


def test_non_int_seed_is_rejected():
    with pytest.raises(TypeError, match="seed must be an int"):
        torch_generator(1.5)
