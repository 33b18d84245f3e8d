"""Pruning at scale, in-process: device selection, Datasets, samplers, ADMM state and loop checkpoints."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tvm_pattern.errors import CheckpointError, TvmPatternError
from tvm_pattern.prune import data, distributed, resume
from tvm_pattern.prune.distributed import Runtime, ShardSampler, select_device
from tvm_pattern.prune.recipe import extract_library
from tvm_pattern.prune.sparsifier import PatternSparsifier
from tvm_pattern.prune.training import evaluate, train
from tvm_pattern.sparsity.library import PatternLibrary, candidate_patterns

LIB = PatternLibrary(candidate_patterns(4)[[0, 7, 19, 33, 41, 50]])


def net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(48, 10),
    )  # fmt: skip


def dataset(n=96) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def test_device_selection():
    assert select_device("cpu", cuda_available=True) == torch.device("cpu")
    assert select_device("auto", cuda_available=False) == torch.device("cpu")
    assert select_device("auto", local_rank=1, cuda_available=True, cuda_count=2) == torch.device("cuda", 1)
    assert select_device("cuda", local_rank=0, cuda_available=True, cuda_count=1) == torch.device("cuda", 0)
    with pytest.raises(TvmPatternError, match="no CUDA GPU"):
        select_device("cuda", cuda_available=False)
    with pytest.raises(TvmPatternError, match="local rank 2 has no GPU"):
        select_device("cuda", local_rank=2, cuda_available=True, cuda_count=2)
    with pytest.raises(TvmPatternError, match="expected one of"):
        select_device("tpu")
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"
    assert distributed.env_ranks({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    assert distributed.env_ranks({}) == (0, 1, 0)


def test_amp_needs_cuda():
    with pytest.raises(TvmPatternError, match="--amp is mixed precision on CUDA"):
        distributed.setup("cpu", amp=True)


def test_split_is_a_dataset(small_data):
    _, test_split = data.builtin(small_data)
    image, label = test_split[3]
    assert image.shape == (1, 28, 28) and isinstance(label, int) and len(test_split) == 500
    images, labels = next(iter(DataLoader(test_split, batch_size=7)))
    assert images.shape == (7, 1, 28, 28) and labels.dtype == torch.int64
    again = data.as_split(TensorDataset(torch.from_numpy(test_split.images), torch.from_numpy(test_split.labels)))
    assert (again.images == test_split.images).all() and (again.labels == test_split.labels).all()


def test_shards_cover_the_data_and_resume_part_way():
    ds = dataset(10)
    shards = [list(ShardSampler(ds, Runtime(rank=r, world_size=2), shuffle=True, seed=5)) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == list(range(10))
    sampler = ShardSampler(ds, Runtime(), shuffle=True, seed=5)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.skip = 4
    assert list(sampler) == full[4:] and len(sampler) == 6
    evals = [list(distributed.EvalShard(ds, Runtime(rank=r, world_size=3))) for r in range(3)]
    assert sorted(i for shard in evals for i in shard) == list(range(10))  # every sample once, no padding


def test_sparsifier_state_round_trips_and_follows_the_model():
    model = net()
    sp = PatternSparsifier(LIB, connectivity=2.0).prepare(model)
    with torch.no_grad():
        model[2].weight.add_(0.1)
    sp.step()
    saved = sp.state_dict()
    other_model = copy.deepcopy(model)
    other = PatternSparsifier(LIB, connectivity=2.0).prepare(other_model)
    other.load_state_dict(saved)
    sp.step()
    other.step()
    for a, b in zip(sp.layers, other.layers, strict=True):
        assert torch.equal(a.z, b.z) and torch.equal(a.u, b.u) and torch.equal(a.y, b.y) and torch.equal(a.v, b.v)
    assert sp.rho == other.rho
    # The model moves (here to float64 "elsewhere" is not possible without a GPU, so: to the meta device).
    model.to("meta")
    penalty = sp.penalty()
    assert penalty.device.type == "meta" and sp.layers[0].z.device.type == "meta"


def test_extract_library_works_on_any_dtype_and_grad_state():
    model = net().double()
    assert extract_library(model, k=4).k == 4


class StopAt:
    """A loop checkpoint that captures the state at one step (what resume.Checkpointer would write)."""

    def __init__(self, step):
        self.step, self.calls, self.state = step, 0, None

    def due(self):
        self.calls += 1
        return self.calls == self.step

    def save(self, loop):
        self.state = copy.deepcopy({"loop": loop, "rng": resume.rng_state(torch.device("cpu"))})


def test_a_loop_resumed_from_a_checkpoint_ends_where_an_uninterrupted_one_does():
    ds = dataset()
    uninterrupted = net()  # dropout and BN: the RNG and the buffers must be restored too
    train(uninterrupted, ds, 3.0, batch_size=32, progress=False, seed=2)

    interrupted = net()

    class Capture(StopAt):
        def save(self, loop):
            super().save(loop)
            self.weights = copy.deepcopy(interrupted.state_dict())
            raise KeyboardInterrupt  # the kill

    stop = Capture(4)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, ds, 3.0, batch_size=32, progress=False, seed=2, checkpoint=stop)
    resumed = net()
    resumed.load_state_dict(stop.weights)
    resume.set_rng_state(stop.state["rng"], torch.device("cpu"))
    train(resumed, ds, 3.0, batch_size=32, progress=False, seed=2, resume=stop.state["loop"])
    for key, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert 0.0 <= evaluate(resumed, ds) <= 1.0


def test_checkpoints_are_atomic_and_refuse_other_settings(tmp_path):
    ck = resume.Checkpointer(tmp_path / "ck", {"patterns": 8, "seed": 0}, every_s=1e9, log=lambda *_: None)
    assert ck.load() is None and not ck.due()
    ck.save({"phase": "patterns:admm", "loop": None})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.pt"]  # no temporary left
    lines = []
    assert resume.Checkpointer(tmp_path / "ck", {"patterns": 8, "seed": 0}, log=lines.append).load()["phase"] == (
        "patterns:admm"
    )
    assert lines == [f"resuming from {tmp_path / 'ck' / 'checkpoint.pt'} (patterns:admm)"]
    with pytest.raises(CheckpointError, match="patterns: checkpoint has 8, this run has 6") as err:
        resume.Checkpointer(tmp_path / "ck", {"patterns": 6, "seed": 0}).load()
    assert "seed" not in str(err.value)
    (tmp_path / "ck" / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        resume.Checkpointer(tmp_path / "ck", {}).load()


class Recorder:
    """A recipe checkpoint that is always due and keeps a copy of every state it is given."""

    def __init__(self):
        self.states = []

    def due(self):
        return True

    def save(self, state):
        self.states.append(copy.deepcopy({**state, "rng": [resume.rng_state(torch.device("cpu"))]}))


def test_a_retrain_phase_resumed_twice_still_has_its_masks():
    """A run resumed inside a retrain phase keeps saving the masks, so a second kill there resumes too."""
    from tvm_pattern.prune.recipe import PruneConfig, prune

    config = PruneConfig(patterns=4, connectivity=2.0, admm_epochs=1.0, admm_updates=2, retrain_epochs=1.0,
                         batch_size=32)  # fmt: skip
    ds = dataset()
    first = Recorder()
    prune(net(), ds, ds, config, progress=False, log=lambda *_: None, checkpoint=first)
    inside = [s for s in first.states if s["phase"] == "patterns:retrain" and s["loop"] is not None]
    assert inside and all("masks" in s for s in inside)
    second = Recorder()
    prune(net(), ds, ds, config, progress=False, log=lambda *_: None, checkpoint=second, resume=inside[0])
    again = [s for s in second.states if s["phase"].endswith(":retrain")]
    assert again and all("masks" in s for s in again)
    result = prune(net(), ds, ds, config, progress=False, log=lambda *_: None, resume=again[0])
    assert 0.0 <= result.final_accuracy <= 1.0


def test_dense_phase_resumes_with_the_saved_rng_even_if_seeded_since():
    """``checkpoints.dense_model`` seeds and builds the model after the checkpoint was loaded; the resumed
    loop must still draw the interrupted run's dropout masks."""
    from tvm_pattern.prune.recipe import PruneConfig, train_dense

    config, ds = PruneConfig(batch_size=32), dataset()
    whole = net()
    train_dense(whole, ds, 2.0, config, progress=False)

    class Kill(Recorder):
        def save(self, state):
            super().save(state)
            raise KeyboardInterrupt

    kill = Kill()
    with pytest.raises(KeyboardInterrupt):
        train_dense(net(), ds, 2.0, config, progress=False, checkpoint=kill)
    resumed = net()  # seeds the global RNG again, as dense_model does
    train_dense(resumed, ds, 2.0, config, progress=False, resume=kill.states[0])
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_a_rank_that_cannot_see_rank_0s_checkpoint_stops_clearly(tmp_path, monkeypatch):
    """Multi-node without shared storage: rank 0 found a checkpoint (faked here), this rank does not."""
    monkeypatch.setattr(resume.distributed, "broadcast_object", lambda obj, src=0: True)
    ck = resume.Checkpointer(tmp_path / "ck", {}, Runtime(rank=1, world_size=2))
    with pytest.raises(CheckpointError, match=r"rank 1 does not see .* on storage all nodes share"):
        ck.load()


def test_dense_model_is_cached_once_and_loaded_after(small_data, tmp_path, monkeypatch):
    from tvm_pattern.prune import checkpoints

    monkeypatch.setenv(checkpoints.ENV_VAR, str(tmp_path))
    train_split, _ = data.builtin(small_data)
    lines = []
    trained = checkpoints.dense_model("vgg-small", train_split, 0.1, progress=False, log=lines.append)
    loaded = checkpoints.dense_model("vgg-small", train_split, 0.1, progress=False, log=lines.append)
    assert lines[0] == "dense model trained for 0.1 epochs" and lines[1].startswith("dense model loaded from cache")
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_zero_epochs_train_nothing():
    model = net()
    before = copy.deepcopy(model.state_dict())
    train(model, dataset(), 0.0, batch_size=32, progress=False)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
