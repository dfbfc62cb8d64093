"""The probe set: fixed seeded subsets, collation, sizes, and DDP shards put back in order."""

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

from compass_lightning.engine.probe import ProbeSet
from compass_lightning.tasks import Classification


class DictDataset(Dataset):
    def __len__(self):
        return 30

    def __getitem__(self, i):
        return {"image": torch.full((1, 2, 2), float(i)), "label": i % 3}


class Stream(IterableDataset):
    def __iter__(self):
        for i in range(25):
            yield torch.full((2,), float(i)), i % 2


def test_the_same_seed_gives_the_same_subset_and_another_seed_another():
    x, y = torch.arange(100.0).unsqueeze(1), torch.arange(100)
    a = ProbeSet.from_tensors(x, y, probe_size=10, seed=1)
    b = ProbeSet.from_tensors(x, y, probe_size=10, seed=1)
    c = ProbeSet.from_tensors(x, y, probe_size=10, seed=2)
    assert torch.equal(a.inputs, b.inputs) and not torch.equal(a.inputs, c.inputs)
    assert torch.equal(a.inputs.squeeze(1).long(), a.targets)  # rows stay paired
    assert len(a.targets.unique()) == 10


def test_dataloader_collate_fn_and_dict_batches_are_used():
    loader = DataLoader(DictDataset(), batch_size=4, collate_fn=lambda items: {
        "image": torch.stack([it["image"] for it in items]) * 2,  # a custom collate is honoured
        "label": torch.tensor([it["label"] for it in items]),
    })
    probe = ProbeSet.from_dataloader(
        loader, task=Classification(input_key="image", target_key="label"), probe_size=12, seed=0
    )
    assert probe.inputs.shape == (12, 1, 2, 2)
    assert torch.equal((probe.inputs[:, 0, 0, 0] / 2).long() % 3, probe.targets)


def test_iterable_datasets_give_their_first_samples():
    probe = ProbeSet.from_dataloader(DataLoader(Stream(), batch_size=4), task=Classification(), probe_size=10)
    assert probe.inputs[:, 0].tolist() == [float(i) for i in range(10)]
    with pytest.raises(ValueError, match="probe_size=30 is larger than the data it is drawn from \\(25 samples\\)"):
        ProbeSet.from_dataloader(DataLoader(Stream(), batch_size=4), task=Classification(), probe_size=30)


def test_sizes_default_caps_and_errors_name_both_sizes():
    data = TensorDataset(torch.rand(40, 3), torch.arange(40))
    assert len(ProbeSet.from_dataset(data, task=Classification(), default_size=16)) == 16
    assert len(ProbeSet.from_dataset(data, task=Classification(), default_size=100)) == 40
    with pytest.raises(ValueError, match=r"probe_size=41 is larger than the data it is drawn from \(40 samples\)"):
        ProbeSet.from_dataset(data, task=Classification(), probe_size=41)


def test_the_probe_is_on_the_cpu_and_never_an_inference_tensor():
    with torch.inference_mode():
        x, y = torch.rand(8, 2), torch.arange(8)
        probe = ProbeSet.from_tensors(x, y)
    assert not probe.inputs.is_inference() and probe.inputs.device.type == "cpu"
    assert probe.inputs.requires_grad_().requires_grad  # usable for gradients later


@pytest.mark.parametrize(("size", "world"), [(10, 3), (9, 3), (7, 2), (5, 4)])
def test_shards_are_disjoint_and_gather_restores_probe_order(size, world):
    x, y = torch.arange(float(size)).unsqueeze(1), torch.arange(size)
    shards = [ProbeSet(x, y, rank=r, world_size=world) for r in range(world)]
    parts = [probe.shard(x) for probe in shards]
    assert sorted(torch.cat(parts).squeeze(1).tolist()) == list(range(size))
    longest = max(len(p) for p in parts)

    def fake_all_gather(padded):  # what every rank would receive from the collective
        return torch.stack([torch.cat([p, p.new_zeros(longest - len(p), 1)]) for p in parts])

    for rank, probe in enumerate(shards):
        gathered = probe.gather(parts[rank] * 10, lambda t: fake_all_gather(t) * 10)
        assert torch.equal(gathered, x * 10)


