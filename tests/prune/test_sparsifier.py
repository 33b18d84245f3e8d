"""The ADMM sparsifier: layer selection, masks held through training, errors that change nothing."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from tvm_pattern.errors import ModelError, PatternError
from tvm_pattern.prune.sparsifier import (
    PatternSparsifier,
    apply_masks,
    conv_eligibility,
    layer_types,
    mask_optimizer,
    squash_mask,
)
from tvm_pattern.sparsity.library import PatternLibrary, candidate_patterns

LIB = PatternLibrary(candidate_patterns(4)[[0, 7, 19, 33, 41, 50]])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: two threads on two shared cores only fight (10x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        nn.Linear(10, 10),  # the classifier's last layer: dense by default
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
    with pytest.raises(ModelError, match=r"no layer to prune \(0: first layer .*1: kernel 5x5, not 3x3\)"):
        PatternSparsifier(LIB).prepare(model)
    with pytest.raises(ModelError, match="no Conv2d or Linear at all"):
        PatternSparsifier(LIB).prepare(nn.Sequential(nn.ReLU()))
    # a 1x1-only model is prunable once --pointwise is given; the last layer stays dense
    sp = PatternSparsifier(LIB, pointwise=2.0).prepare(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1),
                                                                     nn.Conv2d(8, 4, 1)))  # fmt: skip
    assert [layer.name for layer in sp.layers] == ["1"] and "last layer" in sp.skipped["2"]


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


# --- every layer type (issue 12) ---------------------------------------------------------------------------


def mixed() -> nn.Sequential:
    """first conv, 3x3, depthwise, 1x1, 3x3, pool, FC, FC (the classifier's last layer)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16),
        nn.Conv2d(16, 24, 1), nn.ReLU(),
        nn.Conv2d(24, 16, 3, padding=1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(16, 20), nn.ReLU(), nn.Linear(20, 10),
    )  # fmt: skip


def check_block_structure(mask: torch.Tensor, keep: int, block) -> None:
    flat = mask.reshape(mask.shape[0], mask.shape[1])
    if block == "unstructured":
        assert int(flat.sum()) == keep
        return
    assert (flat.sum(1) == keep).all()
    for start in range(0, len(flat), block):
        assert (flat[start: start + block] == flat[start]).all()


@pytest.mark.parametrize("block", [1, 4, 16, "unstructured"])
def test_every_layer_type_gets_its_structure(block):
    model = mixed()
    sp = PatternSparsifier(LIB, connectivity=2.0, pointwise=8.0, linear=4.0, depthwise_patterns=True, block=block)
    sp.prepare(model)
    kinds = {layer.name: layer.kind for layer in sp.layers}
    assert kinds == {"2": "conv3x3", "4": "depthwise", "5": "pointwise", "7": "conv3x3", "10": "linear"}
    assert sp.skipped == {"0": "first layer (kept dense by default)",
                          "12": "classifier's last layer (kept dense by default)"}  # fmt: skip
    masks = sp.compute_masks()
    assert set(masks) == set(kinds)
    # depthwise: every channel exactly one library pattern; 1x1 / FC: keep 1/alpha of the columns per block
    assert all(LIB.index_of(k.numpy()) >= 0 for k in masks["4"].flatten(0, 1))
    check_block_structure(masks["5"], 2 if block != "unstructured" else 48, block)
    check_block_structure(masks["10"], 4 if block != "unstructured" else 80, block)
    sp.apply_masks(model)
    sp.squash_mask(model)
    for name, mask in masks.items():
        w = model[int(name)].weight.detach()
        assert torch.equal(w != 0, mask), name  # random weights: no zero of their own


def test_layer_rates_per_type_and_per_layer():
    model = mixed()
    sp = PatternSparsifier(LIB, connectivity=None, linear={"10": 2.0}).prepare(model)
    assert {layer.name for layer in sp.layers} == {"2", "7", "10"}
    assert sp.skipped["4"] == "depthwise patterns not asked for (--depthwise-patterns)"
    assert sp.skipped["5"] == "no pointwise rate given (--pointwise ALPHA)"
    with pytest.raises(ModelError, match=r"rates given for pointwise layers that do not exist: \['2'\]"):
        PatternSparsifier(LIB, pointwise={"2": 2.0}).prepare(mixed())
    with pytest.raises(PatternError, match="alpha must be >= 1"):
        PatternSparsifier(LIB, linear=0.5)
    with pytest.raises(PatternError, match="block must be"):
        PatternSparsifier(LIB, block=0)
    everything = PatternSparsifier(LIB, pointwise=2.0, linear=2.0, skip_first=False, skip_last=False).prepare(mixed())
    assert {"0", "12"} <= {layer.name for layer in everything.layers}


def test_admm_pulls_every_layer_type_towards_its_set():
    model = mixed()
    x, y = torch.randn(8, 3, 4, 4), torch.randint(0, 10, (8,))
    sp = PatternSparsifier(LIB, connectivity=3.0, pointwise=4.0, linear=4.0, depthwise_patterns=True, rho=0.2,
                           rho_growth=1.5).prepare(model)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start = sp.gap()
    for step in range(200):
        loss = nn.functional.cross_entropy(model(x), y) + sp.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            sp.step()
    assert sp.gap() < 0.25 * start


def test_state_dict_round_trip_holds_every_layer_type():
    model = mixed()
    make = lambda block=4: PatternSparsifier(LIB, pointwise=4.0, linear=2.0, depthwise_patterns=True,  # noqa: E731
                                             block=block)  # fmt: skip
    sp = make().prepare(model)
    sp.step()
    state = sp.state_dict()
    assert {n: v["kind"] for n, v in state["layers"].items()}["5"] == "pointwise" and state["block"] == 4
    other = make().prepare(copy.deepcopy(model))
    other.load_state_dict(state)
    for a, b in zip(sp.layers, other.layers, strict=True):
        assert torch.equal(a.z, b.z) and torch.equal(a.u, b.u)
    with pytest.raises(ModelError, match="block 4"):
        make(8).prepare(copy.deepcopy(model)).load_state_dict(state)
    assert state["kernel_block"] == "auto"  # narrow convs: per kernel, so a state of kernel_block 1 fits
    PatternSparsifier(LIB, pointwise=4.0, linear=2.0, depthwise_patterns=True, kernel_block=1).prepare(
        copy.deepcopy(model)).load_state_dict(state)
    blocked = PatternSparsifier(LIB, pointwise=4.0, linear=2.0, depthwise_patterns=True, kernel_block=2)
    with pytest.raises(ModelError, match=r"kernel_block 'auto'.*would change structure"):
        blocked.prepare(copy.deepcopy(model)).load_state_dict(state)


@pytest.mark.parametrize("kernel_block", [1, 2, 4])
def test_3x3_connectivity_in_filter_blocks(kernel_block):
    model = net()
    sp = PatternSparsifier(LIB, connectivity={"2": 4.0, "6": None}, kernel_block=kernel_block).prepare(model)
    for _ in range(3):
        sp.step()
    kept = sp.compute_masks()["2"].flatten(2).any(-1)  # (O, I)
    for start in range(0, kept.shape[0], kernel_block):
        assert (kept[start: start + kernel_block] == kept[start]).all()
    assert int(kept.sum()) == round(kept.numel() / 4.0)  # whole blocks here: the count is exact
    with pytest.raises(PatternError, match="kernel_block"):
        PatternSparsifier(LIB, kernel_block=0)


def test_linear_zeros_survive_optimiser_steps():
    model = mixed()
    sp = PatternSparsifier(LIB, pointwise=4.0, linear=4.0, depthwise_patterns=True).prepare(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    masks = sp.apply_masks(model)
    mask_optimizer(opt, model)
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    squash_mask(model)
    for name, mask in masks.items():
        assert torch.equal(model[int(name)].weight.detach()[~mask], torch.zeros(int((~mask).sum())))


def test_a_network_ending_on_a_3x3_conv_has_no_classifier_to_keep():
    """A feature extractor (VGG's conv stack) ends on a 3x3 conv: it is pruned; a final 1x1 conv or FC is not."""
    stack = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    assert layer_types(stack) == {"0": ("conv3x3", "first layer (kept dense by default)"), "2": ("conv3x3", None)}
    head = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 10, 1))
    assert layer_types(head)["2"] == ("pointwise", "classifier's last layer (kept dense by default)")
