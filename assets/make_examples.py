"""Draws the example images in assets/examples/ (run once; the PNGs are committed). CC0."""

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "examples"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    shapes = {
        "red_circle": ("ellipse", (220, 40, 40)), "blue_square": ("rectangle", (40, 70, 200)),
        "green_triangle": ("triangle", (40, 160, 60)), "yellow_star_wide": ("star", (230, 200, 40)),
    }
    for name, (shape, colour) in shapes.items():
        width = 480 if "wide" in name else 320
        image = Image.new("RGB", (width, 320), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        cx, cy, r = width // 2, 160, 110
        if shape == "ellipse":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif shape == "rectangle":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        else:
            import math

            points = [(cx + (r if i % 2 == 0 else r / 2.5) * math.sin(i * math.pi / 5),
                       cy - (r if i % 2 == 0 else r / 2.5) * math.cos(i * math.pi / 5)) for i in range(10)]
            draw.polygon(points, fill=colour)
        image.save(OUT / f"{name}.png", optimize=True)


if __name__ == "__main__":
    main()
