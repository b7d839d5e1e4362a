import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sparsity_lab.seeding import reseed_loader, seed_everything, torch_generator


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


def _order(loader) -> list[int]:
    return [int(i) for (batch,) in loader for i in batch]


def test_reseed_loader_restarts_a_loaders_own_generator():
    data = TensorDataset(torch.arange(20))
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch_generator(3))
    first = _order(loader)
    assert _order(loader) != first  # without reseeding the second pass differs
    reseed_loader(loader, 3)
    assert _order(loader) == first  # reseeded with the seed it was made with: the first order
    fresh = DataLoader(data, batch_size=4, shuffle=True, generator=torch_generator(3))
    reseed_loader(fresh, 3)
    assert _order(fresh) == first  # a fresh loader is unchanged by it
    reseed_loader(loader, 4)
    assert _order(loader) != first
    with pytest.raises(TypeError, match="seed must be an int"):
        reseed_loader(loader, 1.5)


def test_reseed_loader_leaves_loaders_without_a_generator_alone():
    loader = DataLoader(TensorDataset(torch.arange(8)), batch_size=4, shuffle=False)
    reseed_loader(loader, 0)
    assert _order(loader) == list(range(8))
    reseed_loader([torch.zeros(2)], 0)  # any iterable of batches is accepted
