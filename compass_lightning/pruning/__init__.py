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
greg2       ``|w|`` after a short episode on a copy with a growing L2 penalty on the
            lowest-magnitude weights (Wang et al., GReg-2, ICLR 2021) — **changes the copy's
            weights**
asl         ``|w| / b_l`` after a short episode on a copy that learns one threshold ``b_l`` per
            layer towards a target sparsity (ASL, Retsinas et al.) — **changes the copy's weights**
==========  ===========================================================================
"""

from compass_lightning.pruning.importance import IMPORTANCES, Importance, importance
from compass_lightning.pruning.masks import PruningSweep, masks, max_safe_rate, prune
from compass_lightning.pruning.parameters import (
    DENOMINATORS, PRUNABLE, Prunable, parameter_count, prunable, prunable_weights, sparsity,
)

__all__ = [
    "DENOMINATORS", "IMPORTANCES", "PRUNABLE", "Importance", "Prunable", "PruningSweep", "importance", "masks",
    "max_safe_rate", "parameter_count", "prunable", "prunable_weights", "prune", "sparsity",
]
