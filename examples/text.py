"""Train a TextCNN and an AB-LSTM on real movie-review sentences while compass_lightning watches them.

The sentences are the 200 Rotten Tomatoes snippets (100 negative, 100 positive; the corpus SST-2 is
built from) that ship inside the gensim wheel as test data
(``gensim/test/test_data/pang_lee_polarity.cor``): nothing is downloaded. A word-level vocabulary
is built here; 150 sentences train, 50 are the validation set the probe is drawn from. That is far
too little text to learn sentiment from (both models stay near chance on the 50, and a corpus
generated from the 150 sentences' word frequencies did not help: measured, 0.52 and 0.42): the
example shows what the monitors report on real sentences, not a good model. At the end it prints an
AI-Compass Table 7/8-shaped table per model: the basic metrics clean and under each text mutant,
and the attack success rate of each embedding-space attack (with the ASR of the nearest real
token sequences).

    python examples/text.py              # 8 epochs per model
    python examples/text.py --fast       # CI mode: 2 epochs
    tensorboard --logdir runs            # then open http://localhost:6006
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import compass_lightning as cl
from compass_lightning.reporting.summary import run_report

PAD, MASK, UNK = 0, 1, 2
LENGTH = 32
ATTACKS = ("fgsm", "ifgsm", "mifgsm", "sinifgsm", "pgd", "hotflip")  # AI-Compass' five, and a token attack
MUTANTS = ("label_error", "data_missing", "data_shuffle", "token_replace", "token_swap")


def sentences() -> tuple[list[list[str]], list[int]]:
    """The 200 labelled sentences of the installed gensim wheel, tokenised on whitespace."""
    import gensim

    path = Path(os.path.dirname(gensim.__file__)) / "test" / "test_data" / "pang_lee_polarity.cor"
    words, labels = [], []
    for line in path.read_text(encoding="latin-1").splitlines():
        label, *tokens = line.lower().split()
        words.append(tokens)
        labels.append(int(label == "__label__pos"))
    return words, labels


def encode(words: list[list[str]], vocabulary: dict[str, int]) -> Tensor:
    ids = torch.full((len(words), LENGTH), PAD)
    for row, tokens in enumerate(words):
        known = [vocabulary.get(t, UNK) for t in tokens][:LENGTH]
        ids[row, : len(known)] = torch.tensor(known)
    return ids


class Reviews(pl.LightningDataModule):
    """The sentences split 150/50 with a fixed seed; the vocabulary is the training split's words."""

    def __init__(self, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed
        words, labels = sentences()
        order = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed)).tolist()
        train, valid = order[:150], order[150:]
        counts: dict[str, int] = {}
        for i in train:
            for token in words[i]:
                counts[token] = counts.get(token, 0) + 1
        self.vocabulary = {t: i + 3 for i, t in enumerate(sorted(counts))}  # 0 pad, 1 mask, 2 unknown
        self.words = ["[pad]", "[mask]", "[unk]", *sorted(counts)]  # by id: the tokens of the pictures
        y = torch.tensor(labels)
        self.train_set = TensorDataset(encode([words[i] for i in train], self.vocabulary), y[train])
        self.val_set = TensorDataset(encode([words[i] for i in valid], self.vocabulary), y[valid])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class Classifier(pl.LightningModule):
    """The training loop both models share."""

    def training_step(self, batch, batch_idx):
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/accuracy", (self(batch[0]).argmax(1) == batch[1]).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3, weight_decay=1e-4)


class TextCNN(Classifier):
    """Kim's TextCNN: embeddings, convolutions of widths 3, 4, 5, max over time, a linear layer."""

    def __init__(self, vocabulary_size: int, dim: int = 32, filters: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, dim, padding_idx=PAD)
        self.convolutions = nn.ModuleList(nn.Conv1d(dim, filters, width, padding=width // 2) for width in (3, 4, 5))
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(3 * filters, 2))

    def forward(self, ids: Tensor) -> Tensor:
        x = self.embedding(ids).transpose(1, 2)
        return self.head(torch.cat([torch.relu(conv(x)).amax(dim=2) for conv in self.convolutions], dim=1))


class ABLSTM(Classifier):
    """Attention-based bidirectional LSTM: a BiLSTM, additive attention over its states (padding
    masked), a linear layer."""

    def __init__(self, vocabulary_size: int, dim: int = 32, hidden: int = 32) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary_size, dim, padding_idx=PAD)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(2 * hidden, 1)
        self.head = nn.Linear(2 * hidden, 2)

    def forward(self, ids: Tensor) -> Tensor:
        states, _ = self.lstm(self.embedding(ids))
        weights = self.score(torch.tanh(states)).squeeze(2).masked_fill(ids == PAD, -1e4).softmax(dim=1)
        return self.head((weights.unsqueeze(2) * states).sum(dim=1))


