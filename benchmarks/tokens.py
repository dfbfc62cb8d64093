"""Text classification: token integrated gradients against Captum, text attacks against their floor.

On a TextCNN (the examples' architecture, vocabulary 5,000, 64 tokens, embeddings of 64) and a probe
batch of token ids, side by side in one run:

* token integrated gradients (ours through ``TextClassification``'s space, its steps in forwards
  of the size the callback chooses) against Captum's ``LayerIntegratedGradients`` on the embedding
  at the best of several ``internal_batch_size`` values (each timed in the same rounds);
* every text attack against its floor: its forward+backward passes times one measured pass of the
  space model (the hook that puts the embeddings in costs no extra pass);
* one ``hotflip`` step against one forward+backward (its extra is the first-order score of every
  vocabulary entry at every position, a ``(L, D) x (D, V)`` product per sample).

Targets: token IG <= 1.0x Captum at its best; every attack <= 1.10x its floor; hotflip per step <=
1.5x one forward+backward.

    python benchmarks/tokens.py [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Row, arguments, machine, ratios_of, seconds_of, table  # noqa: E402

from compass_lightning.attacks import run_attack  # noqa: E402
from compass_lightning.attribution import attribute  # noqa: E402
from compass_lightning.engine.batching import auto_batch_size  # noqa: E402
from compass_lightning.engine.guard import analysis_mode  # noqa: E402
from compass_lightning.tasks import TextClassification  # noqa: E402

VOCAB, LENGTH, STEPS = 5000, 64, 32
# name: (parameters, forward+backward passes per sample)
ATTACKS = {"fgsm": ({}, 1), "ifgsm": ({}, 10), "pgd": ({}, 10), "mifgsm": ({}, 10), "sinifgsm": ({}, 50), "pgd_l2": ({}, 10)}


class TextCNN(nn.Module):
    def __init__(self, dim: int = 64, filters: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(VOCAB, dim, padding_idx=0)
        self.convolutions = nn.ModuleList(nn.Conv1d(dim, filters, w, padding=w // 2) for w in (3, 4, 5))
        self.head = nn.Linear(3 * filters, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids).transpose(1, 2)
        return self.head(torch.cat([torch.relu(c(x)).amax(dim=2) for c in self.convolutions], dim=1))


def rows(device: torch.device, repeats: int, *, batch: int = 32) -> list[Row]:
    """Token IG against Captum's LayerIntegratedGradients, attacks and hotflip against their floors."""
    from captum.attr import LayerIntegratedGradients

    warnings.filterwarnings("ignore")
    model = TextCNN().to(device).eval()
    task = TextClassification(pad_id=0, mask_id=1)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, VOCAB, (batch, LENGTH), generator=generator)
    ids[:, LENGTH // 2 :] = 0  # padded halves, as sentences are
    ids = ids.to(device)
    with torch.no_grad():
        target = model(ids).argmax(1)
    space = task.space_model(model)
    z = task.to_space(ids, model)
    forward_size = auto_batch_size(space, space, z)
    baseline_ids = torch.where(task.fixed(ids), ids, torch.ones_like(ids))

    def ours_ig() -> None:
        with analysis_mode(model):
            # from zero, the same cost as the callback's baseline (which keeps the id channels exactly)
            attribute("integrated_gradients", space, z, target, steps=STEPS, internal_batch_size=forward_size)

    def captum(internal_batch_size: int | None):
        layer = LayerIntegratedGradients(model, model.embedding)
        return lambda: layer.attribute(ids, baselines=baseline_ids, target=target, n_steps=STEPS,
                                       internal_batch_size=internal_batch_size)

    def one_pass() -> None:
        with analysis_mode(model):
            x = z.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(space(x), target), x)

    def attack(name: str, params: dict, **extra):
        def run() -> None:
            with analysis_mode(model):
                eps = 0.5 if name != "pgd_l2" else 2.0
                run_attack(name, space, z, target, eps=eps, bounds=task.input_range,
                           generator=torch.Generator(device=device).manual_seed(0), **params, **extra)
        return run

    sizes = sorted({None, batch, 4 * batch, batch * STEPS}, key=lambda s: s or 0)
    cases = {"ig_ours": ours_ig, **{f"captum_{s}": captum(s) for s in sizes}, "pass": one_pass,
             **{name: attack(name, params) for name, (params, _) in ATTACKS.items()},
             "hotflip": attack("hotflip", {"k": 1})}
    times = seconds_of(cases, repeats, device)
    best = min((f"captum_{s}" for s in sizes), key=lambda k: sorted(times[k])[len(times[k]) // 2])
    result = [Row("text", f"token IG: ours / Captum's LayerIntegratedGradients at its best ({best.split('_')[1]})",
                  ratios_of(times, "ig_ours", best), 1.0)]
    for name, (_, passes) in ATTACKS.items():
        result.append(Row("text", f"{name}: ours / {passes} forward+backward passes (floor)",
                          ratios_of(times, name, "pass", passes), 1.10))
    result.append(Row("text", "hotflip, one step: ours / one forward+backward", ratios_of(times, "hotflip", "pass"), 1.5))
    return result


def main(argv: list[str] | None = None) -> None:
    args = arguments(__doc__, repeats=5).parse_args(argv)
    device = torch.device(args.device)
    print(machine(device))
    print(table(rows(device, args.repeats)))


if __name__ == "__main__":
    main()
