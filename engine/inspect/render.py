"""Pictures of the inspection results (PNG-ready PIL images), for the app and the CLI alike.

Every picture starts with its first image panel at (0, 0), drawn at `display_scale` of the resized image,
with titles and colour bars below it: `patch_at` maps a click on that panel back to a patch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..model.preprocess import PatchGrid
from ..model.text import short_text
from .attention import AttentionMap, LayerAttention
from .dense import DensePCA, PatchSimilarity
from .grid import GridView
from .maps import SimilarityMaps
from .trace import ImageTrace

PANEL_LONG_SIDE = 448  # pixels on the long side of a main panel
SMALL_LONG_SIDE = 160  # per-head panels
GAP = 12
BAR_HEIGHT = 12
CAPTION_CHARACTERS = 160  # a query drawn under its map: at most about three lines
SEQUENTIAL, DIVERGING = "magma", "coolwarm"


def _font(size: int = 14) -> ImageFont.ImageFont:
    """DejaVu Sans from matplotlib's own data (has ×, →, –), else Pillow's default font."""
    from pathlib import Path

    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default(size=size)


def _wrap(draw: ImageDraw.ImageDraw, line: str, font, width: int) -> list[str]:
    """`line` broken at spaces into pieces no wider than `width` (a long word is cut)."""
    pieces, current = [], ""
    for word in line.split(" "):
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            pieces.append(current)
            candidate = word
        current = candidate
    pieces.append(current)
    return [piece if draw.textlength(piece, font=font) <= width else piece[: max(1, width // 8)] + "…"
            for piece in pieces]


def display_scale(grid: PatchGrid, long_side: int = PANEL_LONG_SIDE) -> float:
    return long_side / max(grid.resized_width, grid.resized_height)


def panel_size(grid: PatchGrid, long_side: int = PANEL_LONG_SIDE) -> tuple[int, int]:
    """(width, height) of an image panel; at least one pixel per patch."""
    scale = display_scale(grid, long_side)
    return max(grid.cols, round(grid.resized_width * scale)), max(grid.rows, round(grid.resized_height * scale))


def patch_at(grid: PatchGrid, x: float, y: float, long_side: int = PANEL_LONG_SIDE) -> tuple[int, int] | None:
    """(row, col) under pixel (x, y) of a picture's first panel, or None outside it."""
    width, height = panel_size(grid, long_side)
    if not (0 <= x < width and 0 <= y < height):
        return None
    return int(y * grid.rows / height), int(x * grid.cols / width)


def _colours(values: np.ndarray, low: float, high: float, cmap: str) -> np.ndarray:
    """(..., 3) uint8 colours of `values` on a matplotlib colour map between low and high."""
    from matplotlib import colormaps

    scaled = np.clip((values - low) / (high - low if high > low else 1.0), 0, 1)
    return (colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)


def _range(values: np.ndarray, signed: bool) -> tuple[float, float]:
    if signed:
        top = float(np.abs(values).max()) or 1.0
        return -top, top
    return float(values.min()), float(values.max())


def _base(trace: ImageTrace, long_side: int) -> Image.Image:
    return trace.resized().resize(panel_size(trace.grid, long_side), Image.Resampling.BILINEAR)


