"""Small token models and data for the text tests (shared by test_text.py and test_reliability.py)."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import compass_lightning as cl
from text import ABLSTM as ExampleABLSTM  # examples/text.py (the tests put examples/ on the path)
from text import PAD as EXAMPLE_PAD

assert EXAMPLE_PAD == 0  # its forward masks padding by the example's id, the same as PAD below

PAD, MASK, CLS, VOCAB, LENGTH = 0, 1, 2, 40, 12
GOOD, BAD = range(3, 8), range(8, 13)  # tokens that decide the class; the rest is filler


def sentences(n: int, seed: int) -> TensorDataset:
    """``[CLS]`` + 4-10 tokens + padding; class 1 when the sentence holds more GOOD than BAD tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.full((n, LENGTH), PAD)
    labels = torch.randint(0, 2, (n,), generator=generator)
    for i in range(n):
        length = int(torch.randint(4, LENGTH, (1,), generator=generator))
        words = torch.randint(13, VOCAB, (length,), generator=generator)
        cue = torch.tensor(list(GOOD if labels[i] else BAD))
        words[: 2] = cue[torch.randint(0, 5, (2,), generator=generator)]
        ids[i, 0], ids[i, 1 : 1 + length] = CLS, words[torch.randperm(length, generator=generator)]
    return TensorDataset(ids, labels)


class TokenClassifier(pl.LightningModule):
    """Training on :func:`sentences`; subclasses define the network."""

    lr = 0.02
    shuffle = True  # False: training batches in a fixed order (a resumed fit then trains as an uninterrupted one)

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    def train_dataloader(self):
        return DataLoader(sentences(256, 0), batch_size=32, shuffle=self.shuffle)

    def val_dataloader(self):
        return DataLoader(sentences(64, 1), batch_size=32)


class TextCNN(TokenClassifier):
    """Embedding → Conv1d → max over time → Linear, as AI-Compass' TextCNN."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, dim, padding_idx=PAD)
        self.conv = nn.Conv1d(dim, 16, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(16, 2))

    def forward(self, ids: Tensor) -> Tensor:
        features = self.conv(self.embedding(ids).transpose(1, 2)).amax(dim=2)
        return self.head(features)


class ABLSTM(TokenClassifier):
    """The AB-LSTM of ``examples/text.py`` (BiLSTM states, additive attention over them with padding
    masked, a linear layer), small, trained on :func:`sentences`."""

    def __init__(self, dim: int = 8, hidden: int = 8) -> None:
        super().__init__()
        network = ExampleABLSTM(VOCAB, dim, hidden)
        self.embedding, self.lstm, self.score, self.head = network.embedding, network.lstm, network.score, network.head

    forward = ExampleABLSTM.forward


def tiny_bert():
    """A Hugging Face BERT classifier of random weights and a tiny configuration (nothing downloaded)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=LENGTH, num_labels=2, pad_token_id=PAD)
    return BertForSequenceClassification(config).eval()


class TinyBert(TokenClassifier):
    """:func:`tiny_bert` trained in Lightning, taking the attention mask by keyword as Hugging Face models do."""

    lr = 0.005

    def __init__(self) -> None:
        super().__init__()
        self.bert = tiny_bert().train()

    def forward(self, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.bert(input_ids=ids, attention_mask=attention_mask).logits

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0], (batch[0] != PAD).long()), batch[1])


class BagOfEmbeddings(nn.Module):
    """logits = W · Σ_t E[ids_t] + b: linear in the embeddings, so FGSM has a closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 6, padding_idx=PAD)
        self.linear = nn.Linear(6, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.linear(self.embedding(ids).sum(dim=1))


TASK = cl.TextClassification(pad_id=PAD, mask_id=MASK, special_ids=[CLS])
BERT_TASK = cl.TextClassification(pad_id=PAD, mask_id=MASK, special_ids=[CLS], attention_mask="attention_mask")




def text_compass(task: cl.TextClassification = TASK, **kwargs) -> cl.Compass:
    """A Compass with small probes: every module that applies to text, on its schedule (no time budget)."""
    return cl.Compass(
        task=task, probe_size=32, budget=None, interpretability={"every_n_epochs": 1, "probe_size": 8, "steps": 8},
        neurons={"profile_size": 64}, pruning={"rates": [0.4], "sweep": [], "joint_rates": [0.4], "calibration_size": 64},
        **kwargs,
    )
