"""Pruning without fine-tuning (AI-Compass module 5): how much of a model is redundant.

Importance scores rank the prunable weights (see :func:`prunable`: the weights of ``Conv2d``,
``Conv1d``, ``Linear`` and ``Embedding`` modules, the input and recurrent weights of ``RNN``/``LSTM``/
``GRU`` modules and the input projection of ``MultiheadAttention``); :func:`prune` zeroes the
lowest ones on a copy, globally (unstructured, through ``torch.nn.utils.prune`` on the named
parameters) or whole rows (``structured=True``: filters, units, tokens' embeddings). The
pruning rate is the fraction of all prunable weights set to zero. Everything happens on deep copies:
the trained model's weights, ``.grad`` and modes are never touched.

==========  ===========================================================================
name        importance of a weight ``w``
==========  ===========================================================================
magnitude   ``|w|``
taylor      ``(w·g_b)²`` averaged over the calibration batches, ``g_b`` batch ``b``'s mean loss
            gradient (Molchanov et al. 2017; AI-Compass Eq. 10) — not ``(w·ḡ)²`` of the overall
            mean gradient, which vanishes near a minimum and leaves a ranking of noise
obd         ``½·h·w²``, ``h`` the Hessian diagonal approximated by the empirical Fisher
            (the mean over calibration samples of the squared per-sample gradient)
greg2       GReg-2 (Wang et al., ICLR 2021): a copy trained on with a growing L2 penalty, first
            on every weight, then on the lowest-magnitude ones until they vanish; that copy is
            pruned — **changes the copy's weights**, one episode per rate
asl         ASL (Retsinas et al. 2020): a copy trained with one threshold per layer, a
            straight-through pruned forward pass and a loss towards the rate's sparsity; that copy
            is pruned by ``|w|/b_l`` — **changes the copy's weights**, one episode per rate
==========  ===========================================================================

The first three rank the trained weights (:func:`importance`, then :func:`prune` or a
:class:`PruningSweep`); the last two train the copy they prune (:func:`trained_copy`, see
:mod:`~compass_lightning.pruning.episodes` for their schedules). :class:`PrunedCopies` gives the
pruned model of either kind at any rate.
"""

from compass_lightning.pruning.episodes import PrunedCopies, trained_copy
from compass_lightning.pruning.importance import IMPORTANCES, Importance, importance
from compass_lightning.pruning.masks import PruningSweep, masks, max_safe_rate, prune
from compass_lightning.pruning.parameters import (
    DENOMINATORS, PRUNABLE, Prunable, parameter_count, prunable, prunable_weights, sparsity,
)

__all__ = [
    "DENOMINATORS", "IMPORTANCES", "PRUNABLE", "Importance", "Prunable", "PrunedCopies", "PruningSweep", "importance",
    "masks", "max_safe_rate", "parameter_count", "prunable", "prunable_weights", "prune", "sparsity", "trained_copy",
]
