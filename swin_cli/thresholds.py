"""Per-class decision thresholds of a multi-label model (data.task=multilabel): an image has a
class when the class's sigmoid probability is at least that class's threshold.

After training, each class's threshold is chosen on the validation split to maximise that
class's F1 (`choose`). They are kept in the checkpoints (`thresholds`, a list of C floats) and
in the export sidecar, and applied by the final test, swin-eval and predict, in torch and in
ONNX Runtime alike. A checkpoint written before the choice holds 0.5 for every class.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from swin_cli.errors import SwinCliError
from swin_cli.text import plural

# The threshold of a class nothing was chosen for (no validation split, no validation positives):
# the probability at which a yes and a no are equally likely.
DEFAULT = 0.5


def defaults(num_classes: int) -> list[float]:
    return [DEFAULT] * num_classes


def choose(probs: Tensor, truth: Tensor) -> list[float]:
    """Per class (a column of probs (N, C) and of the bool truth (N, C)), the threshold whose
    predictions `probs >= threshold` have the highest F1 on these images; DEFAULT for a class
    without positives here, where every threshold gives F1 0.

    Only the N scores are candidates (between two neighbouring scores F1 cannot change), and a
    run of equal scores is taken whole. The threshold kept is halfway between the chosen score
    and the next lower one, so that a new image scoring a little under the lowest validation
    positive that was taken still counts as one; on these images it predicts the same."""
    n, num_classes = probs.shape
    if n == 0:
        return defaults(num_classes)
    scores, order = probs.double().sort(dim=0, descending=True, stable=True)
    hits = truth.gather(0, order).double()
    taken = torch.arange(1, n + 1, dtype=torch.float64)[:, None]  # predicted positives at each cut
    positives = hits.sum(0)
    # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (taken + positives).
    f1 = 2 * hits.cumsum(0) / (taken + positives)
    run_end = torch.ones_like(scores, dtype=torch.bool)
    run_end[:-1] = scores[:-1] != scores[1:]
    best = torch.where(run_end, f1, -1.0).argmax(0)  # the first best: the highest such threshold
    lower = scores.gather(0, (best + 1).clamp(max=n - 1)[None])[0]
    chosen = scores.gather(0, best[None])[0]
    threshold = torch.where(best < n - 1, (chosen + lower) / 2, chosen)
    return torch.where(positives > 0, threshold, DEFAULT).tolist()


def checked(values: Optional[Sequence[Any]], num_classes: int, where: str) -> list[float]:
    """The thresholds a checkpoint or a sidecar (`where`, for the message) holds; DEFAULT for
    each class when it holds none. A list of another length, or a value outside [0, 1], is a
    one-line error: applied anyway, it would give every image the wrong labels."""
    if values is None:
        return defaults(num_classes)
    values = list(values)
    if len(values) != num_classes:
        raise SwinCliError(f"{where} holds {plural(len(values), 'threshold')} for its {plural(num_classes, 'class')}; "
                           f"it needs one per class (retrain, or remove its thresholds key for 0.5 each)")
    bad = [v for v in values if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0]
    if bad:
        raise SwinCliError(f"{where} holds a threshold of {bad[0]!r}; thresholds are probabilities in [0, 1]")
    return [float(v) for v in values]


def predicted(probs: Tensor, thresholds: Sequence[float]) -> Tensor:
    """The bool (N, C) label decisions of sigmoid probabilities (N, C)."""
    return probs >= torch.tensor(list(thresholds), dtype=torch.float64, device=probs.device)


def describe(values: Sequence[float]) -> str:
    """The chosen thresholds in a few words, for the log."""
    return f"{min(values):.2f} to {max(values):.2f}, median {sorted(values)[len(values) // 2]:.2f}"
