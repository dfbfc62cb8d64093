"""The text-classification task adapter: token ids in, perturbations in the model's embedding space.

A text sample is a row of token ids ``(L,)``. Attacks and attributions act on its embeddings, read
at the output of the model's embedding module and put back there by a forward hook, so any model
works unchanged (a TextCNN, an LSTM, a Hugging Face transformer).

**The perturbation space.** Attacks and attributions take tensors, and many of them (integrated
gradients, SmoothGrad, insertion/deletion) put several variants of different samples through the
model in one batch, so every row must say which tokens it stands for. A sample's point in the space
is therefore a ``(2 + D) × 1 × L`` tensor:

* channels ``2..D+1``: the embeddings relative to the reference token's (``mask_id``, else
  ``pad_id``), divided by the embedding scale — the RMS of the embedding matrix' entries — so that
  ``eps`` is in units of that scale whatever the model (an L∞ ``eps`` of 0.5 moves each coordinate
  by at most half the typical embedding coordinate);
* channels 0 and 1: the token ids as a ratio, ``(id + 1) · u`` over ``u = 2^20``, read back
  rounded (no gradient flows to them, so attacks and attributions leave them alone). A ratio
  survives what the analyses do to a whole point — scaling (SI-NI-FGSM, an integrated-gradients
  path from zero), small noise (SmoothGrad, neuron sensitivity) — and a position whose channels are
  zeroed (deletion, the zero substrate) becomes the reference token (with ``mask_id``) or padding
  hidden by the attention mask (without).

Positions of padding and of ``special_ids`` are never perturbed: the model always sees their clean
embeddings. With channels as the first dimension and tokens as the width, the generic machinery
treats a sentence as a one-pixel-high image: attributions summed over channels are per-token
scores, deletion replaces the most important tokens by the reference token.

Written here because no library maps token models to a perturbation space that batched attacks and
Captum-style attributions can share (Captum's layer methods do it per method, TextAttack per attack).

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(10, 4, padding_idx=0), nn.Flatten(), nn.Linear(12, 2))
    >>> task = TextClassification(pad_id=0, mask_id=1)
    >>> ids = torch.tensor([[5, 6, 0], [7, 0, 0]])
    >>> z = task.to_space(ids, model)
    >>> z.shape                                   # (N, 2 + D, 1, L)
    torch.Size([2, 6, 1, 3])
    >>> point_ids(z)[0].tolist()
    [[5, 6, 0], [7, 0, 0]]
    >>> torch.allclose(task.space_model(model, ids)(z), task.outputs(model, ids))
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from compass_lightning.engine.checks import check_int
from compass_lightning.mutation_text import TEXT_MUTATIONS, mutate_tokens
from compass_lightning.tasks.logits import Key, LogitsAdapter, two_class

ID_SCALE = float(2**20)


def point_ids(z: Tensor) -> tuple[Tensor, Tensor]:
    """The token ids ``(N, L)`` of points ``z`` of the space, and where a token was deleted (its id
    channels zeroed; its id is then -1)."""
    unit = z[:, 1, 0].detach()
    deleted = unit.abs() < 0.5
    ids = (z[:, 0, 0].detach() / unit.masked_fill(deleted, 1.0)).round().long() - 1
    return ids.masked_fill(deleted, -1), deleted


#: What does not apply to text, and why (refused at construction with this reason).
REFUSED: dict[str, dict[str, str]] = {
    "attack": {
        **{name: "it transforms images (resizing, translation, the image spectrum)" for name in ("difgsm", "tifgsm", "ssa")},
        **{name: "it guides the attack by an image feature layer" for name in ("naa", "ata", "ti_ata")},
        **{name: "it perturbs square windows of an image" for name in ("square", "square_l2")},
        **{name: "not yet checked on token models (its random start and the cascade's Square perturb image inputs)"
           for name in ("apgd_ce", "apgd_dlr", "apgd_t", "apgd_ce_l2", "apgd_dlr_l2", "apgd_t_l2", "autoattack",
                        "autoattack_l2")},
    },
    "transfer": {"surrogates": "a surrogate embeds tokens in a space of its own, so its adversarial embeddings mean nothing to the model"},
    "attribution": {
        **{name: "it needs a Conv2d feature map" for name in ("gradcam", "agi", "agi_predicted")},
        **{name: "not yet checked against Captum's layer methods on token models"
           for name in ("deeplift", "fast_ig", "guided_ig", "big", "rise")},
    },
    "neurons": {"deviation": "Grad-CAM layer deviation needs Conv2d feature maps",
                "test_generation": "DeepSensor's swarm searches the input space; for token models it is not built yet",
                "deep_validation": "its corner cases are image transforms (rotation, shear, scale, ...)"},
}


def logits_of(output: Any) -> Tensor:
    """The logits of a model's output: the tensor itself, a Hugging Face output's ``.logits``, or the
    first item of a tuple."""
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"the model returned a {type(output).__name__}, not logits (a tensor, .logits or a tuple)")


class TextClassification(LogitsAdapter):
    """Adapter for classifiers of token-id sequences, returning logits ``(N, C)``.

    Args:
        input_key: where the token ids ``(N, L)`` are in a batch (an index of a tuple batch or a key
            of a dict batch).
        target_key: where the integer class targets are.
        embedding: the name of the embedding module (default: the model's
            ``get_input_embeddings()`` for Hugging Face models, else the first ``nn.Embedding``).
        pad_id: the padding token id (never perturbed; hidden by the attention mask).
        mask_id: the token deleted tokens become (``None``: deleted tokens become hidden padding).
        unk_id: the token the ``data_missing`` mutant writes (default: ``mask_id``, else ``pad_id``).
        special_ids: tokens never perturbed, replaced or deleted (e.g. ``[CLS]``, ``[SEP]``).
        attention_mask: the keyword the model takes its attention mask by (e.g. ``"attention_mask"``
            for Hugging Face models); the adapter passes ``ids != pad_id`` there. ``None``: no mask.
        vocabulary_size: the number of token ids (default: the embedding's) — what token mutants draw from.
        decode: how ids become token strings in pictures: a callable of a list of ids (e.g. a
            tokenizer's ``convert_ids_to_tokens``) or a sequence indexed by id (a vocabulary list);
            ``None``: the ids themselves.
        one_hot: the targets are one-hot rows, read as their arg-max.

    Example:
        >>> task = TextClassification(pad_id=0, mask_id=1, special_ids=[2])
        >>> task.refusal("attack", "tifgsm")
        'it transforms images (resizing, translation, the image spectrum)'
    """

    input_range = (-float("inf"), float("inf"))
    mutations = TEXT_MUTATIONS
    default_mutations = ("label_error", "data_missing", "data_shuffle", "token_replace", "token_swap")

    def __init__(
        self,
        input_key: Key = 0,
        target_key: Key = 1,
        *,
        embedding: Optional[str] = None,
        pad_id: int = 0,
        mask_id: Optional[int] = None,
        unk_id: Optional[int] = None,
        special_ids: Sequence[int] = (),
        attention_mask: Optional[str] = None,
        vocabulary_size: Optional[int] = None,
        decode: Any = None,
        one_hot: bool = False,
    ) -> None:
        super().__init__(input_key, target_key, one_hot=one_hot)
        self.embedding = embedding
        self.pad_id = check_int("pad_id", pad_id, minimum=0)
        self.mask_id = None if mask_id is None else check_int("mask_id", mask_id, minimum=0)
        self.unk_id = None if unk_id is None else check_int("unk_id", unk_id, minimum=0)
        self.special_ids = tuple(check_int("special_ids", i, minimum=0) for i in special_ids)
        self.attention_mask = attention_mask
        self.vocabulary_size = None if vocabulary_size is None else check_int("vocabulary_size", vocabulary_size, minimum=2)
        if decode is not None and not (callable(decode) or isinstance(decode, Sequence)):
            raise TypeError(f"decode must be a callable of a list of ids or a sequence of token strings, got {decode!r}")
        self.decode = decode

    def __repr__(self) -> str:
        return f"TextClassification(pad_id={self.pad_id}, mask_id={self.mask_id}, special_ids={list(self.special_ids)})"

    # -- batches and the model ------------------------------------------------------------------

    def split(self, batch: Any) -> tuple[Tensor, Tensor]:
        """``(ids, targets)`` of a batch, the ids checked to be integer ``(N, L)``."""
        ids, targets = super().split(batch)
        if ids.dtype not in (torch.int64, torch.int32) or ids.ndim != 2:
            raise TypeError(f"TextClassification expects integer token ids (N, L) at key {self.input_key!r} of the batch")
        return ids, targets

    def embedding_module(self, model: nn.Module) -> nn.Embedding:
        """The module whose output is the token embeddings."""
        model = getattr(model, "wrapped", model)
        if self.embedding is not None:
            modules = dict(model.named_modules())
            if self.embedding not in modules:
                raise ValueError(f"embedding: the model has no module {self.embedding!r}")
            return modules[self.embedding]
        if hasattr(model, "get_input_embeddings"):
            return model.get_input_embeddings()
        found = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        if found is None:
            raise ValueError("embedding: the model has no nn.Embedding; name its embedding module")
        return found

    def outputs(self, model: nn.Module, ids: Tensor) -> Tensor:
        """The logits ``(N, C)`` for token ids ``(N, L)`` (with the attention mask, if the model takes
        one); a single logit as two classes (:func:`~compass_lightning.tasks.logits.two_class`)."""
        kwargs = {self.attention_mask: (ids != self.pad_id).long()} if self.attention_mask else {}
        return two_class(logits_of(model(ids, **kwargs)))

    @property
    def reference_id(self) -> int:
        """The token a deleted position becomes, and the origin of the embedding space."""
        return self.mask_id if self.mask_id is not None else self.pad_id

    def substitutes(self, vocabulary_size: int, device: torch.device) -> Tensor:
        """``(V,)`` whether each token id may replace another (not padding, not a special token)."""
        allowed = torch.ones(vocabulary_size, dtype=torch.bool, device=device)
        allowed[[self.pad_id, *self.special_ids]] = False
        return allowed

    def fixed(self, ids: Tensor) -> Tensor:
        """Whether each position is padding or a special token (never perturbed)."""
        keep = torch.tensor([self.pad_id, *self.special_ids], device=ids.device)
        return torch.isin(ids, keep)

    # -- the perturbation space -----------------------------------------------------------------

    def embedding_frame(self, model: nn.Module) -> tuple[nn.Module, Tensor, Tensor]:
        """The embedding module, the reference token's embedding and the embedding scale: the frame of
        the perturbation space (see the module docstring)."""
        embedding = self.embedding_module(model)
        weight = embedding.weight
        reference = weight[self.reference_id].detach()
        scale = weight.detach().float().pow(2).mean().sqrt().clamp_min(1e-12)
        return embedding, reference, scale

    def to_space(self, ids: Tensor, model: nn.Module) -> Tensor:
        """Token ids ``(N, L)`` → their points ``(N, 2 + D, 1, L)`` (see the module docstring)."""
        embedding, reference, scale = self.embedding_frame(model)
        with torch.no_grad():
            vectors = (embedding(ids).float() - reference) / scale
        code = torch.stack([(ids + 1).float() * ID_SCALE, torch.full(ids.shape, ID_SCALE, device=ids.device)], dim=1)
        return torch.cat([code, vectors.transpose(1, 2)], dim=1).unsqueeze(2)

    #: Half the embedding scale per coordinate (L∞), and 2 of it per sentence (L2): budgets that
    #: fool an undefended model in embedding space, so the projected metrics have something to judge.
    budgets = {"linf": 0.5, "l2": 2.0}

    #: What an embedding-space attack really does to the text: see :meth:`project`.
    adversarial_metrics = ("token_change_rate", "projected_asr")

    def project(self, z_adv: Tensor, ids: Tensor, targets: Tensor, model: nn.Module) -> dict[str, Tensor]:
        """The adversarial embeddings projected to their nearest vocabulary entries (Euclidean; never
        to padding or a special token; fixed positions kept): per sample, the fraction of its free
        tokens that change (``token_change_rate``), and whether the projected — real — input still
        counts as correct (``projected_correct``; its mean over the correct samples is the ASR of
        real inputs, which embedding-space ASR alone overstates)."""
        projected = self.nearest_tokens(z_adv, ids, model)
        free = ~self.fixed(ids)
        change = ((projected != ids) & free).sum(dim=1) / free.sum(dim=1).clamp_min(1)
        with torch.no_grad():
            outputs = self.outputs(model, projected)
        return {"token_change_rate": change.float(), "projected_correct": self.correct(outputs, targets).float()}

    def nearest_tokens(self, z: Tensor, ids: Tensor, model: nn.Module, chunk: int = 1024) -> Tensor:
        """The vocabulary id nearest to each position's embedding in ``z`` (fixed positions keep theirs)."""
        embedding, reference, scale = self.embedding_frame(model)
        weight = embedding.weight.detach().float()
        vectors = (z[:, 2:, 0].transpose(1, 2).detach().float() * scale + reference.float()).reshape(-1, weight.shape[1])
        allowed = self.substitutes(len(weight), weight.device)
        squared = weight.pow(2).sum(dim=1)
        nearest = []
        for part in vectors.split(chunk):  # (chunk, V) distances at a time: bounded memory for large vocabularies
            distance = squared[None] - 2 * part @ weight.T
            nearest.append(distance.masked_fill(~allowed, float("inf")).argmin(dim=1))
        projected = torch.cat(nearest).view_as(ids)
        return torch.where(self.fixed(ids), ids, projected)

    def baseline(self, z: Tensor, value: float) -> Tensor:
        """The embedding channels at ``value`` (0: the reference token), the token ids kept: an
        integrated-gradients path then changes the embeddings only."""
        base = torch.full_like(z, value)
        base[:, :2] = z[:, :2]
        return base

    def space_model(self, model: nn.Module, ids: Any = None) -> TextSpaceModel:
        """``model`` on points of the perturbation space (every row carries its token ids)."""
        return TextSpaceModel(model, self)

    # -- pictures and refusals ------------------------------------------------------------------

    def overview(self, logits: Tensor, targets: Tensor, title: str) -> None:
        return None

    def refusal(self, kind: str, name: str) -> str | None:
        return REFUSED.get(kind, {}).get(name)

    def check_inputs(self, ids: Tensor) -> str | None:
        """Refuses inputs that are not token ids (integers)."""
        if isinstance(ids, Tensor) and (ids.is_floating_point() or ids.is_complex()):
            return f"TextClassification reads token ids, but the inputs are {ids.dtype}: give integer ids (torch.long)"
        return None

    def positions(self, ids: Tensor) -> Tensor:
        """``(N, L)`` whether each position holds a token (padding does not)."""
        return ids != self.pad_id

    def perturbable(self, ids: Tensor) -> Tensor:
        """``(N, L)`` the positions attacks, attributions and deletion may change: neither padding
        nor a special token."""
        return ~self.fixed(ids)

    def display(self, x: Tensor) -> None:
        return None  # token pictures come with the text pictures (not yet drawn)

    def show(self, x: Tensor) -> None:
        return None

    def attribution_text(self, ids: Tensor, attributions: dict[str, Tensor], predicted: Tensor,
                         targets: Tensor) -> list[dict[str, Any]]:
        """One row per sample and method: its label (method, predicted and true class), its tokens up
        to the padding and their attributions (summed over the embedding)."""
        from compass_lightning.reporting.text_figures import tokens_of

        rows = []
        for i, tokens in enumerate(tokens_of(ids, self.decode, self.pad_id)):
            kept = (ids[i] != self.pad_id).cpu()
            for name, maps in attributions.items():
                scores = maps[i, 2:, 0].sum(dim=0).cpu()[kept]
                rows.append({"label": f"#{i} {name}: predicted {int(predicted[i])}, true {int(targets[i])}",
                             "tokens": tokens, "scores": scores.tolist()})
        return rows

    def attribution_figure(self, ids: Tensor, attributions: dict[str, Tensor], predicted: Tensor, targets: Tensor,
                           title: str) -> Tensor:
        """The rows of :meth:`attribution_text` as a picture: each token on a background coloured by
        its attribution."""
        from compass_lightning.reporting.text_figures import token_heatmap

        rows = [(r["label"], r["tokens"], torch.tensor(r["scores"])) for r in self.attribution_text(ids, attributions, predicted, targets)]
        return token_heatmap(rows, title=title + "\nred: for the predicted class, blue: against it")

    def adversarial_figure(self, x: Tensor, adversarial: dict[str, tuple[Tensor, Tensor]], targets: Tensor,
                           predicted: Tensor, title: str, model: nn.Module) -> Tensor:
        """Each sentence, then per attack the real input its adversarial embeddings project to
        (:meth:`nearest_tokens`), the changed tokens marked in red, with the predictions in
        embedding space and on the projected tokens."""
        from compass_lightning.reporting.text_figures import token_heatmap, tokens_of

        device = self.embedding_module(model).weight.device
        ids = point_ids(x)[0].to(device)
        kept = (ids != self.pad_id).cpu()
        projections = {}  # per attack, every sample at once: its projected tokens, their prediction, what changed
        for name, (x_adv, attacked) in adversarial.items():
            projected = self.nearest_tokens(x_adv.to(device), ids, model)
            with torch.no_grad():
                real = self.predictions(self.outputs(model, projected)).tolist()
            projections[name] = (tokens_of(projected, self.decode, self.pad_id), real, (projected != ids).cpu(), attacked)
        rows = []
        for i, tokens in enumerate(tokens_of(ids, self.decode, self.pad_id)):
            rows.append((f"#{i} clean: predicted {int(predicted[i])}, true {int(targets[i])}", tokens, torch.zeros(len(tokens))))
            for name, (words, real, changes, attacked) in projections.items():
                changed = changes[i][kept[i]].float()
                rows.append((f"#{i} {name}: predicted {int(attacked[i])} in embedding space, {real[i]} on these tokens "
                             f"({int(changed.sum())} changed)", words[i], changed))
        return token_heatmap(rows, title=f"{title}\nadversarial embeddings projected to their nearest tokens; red: changed")

    # -- mutants --------------------------------------------------------------------------------

    def mutate(self, name: str, ids: Tensor, targets: Tensor, *, classes: int, generator: torch.Generator | None,
               **params: Any) -> tuple[Tensor, Tensor]:
        """A text mutant of :data:`~compass_lightning.mutation_text.TEXT_MUTATIONS` on token ids."""
        fill = self.unk_id if self.unk_id is not None else self.reference_id
        vocabulary = self.vocabulary_size or int(ids.max()) + 1
        return mutate_tokens(name, ids, targets, num_classes=classes, generator=generator, fixed=self.fixed(ids),
                             fill_id=fill, vocabulary_size=vocabulary, **params)


class TextSpaceModel(nn.Module):
    """A text model on points of :class:`TextClassification`'s perturbation space.

    Reads each row's token ids from channels 0 and 1, rebuilds its embeddings from the others
    (clean ones at padding and special positions), and runs the model on the ids with its
    embedding module's output replaced by them. The model is not registered as a submodule, as
    for :class:`~compass_lightning.tasks.classification.PixelModel`.
    """

    def __init__(self, model: nn.Module, task: TextClassification) -> None:
        super().__init__()
        self.__dict__["wrapped"] = model
        self.task = task
        # once per space model, not per forward: the weights do not change while an analysis runs
        # (a pruned copy gets a space model of its own)
        self.frame = task.embedding_frame(model)

    def forward(self, z: Tensor) -> Tensor:
        task = self.task
        embedding, reference, scale = self.frame
        ids, deleted = point_ids(z)
        ids = torch.where(deleted, task.reference_id, ids)
        vectors = z[:, 2:, 0].transpose(1, 2) * scale + reference
        fixed = task.fixed(ids)[..., None]

        def replace(module: nn.Module, inputs: object, output: Tensor) -> Tensor:
            # the model's own lookup of the ids is the clean embedding: kept at the fixed positions
            return torch.where(fixed, output, vectors.to(output.dtype))

        handle = embedding.register_forward_hook(replace)
        try:
            return task.outputs(self.wrapped, ids)
        finally:
            handle.remove()

