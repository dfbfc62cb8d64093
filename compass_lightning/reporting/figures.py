"""Pictures a person would rather look at than read, as ``(3, H, W)`` tensors in ``[0, 1]``.

One tensor format serves every logger (TensorBoard's ``add_image``, or a PNG file). The pictures
drawn at every evaluation are composed with torch and Pillow rather than matplotlib: matplotlib's
text layout cost ~0.1 s per figure, more than the analysis itself on a small model, while Pillow
draws the same picture in a few milliseconds. The font is matplotlib's DejaVu Sans.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

GREEN = (26, 178, 64)
RED = (230, 38, 38)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
INK = (40, 40, 40)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def _to_tensor(image: Image.Image) -> Tensor:
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return array.view(image.height, image.width, 3).permute(2, 0, 1).float().div(255.0)


def _to_image(canvas: Tensor) -> Image.Image:
    array = canvas.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).contiguous()
    return Image.frombytes("RGB", (array.shape[1], array.shape[0]), bytes(array.numpy()))


def _framed_tiles(images: Tensor, correct: Tensor | None, size: int, border: int) -> Tensor:
    """``(k, 3, s, s)`` tiles: images enlarged without smoothing, framed green/red by ``correct``."""
    images = images.detach().float().cpu().clamp(0, 1)
    images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]
    images = F.interpolate(images, scale_factor=max(1, size // max(images.shape[-2:])), mode="nearest")
    colours = torch.tensor([WHITE] * len(images), dtype=torch.float32) / 255
    if correct is not None:
        colours = torch.where(correct.cpu().view(-1, 1), torch.tensor(GREEN) / 255.0, torch.tensor(RED) / 255.0)
    height, width = images.shape[-2] + 2 * border, images.shape[-1] + 2 * border
    tiles = colours.view(-1, 3, 1, 1).expand(-1, -1, height, width).clone()
    tiles[:, :, border:-border, border:-border] = images
    return tiles


def labelled_image_grid(
    rows: Mapping[str, Tensor],
    labels: Mapping[str, Tensor] | None = None,
    reference: str | None = None,
    *,
    correct: Mapping[str, Tensor] | None = None,
    title: str | None = None,
    columns: Sequence[str] | None = None,
    tile: int = 64,
) -> Tensor:
    """A grid of images, one row per entry of ``rows``, each row named on the left.

    Args:
        rows: row name → ``(k, C, H, W)`` images in ``[0, 1]`` (the same ``k`` and size for all).
        labels: row name → ``(k,)`` integer labels written on each image.
        reference: the row whose labels the others are compared with; changed labels are on red.
        correct: row name → ``(k,)`` booleans; the image is framed green where true, red where false.
        title: written above the grid (``\n`` starts a new line).
        columns: a heading above each column.
        tile: the side of each image in pixels (small images are enlarged without smoothing).

    Example:
        >>> import torch
        >>> grid = labelled_image_grid({"clean": torch.rand(4, 1, 8, 8), "noise": torch.rand(4, 1, 8, 8)})
        >>> grid.shape[0], bool(0.0 <= grid.min() <= grid.max() <= 1.0)
        (3, True)
    """
    names = list(rows)
    border, gap = 3, 4
    tiles = [_framed_tiles(rows[name], (correct or {}).get(name), tile, border) for name in names]
    count, _, height, width = tiles[0].shape
    font, small = _font(13), _font(10)
    left = 12 + max(int(font.getlength(name)) for name in names)
    lines = title.split("\n") if title else []
    headings = [_wrap(heading, small, width) for heading in (columns or [])]
    heading_lines = max((h.count("\n") + 1 for h in headings), default=0)
    top = 6 + 19 * len(lines) + 13 * heading_lines + (5 if headings else 0)
    grid_width = left + count * (width + gap)
    canvas_width = max([grid_width] + [int(font.getlength(line)) + 16 for line in lines])
    canvas = torch.ones(3, top + len(names) * (height + gap), canvas_width)
    for row, row_tiles in enumerate(tiles):
        for column in range(count):
            y, x = top + row * (height + gap), left + column * (width + gap)
            canvas[:, y : y + height, x : x + width] = row_tiles[column]
    image = _to_image(canvas)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((8, 4 + 19 * index), line, fill=INK, font=font)
    for column, heading in enumerate(headings):
        centre = left + column * (width + gap) + width // 2
        draw.multiline_text((centre, top - 4), heading, fill=INK, font=small, anchor="md", align="center", spacing=2)
    labels = labels or {}
    base = labels.get(reference) if reference else None
    for row, name in enumerate(names):
        y = top + row * (height + gap)
        draw.text((left - 8, y + height // 2), name, fill=INK, font=font, anchor="rm")
        for column, label in enumerate(labels[name].tolist() if name in labels else []):
            changed = base is not None and label != int(base[column])
            x = left + column * (width + gap) + border + 1
            box = draw.textbbox((x + 2, y + border + 1), str(label), font=small)
            draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=RED if changed else BLACK)
            draw.text((x + 2, y + border + 1), str(label), fill=WHITE, font=small)
    return _to_tensor(image)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    """``text`` broken at underscores into lines no wider than ``width`` pixels where possible."""
    lines: list[str] = []
    for word in text.split("_"):
        joined = f"{lines[-1]}_{word}" if lines else word
        if lines and font.getlength(joined) <= width:
            lines[-1] = joined
        else:
            lines.append(word if not lines else f"_{word}")
    return "\n".join(lines)


def _blues(values: Tensor) -> Tensor:
    """``(..., 3)`` colours from white (0) to dark blue (1)."""
    light, dark = torch.tensor([247.0, 251.0, 255.0]) / 255, torch.tensor([8.0, 48.0, 107.0]) / 255
    return light + values.clamp(0, 1).unsqueeze(-1) * (dark - light)


def confusion_matrix_figure(matrix: Tensor, class_names: Sequence[str] | None = None, *, title: str = "") -> Tensor:
    """A confusion matrix: rows are true classes, columns predicted ones, colour the row fraction.

    Example:
        >>> import torch
        >>> confusion_matrix_figure(torch.tensor([[5, 1], [0, 6]]), title="probe").shape[0]
        3
    """
    counts = matrix.detach().cpu().long()
    classes = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(classes)]
    rates = counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    cell = max(6, min(44, 520 // classes))
    labelled = cell >= 14  # room for class names and counts
    font, small = _font(13), _font(max(8, min(12, cell // 3)))
    left = 34 + (max(int(small.getlength(n)) for n in names) + 6 if labelled else 0)
    top = 58 + (18 if labelled else 0)
    cells = _blues(rates).permute(2, 0, 1).repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    canvas = torch.ones(3, top + classes * cell + 10, left + classes * cell + 10)
    canvas[:, top : top + classes * cell, left : left + classes * cell] = cells
    image = _to_image(canvas)
    draw = ImageDraw.Draw(image)
    draw.text((8, 6), title or "confusion matrix", fill=INK, font=font)
    draw.text((8, 26), "rows: true class, columns: predicted class", fill=INK, font=_font(11))
    draw.text((8, 41), "colour: fraction of the row (white 0, dark 1)", fill=INK, font=_font(11))
    if labelled:
        for index, name in enumerate(names):
            middle = index * cell + cell // 2
            draw.text((left + middle, top - 4), name, fill=INK, font=small, anchor="md")
            draw.text((left - 6, top + middle), name, fill=INK, font=small, anchor="rm")
        for i, j in counts.nonzero().tolist():
            colour = WHITE if rates[i, j] > 0.5 else INK
            centre = (left + j * cell + cell // 2, top + i * cell + cell // 2)
            draw.text(centre, str(int(counts[i, j])), fill=colour, font=small, anchor="mm")
    return _to_tensor(image)


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = (0.0, 1.0),
    chance: str | None = None,
) -> Tensor:
    """One line per entry of ``series`` over ``x`` (matplotlib, laid out by hand, no pyplot); the
    series named ``chance`` is drawn dashed grey.

    Example:
        >>> line_chart([1, 2], {"pgd": [0.9, 0.5]}, xlabel="eps", ylabel="accuracy").shape[0]
        3
    """
    figure, axes = _figure()
    colours = _colours()
    for index, (name, values) in enumerate(series.items()):
        style = {"color": "grey", "linestyle": "--"} if name == chance else {"color": colours[index % len(colours)]}
        axes.plot(list(x), list(values), marker="o", markersize=3, label=name, **style)
    return _finish(figure, axes, xlabel=xlabel, ylabel=ylabel, title=title, ylim=ylim)


def bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    ylim: tuple[float, float] | None = None,
) -> Tensor:
    """Grouped bars: one group per category, one bar per entry of ``series``.

    Example:
        >>> bar_chart(["conv1", "conv2"], {"adversarial": [0.5, 0.2], "gaussian": [0.9, 0.8]}, xlabel="layer", ylabel="cosine").shape[0]
        3
    """
    figure, axes = _figure()
    colours = _colours()
    width = 0.8 / max(len(series), 1)
    for index, (name, values) in enumerate(series.items()):
        positions = [i + (index - (len(series) - 1) / 2) * width for i in range(len(categories))]
        axes.bar(positions, list(values), width=width, label=name, color=colours[index % len(colours)])
    axes.set_xticks(range(len(categories)), list(categories), rotation=45 if len(categories) > 6 else 0, ha="right" if len(categories) > 6 else "center", fontsize=8)
    return _finish(figure, axes, xlabel=xlabel, ylabel=ylabel, title=title, ylim=ylim)


def matrix_chart(
    values: Tensor,
    rows: Sequence[str],
    columns: Sequence[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    colour_label: str = "",
) -> Tensor:
    """``values`` (rows × columns, NaN left white) as coloured cells with a colour bar in [0, 1].

    Example:
        >>> import torch
        >>> matrix_chart(torch.rand(3, 2), ["a", "b", "c"], ["0", "1"], xlabel="epoch", ylabel="layer").shape[0]
        3
    """
    figure, axes = _figure()
    image = axes.imshow(values.detach().float().cpu().numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                        interpolation="nearest")
    axes.set_yticks(range(len(rows)), list(rows), fontsize=8)
    step = max(1, len(columns) // 12)
    axes.set_xticks(range(0, len(columns), step), list(columns)[::step], fontsize=8)
    colour_bar = figure.colorbar(image, ax=axes, fraction=0.05)
    colour_bar.set_label(colour_label, fontsize=8)
    return _finish(figure, axes, xlabel=xlabel, ylabel=ylabel, title=title, ylim=None, legend=False, grid=False)


def _figure():  # noqa: ANN202 - matplotlib objects
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0), dpi=100)
    return figure, figure.add_axes((0.1, 0.13, 0.56, 0.77))


def _colours() -> list[tuple[float, float, float]]:
    import matplotlib

    tab20 = matplotlib.colormaps["tab20"].colors  # dark shades first, then light; grey kept for chance
    return [tab20[i] for i in range(0, 20, 2) if i != 14] + [tab20[i] for i in range(1, 20, 2) if i != 15]


def _finish(  # noqa: ANN001 - matplotlib objects
    figure, axes, *, xlabel: str, ylabel: str, title: str, ylim: tuple[float, float] | None, legend: bool = True,
    grid: bool = True,
) -> Tensor:
    """Label the axes and render the figure to a ``(3, H, W)`` tensor in [0, 1] (no pyplot)."""
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    if grid:
        axes.grid(alpha=0.3)
    axes.set_title(title, fontsize=10)
    if legend:
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    return render(figure)


def render(figure) -> Tensor:  # noqa: ANN001 - a matplotlib Figure
    """A matplotlib figure as a ``(3, H, W)`` tensor in [0, 1] (Agg canvas, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    width, height = canvas.get_width_height()
    rgba = torch.frombuffer(bytearray(canvas.buffer_rgba()), dtype=torch.uint8).view(height, width, 4)
    return rgba[..., :3].permute(2, 0, 1).float().div(255.0)


def heatmap_overlay(images: Tensor, attributions: Tensor) -> Tensor:
    """``(k, 3, H, W)``: the images in grey under a "hot" colouring of ``|attribution|`` summed over
    channels, each map scaled to its 99th percentile.

    Example:
        >>> import torch
        >>> heatmap_overlay(torch.rand(2, 1, 8, 8), torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """
    heat = attributions.detach().float().cpu().abs().sum(dim=1)
    scale = torch.quantile(heat.flatten(1), 0.99, dim=1).clamp_min(1e-12).view(-1, 1, 1)
    heat = (heat / scale).clamp(0, 1)
    hot = torch.stack([(3 * heat).clamp(0, 1), (3 * heat - 1).clamp(0, 1), (3 * heat - 2).clamp(0, 1)], dim=1)
    grey = images.detach().float().cpu().clamp(0, 1).mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    return 0.4 * grey + 0.6 * hot


def adversarial_grid(display: Callable[[Tensor], Tensor], input_range: tuple[float, float], x: Tensor,
                     adversarial: dict[str, tuple[Tensor, Tensor]], targets: Tensor, predicted: Tensor,
                     title: str) -> Tensor:
    """``(3, H, W)``: the clean samples ``x``, then for each attack its adversarial samples and their
    perturbation (amplified), each labelled with its prediction; ``display`` draws samples of the
    perturbation space (whose values lie in ``input_range``) as images in ``[0, 1]``.

    Example:
        >>> x = torch.rand(2, 1, 4, 4)
        >>> grid = adversarial_grid(lambda v: v, (0.0, 1.0), x, {"fgsm": (x.flip(0), torch.tensor([1, 0]))},
        ...                         torch.tensor([0, 1]), torch.tensor([0, 1]), "epoch 0")
        >>> grid.shape[0]
        3
    """
    rows = {"clean": display(x)}
    labels = {"clean": predicted}
    correct = {"clean": predicted == targets}
    low, high = input_range
    for name, (x_adv, attacked) in adversarial.items():
        delta = x_adv - x
        scale = delta.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *([1] * (delta.ndim - 1)))
        rows[name] = display(x_adv)
        labels[name] = attacked
        correct[name] = attacked == targets
        # grey = unchanged, amplified to the full range of the space
        rows[f"{name} δ"] = display(low + (high - low) * (0.5 + 0.5 * delta / scale))
    return labelled_image_grid(
        rows, labels, reference="clean", correct=correct,
        title=f"{title}\nlabel: prediction (on red where the attack changed it); frame: green right, red wrong\n"
        "δ: the perturbation, amplified (grey: unchanged)",
    )


def gradcam_grid(images: Sequence[Tensor], maps: Tensor, names: Sequence[str], *, title: str) -> Tensor:
    """One row per input: the input, then each of its versions (``images``: ``(k, C, H, W)`` in
    ``[0, 1]`` each, the first the clean input) overlaid with its Grad-CAM map (``maps``:
    ``(len(images), k, h, w)``, resized to the images), the columns headed by ``names``.

    Example:
        >>> images = [torch.rand(2, 1, 8, 8) for _ in range(3)]
        >>> gradcam_grid(images, torch.rand(3, 2, 4, 4), ["clean", "fgsm", "gaussian"], title="t").shape[0]
        3
    """
    size = tuple(images[0].shape[-2:])
    resized = F.interpolate(maps.flatten(0, 1)[:, None].float(), size=size, mode="bilinear")
    resized = resized.view(len(images), -1, 1, *size)
    overlays = [heatmap_overlay(image, m) for image, m in zip(images, resized)]
    rows = {f"#{i}": torch.stack([images[0][i].expand(3, -1, -1), *(o[i] for o in overlays)]) for i in range(len(images[0]))}
    return labelled_image_grid(rows, columns=["input", *names], title=title)
