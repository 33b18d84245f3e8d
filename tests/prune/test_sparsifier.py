"""The ADMM sparsifier: layer selection, masks held through training, errors that change nothing."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tvm_pattern.errors import ModelError, PatternError
from tvm_pattern.prune.sparsifier import PatternSparsifier, apply_masks, conv_eligibility, mask_optimizer, squash_mask
from tvm_pattern.sparsity.library import PatternLibrary, candidate_patterns

LIB = PatternLibrary(candidate_patterns(4)[[0, 7, 19, 33, 41, 50]])


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # first: dense by default
        nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 12, 3, padding=1, groups=12),  # depthwise
        nn.Conv2d(12, 16, 1),  # pointwise
        nn.Conv2d(16, 10, 3, stride=2, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def check_pattern_sparse(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        w = modules[name].weight.detach()
        assert torch.equal(w[~mask], torch.zeros_like(w[~mask])), f"{name}: pruned weights are not exactly zero"
        for kernel in mask.flatten(0, 1):
            assert kernel.sum() == 0 or LIB.index_of(kernel.numpy()) >= 0


def test_eligibility_names_the_reason():
    reasons = conv_eligibility(net())
    assert reasons == {
        "0": "first layer (kept dense by default)",
        "2": None,
        "4": "depthwise (groups=12)",
        "5": "kernel 1x1, not 3x3",
        "6": None,
    }
    assert conv_eligibility(net(), skip_first=False)["0"] is None


def test_masks_fit_library_and_connectivity():
    model = net()
    sp = PatternSparsifier(LIB, connectivity={"2": 4.0, "6": None}).prepare(model)
    masks = sp.compute_masks()
    assert set(masks) == {"2", "6"}
    assert int(masks["2"].flatten(2).any(-1).sum()) == round(8 * 12 / 4.0)
    assert int(masks["6"].flatten(2).any(-1).sum()) == 16 * 10
    for mask in masks.values():
        kernels = mask.flatten(0, 1)
        assert all(k.sum() == 0 or LIB.index_of(k.numpy()) >= 0 for k in kernels)


def test_admm_pulls_weights_towards_the_constraint_sets():
    torch.manual_seed(0)
    model = net()
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    sp = PatternSparsifier(LIB, connectivity=3.0, rho=0.1, rho_growth=1.5).prepare(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = sp.gap()
    for step in range(200):
        loss = nn.functional.cross_entropy(model(x), y) + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            sp.step()
    assert sp.gap() < 0.25 * start


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_zeros_survive_many_optimiser_steps(make_opt):
    torch.manual_seed(1)
    model = net()
    sp = PatternSparsifier(LIB, connectivity=2.0).prepare(model)
    # Build momentum / Adam moments on the dense weights first, so stale state could revive zeros.
    opt = make_opt(model.parameters())
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    masks = sp.apply_masks(model)
    mask_optimizer(opt, model)
    for _ in range(50):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        check_pattern_sparse(model, masks)
    for name, mask in masks.items():
        module = dict(model.named_modules())[name]
        assert torch.equal(module.weight_orig.detach()[~mask], torch.zeros(int((~mask).sum())))
        for value in opt.state[module.weight_orig].values():
            if torch.is_tensor(value) and value.shape == mask.shape:
                assert torch.equal(value[~mask], torch.zeros_like(value[~mask]))
    squash_mask(model)
    check_pattern_sparse(model, masks)
    assert all(not hasattr(m, "weight_orig") for m in model.modules())


def test_masks_apply_to_a_users_own_model():
    model, user_model = net(), net()
    masks = PatternSparsifier(LIB).prepare(model).compute_masks()
    apply_masks(user_model, masks)
    check_pattern_sparse(user_model, masks)
    assert torch.nn.utils.prune.is_pruned(user_model[2])


def test_mismatched_mask_changes_nothing():
    model = net()
    before = copy.deepcopy(model.state_dict())
    masks = PatternSparsifier(LIB).prepare(model).compute_masks()
    masks["6"] = masks["6"][:, :3]
    with pytest.raises(PatternError, match=r"mask for '6' has shape \(10, 3, 3, 3\), the weight has \(10, 16, 3, 3\)"):
        apply_masks(model, masks)
    with pytest.raises(ModelError, match="no Conv2d"):
        apply_masks(model, {"nope": masks["2"]})
    assert not any(torch.nn.utils.prune.is_pruned(m) for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_model_without_3x3_convs_is_rejected():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 5), nn.Flatten())
    with pytest.raises(ModelError, match="no prunable 3x3 convolution"):
        PatternSparsifier(LIB).prepare(model)
    with pytest.raises(ModelError, match="no Conv2d at all"):
        PatternSparsifier(LIB).prepare(nn.Linear(3, 3))


def test_bad_alpha_rejected_before_touching_the_model():
    with pytest.raises(PatternError, match="alpha must be >= 1"):
        PatternSparsifier(LIB, connectivity=0.5)
    with pytest.raises(PatternError, match="alpha must be >= 1"):
        PatternSparsifier(LIB, connectivity={"2": 0.9})
    with pytest.raises(ModelError, match="do not exist"):
        PatternSparsifier(LIB, connectivity={"conv9": 2.0}).prepare(net())


def test_projection_of_pattern_sparse_weights_is_identity():
    model = net()
    sp = PatternSparsifier(LIB, connectivity=None).prepare(model)
    masks = sp.apply_masks(model)
    squash_mask(model)
    again = PatternSparsifier(LIB, connectivity=None).prepare(model).compute_masks()
    for name, mask in masks.items():
        nonempty = mask.flatten(2).any(-1)
        assert torch.equal(again[name][nonempty], mask[nonempty])
    assert np.isclose(PatternSparsifier(LIB, connectivity=None).prepare(model).gap(), 0.0)
