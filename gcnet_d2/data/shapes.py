"""Drawing of the synthetic shapes images: filled rectangles, ellipses and triangles on a
noisy, textured background, each painted through the rasterised mask of the very polygon its
annotation stores (so each polygon is exactly the object's visible mask). Objects never touch
(rejection sampling keeps a gap). :mod:`.synthetic` writes the images as a COCO dataset.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np
from pycocotools import mask as mask_util

__all__ = ["SHAPES", "polygon_area", "render_image"]

#: The shapes drawn, by category index.
SHAPES: tuple[str, ...] = ("rectangle", "ellipse", "triangle")

_MIN_OBJECT_SIZE = 20.0  # pixels, diameter of the smallest shapes
_MAX_OBJECT_FRACTION = 0.45  # largest shapes span this fraction of the shorter image side
_MAX_OBJECTS = 4
_PLACEMENT_TRIES = 100
_GAP = 3  # minimal distance in pixels between two objects
_BORDER = 2.0  # minimal distance in pixels between an object and the image border
_ELLIPSE_VERTICES = 32
_SUBPIXEL_BITS = 4  # polygon vertices are quantised to 1/16 pixel (short, exact JSON floats)
_CATEGORY_HUES = (0.0, 1.0 / 3.0, 2.0 / 3.0)  # red-ish, green-ish, blue-ish base hues
_HUE_JITTER = 0.07


def _quantize(points: np.ndarray) -> np.ndarray:
    """Snap coordinates to the sub-pixel grid so JSON and drawing use identical vertices."""
    scale = float(1 << _SUBPIXEL_BITS)
    return np.round(points * scale) / scale


def _shape_polygon(category: int, size: float, rng: np.random.Generator) -> np.ndarray:
    """Return an ``(N, 2)`` polygon of the given category centred on the origin.

    ``size`` bounds the shape's diameter (largest distance between two of its points), so a
    shape never spans more than ``size`` pixels in any direction, whatever its rotation.
    """
    angle = rng.uniform(0.0, np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if category == 0:  # rectangle
        aspect = rng.uniform(0.4, 1.0)
        half_w = size / 2.0 / np.hypot(1.0, aspect)  # the diagonal has length ``size``
        half_h = half_w * aspect
        pts = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif category == 1:  # ellipse
        semi_a = size / 2.0
        semi_b = semi_a * rng.uniform(0.45, 1.0)
        t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_VERTICES, endpoint=False)
        pts = np.stack([semi_a * np.cos(t), semi_b * np.sin(t)], axis=1)
    elif category == 2:  # triangle: jittered vertices on a circle, never degenerate
        t = np.array([0.0, 2.0, 4.0]) * np.pi / 3.0 + rng.uniform(-0.35, 0.35, size=3)
        radius = size / 2.0 * rng.uniform(0.8, 1.0, size=3)
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    else:
        raise ValueError(f"unknown category index {category}")
    return pts @ rot.T


def _rasterize(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Binary ``(H, W)`` uint8 mask of a polygon in COCO coordinates.

    Uses pycocotools' polygon rasteriser, the one behind both detectron2's training targets
    (``polygons_to_bitmask``) and COCO mask evaluation, so the drawn pixels are exactly the
    annotation's mask. (``cv2.fillPoly`` includes boundary pixels and paints about half a pixel
    outside the polygon, which costs several IoU points on 20 px objects.)
    """
    rles = mask_util.frPyObjects([poly.reshape(-1).tolist()], height, width)
    return mask_util.decode(mask_util.merge(rles))


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Low-saturation background with smooth colour blotches and medium-scale texture."""
    base = rng.uniform(70.0, 180.0) + rng.uniform(-20.0, 20.0, size=3)
    coarse = rng.uniform(-30.0, 30.0, size=(3, 4, 3)).astype(np.float32)
    fine = rng.uniform(-12.0, 12.0, size=(height // 12 + 1, width // 12 + 1, 3)).astype(np.float32)
    img = np.empty((height, width, 3), np.float32)
    img[:] = base
    img += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    img += cv2.resize(fine, (width, height), interpolation=cv2.INTER_LINEAR)
    return img


def _shape_color(category: int, rng: np.random.Generator) -> tuple[float, float, float]:
    """Saturated colour with a category-specific (but jittered) hue, in BGR order."""
    hue = (_CATEGORY_HUES[category] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return (b * 255.0, g * 255.0, r * 255.0)


def render_image(
    height: int, width: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image; return it (BGR uint8) and its objects as ``(category, polygon)``."""
    img = _background(height, width, rng)
    occupied = np.zeros((height, width), np.uint8)  # objects dilated by the gap
    kernel = np.ones((2 * _GAP + 1, 2 * _GAP + 1), np.uint8)
    max_size = max(_MIN_OBJECT_SIZE, _MAX_OBJECT_FRACTION * min(height, width))
    objects: list[tuple[int, np.ndarray]] = []
    for _ in range(int(rng.integers(1, _MAX_OBJECTS + 1))):
        category = int(rng.integers(len(SHAPES)))
        for _ in range(_PLACEMENT_TRIES):
            shape = _shape_polygon(category, rng.uniform(_MIN_OBJECT_SIZE, max_size), rng)
            lo, hi = shape.min(axis=0), shape.max(axis=0)
            x = rng.uniform(_BORDER - lo[0], width - _BORDER - hi[0])
            y = rng.uniform(_BORDER - lo[1], height - _BORDER - hi[1])
            poly = _quantize(shape + np.array([x, y]))
            mask = _rasterize(poly, height, width)
            if mask.any() and not (mask & occupied).any():
                break
        else:  # no free spot for this object; the image simply gets fewer objects
            continue
        occupied |= cv2.dilate(mask, kernel)
        img[mask.astype(bool)] = _shape_color(category, rng)
        objects.append((category, poly))
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), objects


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
