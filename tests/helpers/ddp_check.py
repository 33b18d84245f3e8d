"""Run by the tests as ``torchrun --nproc-per-node 2 tests/helpers/ddp_check.py OUT`` and as ``python ... OUT``.

Trains a BN- and dropout-free CNN with the ADMM penalty and sparsifier steps through ``training.train`` on
random data (a global batch of 64), then hard-prunes. Under torchrun every rank's ADMM state, masks and
weights are gathered and rank 0 checks they are bitwise identical across ranks; rank 0 saves them to OUT
so the test can compare one process against two.
"""

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from tvm_pattern.prune import distributed
from tvm_pattern.prune.recipe import extract_library
from tvm_pattern.prune.sparsifier import PatternSparsifier
from tvm_pattern.prune.training import train


def main(out: str) -> None:
    runtime = distributed.setup("cpu")
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.randn(256, 1, 12, 12, generator=generator), torch.randint(0, 10, (256,), generator=generator)
    dataset = TensorDataset(images, labels)
    train(model, dataset, 1.0, batch_size=64, desc="dense", progress=False, runtime=runtime)
    library = extract_library(model, k=6)
    sparsifier = PatternSparsifier(library, connectivity=2.0, rho=1e-2).prepare(model)
    train(model, dataset, 2.0, batch_size=64, penalty=sparsifier.penalty, every=(2, sparsifier.step),
          desc="admm", progress=False, runtime=runtime)  # fmt: skip
    masks = sparsifier.compute_masks()
    state = {
        "admm": sparsifier.state_dict(),
        "masks": masks,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "library": library.patterns.tolist(),
    }
    gathered = distributed.all_gather_object(state)
    if runtime.is_main:
        first = gathered[0]
        for rank, other in enumerate(gathered[1:], 1):
            assert other["library"] == first["library"], f"rank {rank}: another library"
            for name, layer in first["admm"]["layers"].items():
                for key in ("z", "u", "y", "v"):
                    assert torch.equal(layer[key], other["admm"]["layers"][name][key]), f"rank {rank}: {name}.{key}"
            for name, mask in first["masks"].items():
                assert torch.equal(mask, other["masks"][name]), f"rank {rank}: mask {name}"
            for name, value in first["weights"].items():
                assert torch.equal(value, other["weights"][name]), f"rank {rank}: weight {name}"
        torch.save({**first, "world_size": runtime.world_size}, out)
        print(f"identical on {runtime.world_size} ranks")
    distributed.teardown()


if __name__ == "__main__":
    main(sys.argv[1])