def _upscaled(cells: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A (rows, cols, 3) uint8 array drawn as blocks, one per patch."""
    return Image.fromarray(cells).resize(size, Image.Resampling.NEAREST)


def _mark(image: Image.Image, grid: PatchGrid, row: int, col: int) -> Image.Image:
    width, height = image.size
    box = (col * width / grid.cols, row * height / grid.rows, (col + 1) * width / grid.cols - 1,
           (row + 1) * height / grid.rows - 1)
    ImageDraw.Draw(image).rectangle(box, outline=(0, 255, 0), width=2)
    return image


def _draw_grid(image: Image.Image, grid: PatchGrid, colour=(255, 255, 255)) -> Image.Image:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for col in range(1, grid.cols):
        x = round(col * width / grid.cols)
        draw.line([(x, 0), (x, height)], fill=colour, width=1)
    for row in range(1, grid.rows):
        y = round(row * height / grid.rows)
        draw.line([(0, y), (width, y)], fill=colour, width=1)
    return image


def _colour_bar(width: int, low: float, high: float, cmap: str) -> Image.Image:
    strip = _colours(np.linspace(low, high, max(width, 2))[None, :].repeat(BAR_HEIGHT, 0), low, high, cmap)
    bar = Image.new("RGB", (width, BAR_HEIGHT + 18), "white")
    bar.paste(Image.fromarray(strip), (0, 0))
    draw, font = ImageDraw.Draw(bar), _font(12)
    draw.text((0, BAR_HEIGHT + 2), f"{low:.3g}", fill="black", font=font)
    label = f"{high:.3g}"
    draw.text((width - draw.textlength(label, font=font), BAR_HEIGHT + 2), label, fill="black", font=font)
    return bar


def _with_caption(image: Image.Image, lines: list[str], bar: Image.Image | None = None) -> Image.Image:
    """`image` on top, then the colour bar, then the caption lines."""
    font = _font(13)
    line_height = 17
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [piece for line in lines for piece in _wrap(measure, line, font, image.width)]
    height = image.height + (bar.height + 4 if bar else 0) + 6 + line_height * len(wrapped)
    out = Image.new("RGB", (image.width, height), "white")
    out.paste(image, (0, 0))
    y = image.height + 4
    if bar:
        out.paste(bar, (0, y))
        y += bar.height
    draw = ImageDraw.Draw(out)
    for line in wrapped:
        draw.text((0, y + 2), line, fill="black", font=font)
        y += line_height
    return out


def side_by_side(panels: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Panels left to right (wrapping after `columns`), top-aligned, the first at (0, 0)."""
    columns = columns or len(panels)
    rows = [panels[i:i + columns] for i in range(0, len(panels), columns)]
    width = max(sum(p.width for p in row) + GAP * (len(row) - 1) for row in rows)
    height = sum(max(p.height for p in row) for row in rows) + GAP * (len(rows) - 1)
    out = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        x = 0
        for panel in row:
            out.paste(panel, (x, y))
            x += panel.width + GAP
        y += max(p.height for p in row) + GAP
    return out


def heatmap_panel(trace: ImageTrace, values: np.ndarray, caption: list[str], opacity: float = 0.6,
                  signed: bool = False, value_range: tuple[float, float] | None = None,
                  long_side: int = PANEL_LONG_SIDE, mark: tuple[int, int] | None = None) -> Image.Image:
    """`values` (rows, cols) over the resized image, with a colour bar and a caption below."""
    low, high = value_range or _range(values, signed)
    cmap = DIVERGING if signed else SEQUENTIAL
    base = _base(trace, long_side)
    heat = _upscaled(_colours(values, low, high, cmap), base.size)
    image = Image.blend(base, heat, float(np.clip(opacity, 0, 1)))
    if mark is not None:
        _mark(image, trace.grid, *mark)
    return _with_caption(image, caption, _colour_bar(image.width, low, high, cmap))


def similarity_picture(result: SimilarityMaps, opacity: float = 0.6) -> Image.Image:
    """One panel per query on one shared colour scale; each captioned with its maximum and image logit."""
    signed = result.method == "gradient"
    shared = _range(result.maps, signed)
    unit = "logit" if result.method == "value" else "∂logit/∂x·x"
    panels = [heatmap_panel(result.trace, values, [short_text(query, CAPTION_CHARACTERS),
                                                   f"max {top:.3g} ({unit}) · image logit {logit:.2f}"],
                            opacity, signed, shared)
              for query, values, top, logit in zip(result.queries, result.maps, result.maxima, result.image_logits)]
    return side_by_side(panels, columns=4)


def attention_picture(result: AttentionMap, opacity: float = 0.6) -> Image.Image:
    """The head-averaged probe attention, then each head small."""
    rows, cols = result.trace.shape
    uniform = 1.0 / (rows * cols)
    main = heatmap_panel(result.trace, result.mean, ["pooling-head attention, mean over heads",
                                                     f"max {result.mean.max():.3g} (uniform {uniform:.3g})"], opacity)
    heads = [heatmap_panel(result.trace, weights, [f"head {h}: max {weights.max():.2g}"], opacity,
                           long_side=SMALL_LONG_SIDE) for h, weights in enumerate(result.weights)]
    return side_by_side([main, side_by_side(heads, columns=4)])


def layer_attention_picture(result: LayerAttention, opacity: float = 0.6) -> Image.Image:
    caption = [f"layer {result.layer}, head {result.head}: from patch (row {result.row}, col {result.col})",
               f"max {result.weights.max():.3g}"]
    return heatmap_panel(result.trace, result.weights, caption, opacity, mark=(result.row, result.col))


def pca_picture(result: DensePCA) -> Image.Image:
    """Each image beside its patches coloured by the first three principal components."""
    variance = ", ".join(f"{v:.0%}" for v in result.explained_variance)
    fit = "one PCA over all images" if result.joint and len(result.traces) > 1 else "PCA of this image"
    panels = []
    for trace, colours in zip(result.traces, result.colours):
        size = panel_size(trace.grid)
        pca = _upscaled((colours * 255).astype(np.uint8), size)
        panels.append(_with_caption(pca, [f"{trace.grid.rows}×{trace.grid.cols} patches", f"{fit}; variance held: {variance}"]))
        panels.append(_with_caption(_base(trace, PANEL_LONG_SIDE), ["the image as the model sees it"]))
    return side_by_side(panels)


def patch_similarity_picture(result: PatchSimilarity, opacity: float = 0.6) -> Image.Image:
    """Cosine similarity of the chosen patch (green box) to every patch, here and in the second image."""
    panels = [heatmap_panel(result.trace, result.similarity,
                            [f"patch (row {result.row}, col {result.col}): cosine to every patch"], opacity,
                            signed=True, value_range=(-1, 1), mark=(result.row, result.col))]
    if result.second is not None:
        panels.append(heatmap_panel(result.second, result.second_similarity,
                                    ["the same patch against the second image"], opacity, signed=True,
                                    value_range=(-1, 1)))
    return side_by_side(panels)


def _grid_panel(image: Image.Image, grid: PatchGrid, caption: list[str]) -> Image.Image:
    width, height = panel_size(grid)
    resized = image.resize((grid.resized_width, grid.resized_height), Image.Resampling.BILINEAR)
    return _with_caption(_draw_grid(resized.resize((width, height), Image.Resampling.BILINEAR), grid), caption)


def grid_picture(view: GridView) -> Image.Image:
    """The model's patch grid over its resized image, beside the squashed square of a fixed-resolution model."""
    grid = view.grid
    own = [f"{'NaFlex' if view.arch == 'naflex' else 'fixed'}: {grid.resized_width}×{grid.resized_height} px, "
           f"{grid.rows}×{grid.cols} patches",
           f"{grid.num_patches} real + {grid.num_padding} padding = {grid.sequence_length}"]
    panels = [_grid_panel(view.image, grid, own)]
    if view.arch == "naflex":
        square = view.squashed
        panels.append(_grid_panel(view.image, square, [
            f"fixed resolution: squashed to {square.resized_width}×{square.resized_height} px",
            f"{square.rows}×{square.cols} patches, aspect ratio lost"]))
    return side_by_side(panels)


def positions_picture(view: GridView) -> Image.Image:
    """The learned position grid's first three principal components, as trained and stretched to this image."""
    learned, stretched = view.positions.learned, view.positions.stretched
    side = learned.shape[0]
    cell = max(1, PANEL_LONG_SIDE // 2 // side)
    before = _upscaled((learned * 255).astype(np.uint8), (side * cell, side * cell))
    rows, cols = stretched.shape[:2]
    scale = PANEL_LONG_SIDE / 2 / max(rows, cols)
    after = _upscaled((stretched * 255).astype(np.uint8), (max(cols, round(cols * scale)), max(rows, round(rows * scale))))
    norms = view.positions.norms
    norm_cells = _colours(norms, float(norms.min()), float(norms.max()), SEQUENTIAL)
    return side_by_side([
        _with_caption(before, [f"learned {side}×{side} position grid (PCA → RGB)"]),
        _with_caption(after, [f"stretched to {rows}×{cols} (bilinear, antialiased)"]),
        _with_caption(_upscaled(norm_cells, before.size), ["norm of each learned position",
                                                           f"{norms.min():.3g} – {norms.max():.3g}"],
                      _colour_bar(before.width, float(norms.min()), float(norms.max()), SEQUENTIAL)),
    ])
