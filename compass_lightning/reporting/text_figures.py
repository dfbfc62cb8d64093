"""Pictures of text: sentences as rows of tokens, each on a background coloured by its attribution.

Drawn with Pillow (as the image grids of :mod:`~compass_lightning.reporting.figures`): a few
hundred tokens are boxes and text, for which matplotlib's layout engine is slow and unneeded.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw
from torch import Tensor

from compass_lightning.reporting.figures import INK, WHITE, _font, _to_tensor

POSITIVE, NEGATIVE = (214, 39, 40), (31, 119, 180)  # red: for the class, blue: against it


def shade(value: float) -> tuple[int, int, int]:
    """White at 0, the full colour at ±1."""
    colour = POSITIVE if value >= 0 else NEGATIVE
    strength = min(abs(value), 1.0)
    return tuple(round(255 + (c - 255) * strength) for c in colour)  # type: ignore[return-value]


def token_heatmap(rows: Sequence[tuple[str, Sequence[str], Tensor]], *, title: str = "", width: int = 900) -> Tensor:
    """``(3, H, W)`` in ``[0, 1]``: one block per row — its label, then its tokens wrapped to
    ``width`` pixels, each on a background coloured by its score (divided by the row's largest
    absolute score: red for, blue against, white neutral).

    Example:
        >>> import torch
        >>> picture = token_heatmap([("#0 saliency", ["a", "fine", "film"], torch.tensor([0.1, 1.0, -0.5]))])
        >>> picture.shape[0], bool(0 <= picture.min() <= picture.max() <= 1)
        (3, True)
    """
    font, small = _font(13), _font(12)
    lines = title.split("\n") if title else []
    line_height, gap = 20, 3
    layout: list[tuple[int, int, str, tuple[int, int, int]]] = []  # (x, y, token, colour)
    labels: list[tuple[int, str]] = []
    y = 6 + 19 * len(lines)
    for label, tokens, scores in rows:
        labels.append((y, label))
        y += line_height
        peak = float(scores.abs().max()) or 1.0
        x = 12
        for token, score in zip(tokens, scores.tolist()):
            length = int(small.getlength(token)) + 6
            if x + length > width - 8:
                x, y = 12, y + line_height
            layout.append((x, y, token, shade(score / peak)))
            x += length + gap
        y += line_height + 8
    image = Image.new("RGB", (width, y + 4), WHITE)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((8, 4 + 19 * index), line, fill=INK, font=font)
    for top, label in labels:
        draw.text((8, top + 2), label, fill=INK, font=font)
    for x, top, token, colour in layout:
        box = (x, top + 1, x + int(small.getlength(token)) + 6, top + line_height - 2)
        draw.rectangle(box, fill=colour)
        draw.text((x + 3, top + 3), token, fill=INK, font=small)
    return _to_tensor(image)


def tokens_of(ids: Tensor, decode: object, pad_id: int) -> list[list[str]]:
    """Each row of ids as token strings up to its padding (``decode``: a callable of an id list, a
    sequence indexed by id, or ``None`` for the ids themselves)."""
    out = []
    for row in ids.tolist():
        row = [i for i in row if i != pad_id]
        if callable(decode):
            out.append([str(t) for t in decode(row)])
        elif decode is not None:
            out.append([str(decode[i]) if 0 <= i < len(decode) else f"<{i}>" for i in row])  # type: ignore[index]
        else:
            out.append([str(i) for i in row])
    return out

