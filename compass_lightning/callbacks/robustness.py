"""``AttackSuccessRate``: how easily the model is fooled, white-box and by transfer (AI-Compass module 3)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from compass_lightning.attacks import ATTACKS, mean_attack_success_rate
from compass_lightning.attacks.masking import BLACK_BOX, CASCADES, CHECKS, WARNINGS, masking_checks
from compass_lightning.attacks.scoring import Kept, attack_metrics, attack_probe
from compass_lightning.callbacks.base import IMAGES_EVERY_N, CompassCallback, Evaluation, ProbeData, compass_module
from compass_lightning.engine.checks import check_bool, check_int, check_reals
from compass_lightning.reporting.figures import line_chart
from compass_lightning.engine.guard import analysis_mode
from compass_lightning.engine.layers import check_layer_parameters
from compass_lightning.engine.registry import resolve_selection
from compass_lightning.reporting.reporter import CompassWarning
from compass_lightning.reporting.tags import MEAN_ASR, tag
from compass_lightning.tasks import Task

MODULE = "robustness"

SNAPSHOT = "snapshot"
DEFAULT_ATTACKS = ("fgsm", "pgd")
DEFAULT_TRANSFER = ("mifgsm",)
METRICS = ("asr", "robust_accuracy", "mean_linf", "mean_l2")

Attacks = Union[Sequence[str], Mapping[str, Optional[Mapping[str, Any]]]]
Surrogates = Union[Sequence[Union[str, nn.Module]], Mapping[str, Union[str, nn.Module]]]


def _surrogate_names(transfer_from: object) -> dict[str, Union[str, nn.Module]]:
    if isinstance(transfer_from, Mapping):
        pairs = list(transfer_from.items())
    elif isinstance(transfer_from, (list, tuple)):
        pairs, seen = [], set()
        for source in transfer_from:
            base = SNAPSHOT if source == SNAPSHOT else type(source).__name__.lower()
            name, index = base, 2
            while name in seen:
                name, index = f"{base}_{index}", index + 1
            seen.add(name)
            pairs.append((name, source))
    else:
        raise TypeError(f"transfer_from must be a list of modules and/or 'snapshot', or a mapping, got {transfer_from!r}")
    for name, source in pairs:
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"transfer_from: the surrogate name {name!r} must be a non-empty str without '/' (it is a "
                             "level of the tag compass/robustness/transfer/<name>/...)")
        if not (source == SNAPSHOT or isinstance(source, nn.Module)):
            raise ValueError(f"transfer_from: {name!r}: {source!r} is neither an nn.Module nor 'snapshot'")
    return dict(pairs)


def _eps_tag(eps: float) -> str:
    return f"eps_{eps:.4g}"


@compass_module('robustness')
class AttackSuccessRate(CompassCallback):
    """Attack success rates on the probe set, white-box and transferred from surrogates, at validation epochs.

    For every attack (at the first ``eps``, and at every ``eps`` of a sweep) it logs, under
    ``compass/robustness/<attack>/``: ``asr`` (among probe samples classified correctly before the
    attack, the fraction misclassified after it), ``robust_accuracy`` (fraction of all probe samples
    still correct), ``mean_linf`` and ``mean_l2`` (mean perturbation norms, pixel units), plus
    ``compass/robustness/mean_asr`` over the white-box attacks. Transfer attacks are crafted on each
    surrogate of ``transfer_from`` and scored on the model being trained, logged under
    ``compass/robustness/transfer/<surrogate>/<attack>/``. Images: clean, adversarial and amplified
    perturbation of a few probe images with their predictions (``compass/robustness/examples``) and,
    for a sweep, robust accuracy against ε (``compass/robustness/eps_sweep``).

    Attacks run in pixel space: with ``task=Classification(mean=..., std=...)`` the probe is
    de-normalised, perturbed and clipped to ``task.input_range``, and normalised again for the model.
    Each attack draws its randomness from a seed fixed per attack and ε, so epochs compare.

    Args:
        attacks: white-box attacks, names of :data:`~compass_lightning.attacks.ATTACKS` or a mapping
            from names to parameters, e.g. ``{"pgd": {"steps": 20}, "fgsm": None}``.
        eps: budget of the L∞ attacks in the units of the task's perturbation space (pixels for
            images, the embedding scale for text), or a list of budgets (an ε-sweep; the first is
            the reference logged without an ``eps_`` prefix); default: the task's ``budgets``
            (8/255 for images in [0, 1], 0.5 for text).
        eps_l2: budget of the L2 attacks (``pgd_l2``, ``cw``, ``deepfool``), a number or a list;
            default: the task's (0.5 for images in [0, 1], 2.0 for text).
        transfer_from: surrogates to craft transfer examples on: ``nn.Module``\\ s taking the same
            inputs as the model, and/or ``"snapshot"``, a frozen copy of this model refreshed every
            ``snapshot_every`` epochs (a list, or a mapping from tag names to surrogates).
        transfer_attacks: the attacks crafted on the surrogates (names or a mapping, as ``attacks``).
        snapshot_every: epochs between two refreshes of the snapshot surrogate.
        image_count: probe images shown in the example grid (0: none).
        checks: run the gradient-masking checks of :mod:`~compass_lightning.attacks.masking` on one
            probe batch at every evaluation (about three passes of a batch) and log
            ``compass/robustness/checks/<check>`` (1 fired, 0 silent), with one warning per check that
            fires; ``black_box`` runs when a black-box attack (``square``) and a white-box one, or
            the ``autoattack`` cascade, are among ``attacks``.
        every_n_epochs, probe_size, batch_size, seed, task, probe_data, fail_fast, budget, final, images_every_n: see
            :class:`~compass_lightning.callbacks.base.CompassCallback`; the probe holds up to 256
            samples by default.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> monitor = AttackSuccessRate(attacks=["fgsm", "pgd"], eps=[2 / 255, 8 / 255], transfer_from=["snapshot"])
        >>> keep_most_robust = ModelCheckpoint(monitor="compass/robustness/pgd/asr", mode="min")
        >>> trainer = pl.Trainer(callbacks=[monitor, keep_most_robust], logger=False)
    """

    default_probe_size = 256

    def __init__(
        self,
        attacks: Attacks = DEFAULT_ATTACKS,
        *,
        eps: Union[float, Sequence[float], None] = None,
        eps_l2: Union[float, Sequence[float], None] = None,
        transfer_from: Surrogates = (),
        transfer_attacks: Attacks = DEFAULT_TRANSFER,
        snapshot_every: int = 5,
        image_count: int = 8,
        checks: bool = True,
        every_n_epochs: int = 1,
        probe_size: Optional[int] = None,
        batch_size: Optional[int] = None,
        seed: int = 0,
        task: Optional[Task] = None,
        probe_data: Optional[ProbeData] = None,
        fail_fast: bool = False,
        budget: Optional[float] = None,
        final: bool = True,
        images_every_n: int = IMAGES_EVERY_N,
    ) -> None:
        super().__init__(
            every_n_epochs=every_n_epochs,
            probe_size=probe_size,
            batch_size=batch_size,
            seed=seed,
            task=task,
            probe_data=probe_data,
            fail_fast=fail_fast, budget=budget, final=final, images_every_n=images_every_n,
        )
        self.attacks = resolve_selection(ATTACKS, "attacks", attacks)
        budgets = self.task.budgets  # the task's own where not given: 8/255 and 0.5 for images in [0, 1]
        self.eps = {"linf": check_reals("eps", budgets["linf"] if eps is None else eps, low=0.0),
                    "l2": check_reals("eps_l2", budgets["l2"] if eps_l2 is None else eps_l2, low=0.0)}
        for argument, norm in (("eps", "linf"), ("eps_l2", "l2")):
            tags = [_eps_tag(e) for e in self.eps[norm]]
            if clash := next((t for t in tags if tags.count(t) > 1), None):
                values = [e for e, t in zip(self.eps[norm], tags) if t == clash]
                raise ValueError(f"{argument}: {values[0]!r} and {values[1]!r} would both be logged as {clash}; give "
                                 "budgets that differ within 4 significant digits (or one of them)")
        self.transfer_from = _surrogate_names(transfer_from)
        self.transfer_attacks = resolve_selection(ATTACKS, "transfer_attacks", transfer_attacks)
        self.attacks = self.applicable("attack", self.attacks, "attacks", explicit=attacks != DEFAULT_ATTACKS)
        if self.transfer_from and (reason := self.task.refusal("transfer", "surrogates")):
            raise ValueError(f"transfer_from: transfer attacks do not apply to {self.task!r}: {reason}")
        if self.transfer_from:  # transfer attacks run only with surrogates
            self.transfer_attacks = self.applicable("attack", self.transfer_attacks, "transfer_attacks",
                                                    explicit=transfer_attacks != DEFAULT_TRANSFER)
        self.snapshot_every = check_int("snapshot_every", snapshot_every, minimum=1)
        self.image_count = check_int("image_count", image_count, minimum=0)
        self.checks = check_bool("checks", checks)
        self._snapshot: nn.Module | None = None
        self._snapshot_epoch: int | None = None
        self._pending_snapshot: dict[str, Tensor] | None = None

    # -- configuration -------------------------------------------------------------------------

    @override
    def _state_key_fields(self) -> dict[str, Any]:
        return {
            **super()._state_key_fields(),
            "attacks": sorted(self.attacks),
            "eps": [list(self.eps["linf"]), list(self.eps["l2"])],
            "transfer_from": sorted(self.transfer_from),
        }

    def _metrics(self, name: str) -> tuple[str, ...]:
        """The metrics of the attack ``name``: :data:`METRICS`, what the task adds (text: the tokens
        changed) and what the attack adds (the cascade: which attack broke each sample, its cost)."""
        return (*METRICS, *self.task.adversarial_metrics, *ATTACKS[name].metrics)

    def _checks(self) -> tuple[str, ...]:
        if not self.checks:
            return ()
        black = any(n in BLACK_BOX for n in self.attacks)
        white = any(n not in BLACK_BOX for n in self.attacks)
        both = (black and white) or any(n in CASCADES for n in self.attacks)
        return tuple(c for c in CHECKS if c != "black_box" or both)

    def _budgets(self, name: str) -> tuple[float, ...]:
        return self.eps[ATTACKS[name].norm]

    @override
    def expected_tags(self) -> list[str]:
        tags = []
        for name in self.attacks:
            budgets = self._budgets(name)
            prefixes = [()] + ([(_eps_tag(e),) for e in budgets] if len(budgets) > 1 else [])
            tags += [tag(MODULE, name, *prefix, metric) for prefix in prefixes for metric in self._metrics(name)]
        tags.append(MEAN_ASR)
        tags += [tag(MODULE, "checks", check) for check in self._checks()]
        for surrogate in self.transfer_from:
            for name in self.transfer_attacks:
                tags += [tag(MODULE, "transfer", surrogate, name, metric) for metric in self._metrics(name)]
        return tags

    @override
    def check_model(self, pl_module: pl.LightningModule) -> None:
        check_layer_parameters(pl_module, self.attacks, ATTACKS, "attacks")
        for source in self.transfer_from.values():
            check_layer_parameters(pl_module if source == SNAPSHOT else source, self.transfer_attacks, ATTACKS,
                                   "transfer_attacks")

    # -- evaluation ----------------------------------------------------------------------------

    @override
    def evaluate(self, trainer: pl.Trainer, evaluation: Evaluation) -> None:
        probe, task = evaluation.probe, evaluation.task
        clean_outputs = evaluation.outputs(probe.inputs)
        clean = task.predictions(clean_outputs).cpu()
        correct = task.correct(clean_outputs, probe.targets).cpu()
        shown = min(self.image_count, len(probe)) if evaluation.want_images else 0
        examples: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
        sweeps: dict[str, dict[str, list[float]]] = {"linf": {}, "l2": {}}  # norm -> attack -> per eps
        asrs = []
        outcomes: dict[str, dict[str, Tensor]] = {}  # per-sample rows of each attack at its first eps
        for name, params in self.attacks.items():
            for index, eps in enumerate(self._budgets(name)):
                with self.isolate(f"attack {name!r} at eps={eps:.4g}"):
                    keep = shown if index == 0 else 0
                    metrics, kept, rows = self._attack(evaluation, name, params, eps, correct, keep)
                    prefixes = [tag(MODULE, name)] if index == 0 else []
                    if len(self._budgets(name)) > 1:
                        prefixes.append(tag(MODULE, name, _eps_tag(eps)))
                        curve = sweeps[ATTACKS[name].norm].setdefault(name, [float("nan")] * len(self._budgets(name)))
                        curve[index] = float(metrics["robust_accuracy"])
                    for prefix in prefixes:
                        evaluation.scalars.update({f"{prefix}/{m}": v for m, v in metrics.items()})
                    if index == 0:
                        outcomes[name] = rows
                        asrs.append(metrics["asr"])
                        if kept is not None:
                            examples[name] = kept
        if asrs:
            evaluation.scalars[MEAN_ASR] = mean_attack_success_rate(asrs)
        if self._checks():
            with self.isolate("gradient-masking checks"):
                self._check_masking(evaluation, correct, outcomes)
        self._transfer(trainer, evaluation, correct)
        if shown and examples:
            first = next(iter(examples.values()))[0]
            title = f"epoch {trainer.current_epoch}, eps = {self.eps['linf'][0]:.4g} (L∞) / {self.eps['l2'][0]:.4g} (L2)"
            grid = task.adversarial_figure(first, {name: kept[1:] for name, kept in examples.items()}, probe.targets[:shown],
                                           clean[:shown], title, evaluation.model)
            if grid is not None:  # a task without pictures of its samples draws none
                evaluation.images["compass/robustness/examples"] = grid
        for norm, curves in sweeps.items():
            if evaluation.want_images and curves:
                evaluation.images[f"compass/robustness/eps_sweep{'_l2' if norm == 'l2' else ''}"] = line_chart(
                    self.eps[norm],
                    curves,
                    xlabel=f"eps ({'L2' if norm == 'l2' else 'L∞'}, pixel units)",
                    ylabel="robust accuracy",
                    title=f"robust accuracy against the attack budget, epoch {trainer.current_epoch}",
                )

    def _attack(
        self,
        evaluation: Evaluation,
        name: str,
        params: dict[str, Any],
        eps: float,
        correct: Tensor,
        keep: int,
        crafter: nn.Module | None = None,
    ) -> tuple[dict[str, Tensor], Kept | None, dict[str, Tensor]]:
        """Craft on ``crafter`` (``None``: white-box), score on the evaluated model: the metrics over
        the whole probe, the first ``keep`` (clean, adversarial, prediction) triples of this
        process' shard, and the per-sample rows."""
        generator = self.generator(f"{name}@{eps!r}", evaluation.device)
        rows, kept = attack_probe(evaluation, name, params, eps, generator, crafter=crafter, keep=keep)
        return attack_metrics(correct, rows), kept, rows

    def _check_masking(self, evaluation: Evaluation, correct: Tensor, outcomes: dict[str, dict[str, Tensor]]) -> None:
        """The gradient-masking checks on the probe's first batch (the same on every process)."""
        probe, task = evaluation.probe, evaluation.task
        inputs = next(iter(probe.chunks(probe.inputs, evaluation.batch_size, evaluation.device)))
        targets = next(iter(probe.chunks(probe.targets, evaluation.batch_size, evaluation.device)))
        model = task.space_model(evaluation.model, inputs)
        fired = masking_checks(model, task.to_space(inputs, evaluation.model), targets, correct, outcomes)
        for check in self._checks():
            if check not in fired:
                continue
            evaluation.scalars[tag(MODULE, "checks", check)] = float(fired[check])
            if fired[check] and ("checks", check) not in self._warned:
                self._warned.add(("checks", check))
                rank_zero_warn(f"AttackSuccessRate: compass/robustness/checks/{check} fired at epoch "
                               f"{evaluation.epoch}: {WARNINGS[check]}", category=CompassWarning)

    def _transfer(self, trainer: pl.Trainer, evaluation: Evaluation, correct: Tensor) -> None:
        model = evaluation.model
        for surrogate_name, source in self.transfer_from.items():
            if source == SNAPSHOT:
                surrogate = self._snapshot_module(model)
                if surrogate is None:
                    continue  # the first evaluation has no earlier model yet: its tags are NaN
                context = contextlib.nullcontext()  # already frozen: eval mode, no parameter gradients
            else:
                surrogate = source.to(evaluation.device)
                context = analysis_mode(surrogate, seed=self.seed)
            with context:
                for name, params in self.transfer_attacks.items():
                    eps = self._budgets(name)[0]
                    with self.isolate(f"transfer attack {name!r} from {surrogate_name!r}"):
                        metrics, _, _ = self._attack(evaluation, name, params, eps, correct, 0, surrogate)
                        prefix = tag(MODULE, "transfer", surrogate_name, name)
                        evaluation.scalars.update({f"{prefix}/{m}": v for m, v in metrics.items()})
        if SNAPSHOT in self.transfer_from.values() and trainer.state.fn == "fit":
            epoch = trainer.current_epoch
            if self._snapshot_epoch is None or epoch - self._snapshot_epoch >= self.snapshot_every:
                self._snapshot, self._snapshot_epoch, self._pending_snapshot = self._frozen_copy(model), epoch, None

    # -- snapshot ------------------------------------------------------------------------------

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        # LightningModule.__getstate__ drops the trainer, so the copy holds only the network.
        snapshot = copy.deepcopy(model).eval()
        snapshot.requires_grad_(False)
        return snapshot

    def _snapshot_module(self, model: nn.Module) -> nn.Module | None:
        if self._snapshot is None and self._pending_snapshot is not None:
            self._snapshot = self._frozen_copy(model)
            self._snapshot.load_state_dict(self._pending_snapshot)
            self._pending_snapshot = None
        return self._snapshot

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        weights = self._snapshot.state_dict() if self._snapshot is not None else self._pending_snapshot
        if weights is not None:  # kept in the checkpoint so a resumed run transfers from the same model
            state["snapshot"] = {k: v.detach().cpu().clone() for k, v in weights.items()}
            state["snapshot_epoch"] = self._snapshot_epoch
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._snapshot = None
        self._pending_snapshot = state_dict.get("snapshot")
        self._snapshot_epoch = state_dict.get("snapshot_epoch")
