"""Synthetic aerial-like scenes for the offline demo and tests (fields, roads, buildings, water, trees).

Not a benchmark: it gives the demo real structure to super-resolve (edges, periodic crop rows,
fine canopy texture, flat water) without shipping or downloading any imagery. Everything is
drawn from one seeded numpy Generator, so a seed always gives the same pixels.
"""
import math

import cv2
import numpy as np

# BGR colours
_CROPS = [(60, 140, 95), (70, 160, 120), (55, 120, 150), (80, 170, 190), (70, 110, 85), (95, 150, 160)]
_SOIL = [(70, 100, 140), (90, 120, 160), (60, 85, 115)]
_ROOFS = [(60, 70, 170), (50, 60, 140), (150, 150, 150), (110, 115, 120), (200, 200, 205), (80, 85, 90)]


def _smooth(rng, h, w, cell):
    """Smooth random field in [0, 1] with features about `cell` pixels wide."""
    gh, gw = max(2, h // cell + 2), max(2, w // cell + 2)
    small = rng.random((gh, gw)).astype(np.float32)
    big = cv2.resize(small, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
    big = big[:h, :w]
    return (big - big.min()) / max(float(big.max() - big.min()), 1e-6)


def _parcels(rng, h, w, img):
    """Voronoi parcels, each a crop field (with rows), bare soil or meadow."""
    from scipy.spatial import cKDTree
    n = max(4, int(h * w / 2500))
    seeds = np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n)], 1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], 1))[1].reshape(h, w)
    grain = (_smooth(rng, h, w, 6), _smooth(rng, h, w, 4))
    for i in range(n):
        m = label == i
        if not m.any():
            continue
        kind = rng.random()
        if kind < 0.6:
            base = np.array(_CROPS[rng.integers(len(_CROPS))], np.float32)
            ang, period = rng.uniform(0, math.pi), rng.uniform(3, 7)
            rows = np.sin((xx[m] * math.cos(ang) + yy[m] * math.sin(ang)) * 2 * math.pi / period)
            img[m] = base[None] * (1 + 0.12 * rows[:, None])
        elif kind < 0.8:
            base = np.array(_SOIL[rng.integers(len(_SOIL))], np.float32)
            img[m] = base[None] * (0.9 + 0.2 * grain[0][m][:, None])
        else:
            base = np.array(_CROPS[rng.integers(len(_CROPS))], np.float32) * 0.9
            img[m] = base[None] * (0.85 + 0.3 * grain[1][m][:, None])
    # field boundaries: thin darker lines
    edge = cv2.Laplacian(label.astype(np.float32), cv2.CV_32F) != 0
    img[edge] *= 0.75