def test_chunks_move_to_the_device_in_batch_size_pieces():
    probe = ProbeSet(torch.rand(10, 2), torch.arange(10))
    chunks = list(probe.chunks(probe.inputs, 4, "cpu"))
    assert [len(c) for c in chunks] == [4, 4, 2] and torch.equal(torch.cat(chunks), probe.inputs)


# -- probes of any modality: several aligned fields, ragged samples ---------------------------------


class FieldsTask(Classification):
    """Dict batches ``{"ids", "mask", "label"}``: the inputs are the two aligned fields."""

    def split(self, batch):
        return {"ids": batch["ids"], "mask": batch["mask"]}, batch["label"]

    def outputs(self, model, x):
        return model(x["ids"].float() * x["mask"])


class RaggedTask(Classification):
    """Images of different sizes collated into tuples (as torchvision's detection references do)."""

    def split(self, batch):
        return list(batch[0]), torch.tensor(batch[1])


class Records(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return {"ids": torch.full((3,), i), "mask": torch.tensor([1.0, 1.0, float(i % 2)]), "label": i % 2}


class Pictures(Dataset):
    def __len__(self) -> int:
        return 9

    def __getitem__(self, i: int):
        return torch.full((1, 2 + i % 3, 4), float(i)), i


def test_a_probe_of_several_fields_shards_chunks_and_feeds_the_model():
    from compass_lightning.engine.evaluation import Evaluation

    loader = DataLoader(Records(20), batch_size=4)
    probe = ProbeSet.from_dataloader(loader, task=FieldsTask(), probe_size=7, seed=0)
    assert len(probe) == 7 and set(probe.inputs) == {"ids", "mask"} and probe.inputs["ids"].shape == (7, 3)
    assert "ids: shape (3,)" in repr(probe)
    ids = probe.inputs["ids"][:, 0]
    assert torch.equal(probe.inputs["mask"][:, 2], (ids % 2).float()) and torch.equal(probe.targets, ids % 2)
    evaluation = Evaluation(torch.nn.Linear(3, 2), probe, FieldsTask(), batch_size=3)
    assert evaluation.outputs(probe.inputs).shape == (7, 2)
    rows = evaluation.per_sample(lambda x: {"id": x["ids"][:, 0], "masked": x["mask"].sum(1)}, probe.inputs)
    assert torch.equal(rows["id"], ids) and torch.equal(rows["masked"], probe.inputs["mask"].sum(1))
    assert torch.equal(evaluation.subset(3).probe.inputs["ids"], probe.inputs["ids"][:3])


def test_ragged_samples_make_a_probe_and_come_back_in_probe_order_from_every_shard():
    from compass_lightning.engine.evaluation import Evaluation

    loader = DataLoader(Pictures(), batch_size=4, collate_fn=lambda batch: tuple(zip(*batch)))
    probe = ProbeSet.from_dataloader(loader, task=RaggedTask(), probe_size=5, seed=1)
    assert isinstance(probe.inputs, list) and len(probe) == 5
    assert [tuple(x.shape) for x in probe.inputs] == [(1, 2 + int(x[0, 0, 0]) % 3, 4) for x in probe.inputs]
    heights = lambda images: [image.shape[1] for image in images]  # noqa: E731 - a ragged per-sample result
    whole = Evaluation(torch.nn.Identity(), probe, RaggedTask(), batch_size=2).per_sample(heights, probe.inputs)
    assert whole == [x.shape[1] for x in probe.inputs]
    # two "ranks": each analyses its strided shard, the gather interleaves them back into probe order
    shards = [ProbeSet(probe.inputs, probe.targets, rank=r, world_size=2) for r in range(2)]
    local = [[x.shape[1] for x in shard.shard(shard.inputs)] for shard in shards]
    rank0 = Evaluation(torch.nn.Identity(), shards[0], RaggedTask(), batch_size=2, gather_objects=lambda _: local)
    assert rank0.per_sample(heights, probe.inputs) == whole