def text_task(words: list[str]) -> cl.TextClassification:
    """The adapter: ``words`` by id, so that the heatmaps and adversarial examples show words."""
    return cl.TextClassification(pad_id=PAD, mask_id=MASK, unk_id=UNK, vocabulary_size=len(words), decode=words)


def compass(words: list[str], fast: bool = False) -> cl.Compass:
    """Every module that applies to text; the attacks at eps 0.5 embedding-RMS units."""
    return cl.Compass(
        task=text_task(words),
        mutation={"mutations": list(MUTANTS)},
        robustness={"attacks": list(ATTACKS), "eps": 0.5},
        interpretability={"methods": ["saliency", "integrated_gradients"], "every_n_epochs": 1, "steps": 16,
                          "probe_size": 16},
        neurons={"profile_size": 150},
        pruning={"sweep": [0.1, 0.2, 0.3] if fast else [0.1, 0.2, 0.3, 0.6, 0.7, 0.8], "calibration_size": 150,
                 "eps": 0.5},
    )


def table(name: str, metrics: dict[str, float]) -> str:
    """One model's AI-Compass Table 7/8 row set: metrics clean and under each mutant, ASR per attack."""
    get = lambda tag: metrics.get(tag, float("nan"))  # noqa: E731
    lines = [f"{name}", f"  {'data':<14} {'accuracy':>9} {'f1':>7} {'loss':>7}"]
    for label, prefix in [("clean", "compass/basic"), *((m, f"compass/mutation/{m}") for m in MUTANTS)]:
        lines.append(f"  {label:<14} {get(f'{prefix}/accuracy'):>9.3f} {get(f'{prefix}/f1'):>7.3f} {get(f'{prefix}/loss'):>7.3f}")
    lines.append(f"  {'attack':<14} {'ASR':>9} {'real ASR':>9} {'tokens changed':>15}")
    for attack in ATTACKS:
        prefix = f"compass/robustness/{attack}"
        lines.append(f"  {attack:<14} {get(f'{prefix}/asr'):>9.3f} {get(f'{prefix}/projected_asr'):>9.3f} "
                     f"{get(f'{prefix}/token_change_rate'):>15.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="training epochs per model (default 8)")
    parser.add_argument("--fast", action="store_true", help="CI mode: 2 epochs")
    parser.add_argument("--logdir", default="runs", help="where TensorBoard logs go (default ./runs)")
    args = parser.parse_args(argv)
    epochs = 2 if args.fast else args.epochs
    data = Reviews()
    vocabulary_size = len(data.words)
    tables, log_dir = [], Path(args.logdir)
    for name, model_class in (("textcnn", TextCNN), ("ablstm", ABLSTM)):
        pl.seed_everything(0, workers=True)
        logger = TensorBoardLogger(args.logdir, name=name)
        monitor = compass(data.words, args.fast)
        trainer = pl.Trainer(max_epochs=epochs, logger=logger, callbacks=[monitor], log_every_n_steps=5,
                             enable_model_summary=False, enable_checkpointing=False, deterministic=True)
        trainer.fit(model_class(vocabulary_size), datamodule=data)
        last_fit = [r for r in monitor.history if r["stage"] == "fit"]
        merged = {k: v for record in last_fit[-2:] for k, v in record["metrics"].items() if v is not None}
        tables.append(table(name, merged))
        log_dir = Path(logger.log_dir)
        page, _ = run_report(log_dir)
        (log_dir / "compass_report.html").write_text(page, encoding="utf-8")
        print(f"{name}: TensorBoard logs and compass_report.html in {log_dir.resolve()}")
    print(f"\nAfter {epochs} epochs, on the {len(data.val_set)} validation sentences (eps 0.5 embedding-RMS units):")
    print("\n\n".join(tables))
    print(f"\nOpen the dashboard:  tensorboard --logdir {Path(args.logdir).resolve()}   (then http://localhost:6006)")
    return log_dir


if __name__ == "__main__":
    main()