def _water(rng, h, w, img):
    """A river (thick smooth polyline) or a lake (thresholded smooth noise)."""
    mask = np.zeros((h, w), np.uint8)
    if rng.random() < 0.5:
        x = rng.uniform(0, w)
        pts = []
        for y in np.linspace(-10, h + 10, 12):
            x += rng.normal(0, w / 12)
            pts.append((int(x), int(y)))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 1, thickness=int(rng.uniform(6, 16)))
    else:
        mask[_smooth(rng, h, w, min(max(h, w) // 3, 120)) > 0.8] = 1
    m = mask.astype(bool)
    depth = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 4)
    col = np.array([120, 95, 40], np.float32)[None, None] * (1.1 - 0.35 * depth[..., None])
    col += 6 * _smooth(rng, h, w, 3)[..., None]
    img[m] = col[m]
    return m


def _roads(rng, h, w, img):
    """1-3 straight-ish roads with a dashed centre line; returns road segments for building placement."""
    roads = []
    for _ in range(int(rng.integers(1, 4)) + int(math.sqrt(h * w) / 250)):
        if rng.random() < 0.5:
            p0, p1 = (int(rng.uniform(0, w)), -5), (int(rng.uniform(0, w)), h + 5)
        else:
            p0, p1 = (-5, int(rng.uniform(0, h))), (w + 5, int(rng.uniform(0, h)))
        width = int(rng.integers(3, 8))
        shade = float(rng.uniform(95, 130))
        cv2.line(img, p0, p1, (shade * 0.9, shade * 0.8, shade * 0.75), width + 2, cv2.LINE_AA)
        cv2.line(img, p0, p1, (shade, shade, shade * 1.02), width, cv2.LINE_AA)
        if width >= 5:
            n = int(math.hypot(p1[0] - p0[0], p1[1] - p0[1]) // 8)
            for k in range(0, n, 2):
                a = (p0[0] + (p1[0] - p0[0]) * k // n, p0[1] + (p1[1] - p0[1]) * k // n)
                b = (p0[0] + (p1[0] - p0[0]) * (k + 1) // n, p0[1] + (p1[1] - p0[1]) * (k + 1) // n)
                cv2.line(img, a, b, (225, 225, 225), 1)
        roads.append((p0, p1, width))
    return roads


def _buildings(rng, h, w, img, roads, water):
    """Rectangular houses along the roads, aligned with them, with a gable split and a cast shadow."""
    for (x0, y0), (x1, y1), width in roads:
        length = math.hypot(x1 - x0, y1 - y0)
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        ang = math.degrees(math.atan2(uy, ux))
        for t in np.arange(rng.uniform(5, 15), length, rng.uniform(14, 22)):
            if rng.random() < 0.3:
                continue
            side = 1 if rng.random() < 0.5 else -1
            bw, bh = rng.uniform(7, 14), rng.uniform(6, 11)
            off = width / 2 + 3 + bh / 2
            cx, cy = x0 + ux * t - uy * off * side, y0 + uy * t + ux * off * side
            if not (0 <= cx < w and 0 <= cy < h) or water[int(cy), int(cx)]:
                continue
            box = cv2.boxPoints(((cx, cy), (bw, bh), ang))
            cv2.fillPoly(img, [np.round(box + 2.5).astype(np.int32)], (35, 40, 40), cv2.LINE_AA)  # shadow
            roof = np.array(_ROOFS[rng.integers(len(_ROOFS))], np.float64)
            cv2.fillPoly(img, [np.round(box).astype(np.int32)], tuple(roof), cv2.LINE_AA)
            half = cv2.boxPoints(((cx - uy * bh / 4, cy + ux * bh / 4), (bw, bh / 2), ang))
            cv2.fillPoly(img, [np.round(half).astype(np.int32)], tuple(roof * 0.78), cv2.LINE_AA)


def _trees(rng, h, w, img, water):
    """Clusters of round canopies with a lit side, in the smooth 'forest' regions."""
    forest = _smooth(rng, h, w, max(16, min(h, w) // 3))
    n = int(h * w / 60)
    ys, xs = rng.uniform(0, h, n), rng.uniform(0, w, n)
    for y, x in zip(ys, xs):
        if forest[int(y), int(x)] < 0.62 or water[int(y), int(x)]:
            continue
        r = rng.uniform(1.8, 4.0)
        g = rng.uniform(0.8, 1.15)
        cv2.circle(img, (int(x + 1), int(y + 1)), int(round(r)), (25, 45, 30), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x), int(y)), int(round(r)), (40 * g, 95 * g, 55 * g), -1, cv2.LINE_AA)
        cv2.circle(img, (int(x - r / 3), int(y - r / 3)), max(1, int(r / 2)), (55 * g, 125 * g, 75 * g), -1,
                   cv2.LINE_AA)


def aerial_scene(height, width, seed):
    """One synthetic aerial-like scene, ``height x width x 3`` uint8 BGR, fully determined by `seed`."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    _parcels(rng, height, width, img)
    water = _water(rng, height, width, img) if rng.random() < 0.6 else np.zeros((height, width), bool)
    roads = _roads(rng, height, width, img)
    _trees(rng, height, width, img, water)
    _buildings(rng, height, width, img, roads, water)
    img = cv2.GaussianBlur(img, (0, 0), 0.6)  # optics: soften the drawn edges a little
    img += rng.normal(0, 3.0, img.shape).astype(np.float32)  # sensor noise
    return np.clip(np.round(img), 0, 255).astype(np.uint8)
