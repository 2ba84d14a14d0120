"""Named colours: the palette the synthetic world paints with and the names detectors give to what they see."""

from __future__ import annotations

import colorsys

# name -> RGB. Hues far apart so a hue test names them without confusion.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (240, 140, 30),
    "yellow": (235, 220, 40),
    "green": (40, 180, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 230),
    "purple": (150, 60, 210),
    "pink": (240, 110, 200),
}
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
_HUES = {name: colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))[0] for name, rgb in PALETTE.items()}


def color_name(rgb: tuple[float, float, float]) -> str | None:
    """The palette name nearest in hue to an RGB colour (0..255), or None for greys (too little saturation)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) / 255.0 for c in rgb))
    if s < 0.35 or v < 0.25:
        return None
    return min(_HUES, key=lambda n: min(abs(h - _HUES[n]), 1 - abs(h - _HUES[n])))
