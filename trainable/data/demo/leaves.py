"""Drawing for the synthetic demo dataset: one leaf image per call, from numpy only.

A leaf is an implicit shape in its own frame (x along the midrib, base -1 to tip +1): `f` is 1
at the centre, 0 on the edge, negative outside. Crops differ in outline, colour and veins;
diseases paint patterns (spots, rings, pustules, streaks, blotches, powder, margins, mottling,
stipple, yellowing) in the leaf frame; severity scales how much is painted. Pose, lighting,
background, colour cast and noise vary per image so the task is learnable but not trivial.
Everything comes from the rng passed in, so an image is a pure function of its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from trainable.data import taxonomy

SUPERSAMPLE = 1

# Base leaf colour (RGB 0..1) and outline name per crop, in taxonomy.CROPS order.
CROP_LOOK = {
    "apple": ((0.30, 0.52, 0.20), "ovate"),
    "cherry": ((0.18, 0.42, 0.28), "elliptic"),
    "corn": ((0.46, 0.62, 0.20), "strap"),
    "grape": ((0.36, 0.48, 0.14), "palmate"),
    "citrus": ((0.10, 0.32, 0.10), "citrus"),
    "peach": ((0.42, 0.58, 0.22), "lanceolate"),
    "pepper": ((0.16, 0.54, 0.16), "heart"),
    "potato": ((0.28, 0.44, 0.20), "pinnate"),
    "strawberry": ((0.20, 0.38, 0.14), "trifoliate"),
    "tomato": ((0.32, 0.46, 0.30), "compound"),
}

C = {  # paint colours
    "brown": (0.45, 0.28, 0.12), "dark": (0.22, 0.14, 0.07), "black": (0.09, 0.07, 0.06),
    "tan": (0.72, 0.62, 0.40), "yellow": (0.86, 0.80, 0.26), "orange": (0.93, 0.55, 0.12),
    "rust": (0.72, 0.34, 0.10), "white": (0.93, 0.93, 0.90), "gray": (0.56, 0.55, 0.50),
    "purple": (0.42, 0.18, 0.32), "olive": (0.34, 0.33, 0.12), "red": (0.66, 0.16, 0.10),
    "pale": (0.62, 0.78, 0.36), "bronze": (0.58, 0.45, 0.22),
}


@dataclass
class Leaf:
    X: np.ndarray          # leaf-frame coordinates of every (supersampled) pixel
    Y: np.ndarray
    f: np.ndarray          # inside-ness: 1 centre, 0 edge, < 0 outside
    veins: np.ndarray      # 0..1 vein intensity
    px_per_unit: float     # pixels per leaf-frame unit
    rgb: np.ndarray        # H x W x 3 leaf colour, painted in place
    rng: np.random.Generator

    def paint(self, alpha: np.ndarray, colour, where=np.s_[:, :]) -> None:
        a = np.clip(alpha, 0.0, 1.0)[..., None]
        self.rgb[where] = self.rgb[where] * (1 - a) + np.asarray(colour, dtype=np.float32) * a


def _smooth(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _ellipse(X, Y, cx, cy, angle, length, width) -> np.ndarray:
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = (X - cx) * ca + (Y - cy) * sa, -(X - cx) * sa + (Y - cy) * ca
    return 1 - np.sqrt((u / length) ** 2 + (v / width) ** 2), u, v


def _profile(X, Y, width) -> tuple[np.ndarray, np.ndarray]:
    """Simple leaf: half-width profile along x; veins = midrib + pinnate laterals."""
    w = np.maximum(width, 1e-3)
    f = np.where(np.abs(X) < 1, 1 - np.abs(Y) / w, -1.0)
    veins = np.exp(-(Y / 0.018) ** 2) + 0.5 * (np.abs(np.sin(9 * (X - 0.7 * np.abs(Y)))) > 0.96)
    return f, veins


def _leaflets(X, Y, specs, wave=0.0, stalk_end=0.6) -> tuple[np.ndarray, np.ndarray]:
    """Compound leaf: union of elliptic leaflets (cx, cy, angle, length, width) on a stalk."""
    f = np.where((X > -1) & (X < stalk_end), 1 - np.abs(Y) / 0.035, -1.0).astype(np.float32)
    veins = np.exp(-(Y / 0.015) ** 2) * (X < 0.6)  # rachis
    for cx, cy, angle, length, width in specs:
        g, u, v = _ellipse(X, Y, cx, cy, angle, length, width)
        if wave:
            g = g + wave * np.sin(np.arctan2(v, u) * 9)
        veins = np.maximum(veins, np.exp(-(v / 0.012) ** 2) * (g > 0))
        f = np.maximum(f, g)
    return f, veins


def _shape(outline: str, X, Y) -> tuple[np.ndarray, np.ndarray]:
    x = np.clip(X, -1, 1)
    r = np.sqrt(np.clip(1 - x * x, 0, 1))
    if outline == "ovate":
        return _profile(X, Y, 0.56 * r * (1 - 0.15 * x) * (1 + 0.03 * np.sin(45 * x)))
    if outline == "elliptic":
        return _profile(X, Y, 0.40 * r ** 1.2 * (1 + 0.04 * np.sin(70 * x)))
    if outline == "strap":
        return _profile(X, Y, 0.13 * np.minimum(1, (1 - x) * 2.5) * r ** 0.15)
    if outline == "lanceolate":
        return _profile(X, Y, 0.26 * r ** 1.6 * (1 - 0.25 * x))
    if outline == "heart":
        return _profile(X, Y, 0.55 * r ** 0.9 * (1 - 0.4 * x) * np.clip(1.2 + x, 0, 1) ** 0.3)
    if outline == "citrus":
        blade, veins = _profile(X, Y, 0.46 * r)
        wing, _, _ = _ellipse(X, Y, -0.95, 0, 0, 0.22, 0.09)
        return np.maximum(blade, wing), veins
    if outline == "palmate":
        rho, phi = np.hypot(X, Y * 1.05), np.arctan2(Y, X)
        radius = 0.78 * (0.78 + 0.22 * np.cos(5 * phi)) * (1 - 0.35 * np.exp(-((np.abs(phi) - np.pi) / 0.35) ** 2))
        radius = radius * (1 + 0.025 * np.sin(40 * phi))
        veins = sum(np.exp(-((phi - a) * rho / 0.02) ** 2) for a in (0, 1.26, -1.26, 2.5, -2.5))
        return 1 - rho / radius, np.minimum(veins, 1)
    if outline == "trifoliate":
        specs = [(0.32 * np.cos(a), 0.32 * np.sin(a), a, 0.42, 0.30) for a in (-1.0, 0.0, 1.0)]
        return _leaflets(X, Y, specs, wave=0.04, stalk_end=0.0)
    if outline == "pinnate":  # potato: big terminal leaflet + two lateral pairs
        specs = [(0.55, 0, 0, 0.42, 0.26)] + [(px, s * 0.30, s * 1.1, 0.30, 0.16)
                                              for px in (-0.45, 0.05) for s in (-1, 1)]
        return _leaflets(X, Y, specs)
    if outline == "compound":  # tomato: lobed leaflets
        specs = [(0.58, 0, 0, 0.40, 0.24)] + [(px, s * 0.32, s * 1.2, 0.32, 0.17)
                                              for px in (-0.45, 0.1) for s in (-1, 1)]
        return _leaflets(X, Y, specs, wave=0.08)
    raise ValueError(outline)


# ---------------------------------------------------------------- disease paint primitives
def _field(leaf: Leaf, freq: float, aniso: float = 1.0, terms: int = 6) -> np.ndarray:
    """Smooth random field in [0, 1] in the leaf frame (sum of random sinusoids)."""
    rng = leaf.rng
    total = np.zeros(leaf.X.shape, dtype=np.float32)
    for _ in range(terms):
        angle = rng.uniform(0, np.pi)
        k = freq * rng.uniform(0.6, 1.4)
        total += np.sin(k * (np.cos(angle) * leaf.X / aniso + np.sin(angle) * leaf.Y) + rng.uniform(0, 2 * np.pi))
    return (total / np.sqrt(terms * 2)) * 0.5 + 0.5


def spots(leaf: Leaf, n: int, radius: float, colour, *, rim=None, halo=None, rings: int = 0,
          stretch: float = 1.0, ragged: float = 0.15, opacity: float = 1.0, core=None) -> None:
    """n roundish lesions (stretched along the midrib by `stretch`), optional rim, halo, rings."""
    inside = np.flatnonzero(leaf.f.ravel() > 0.12)
    if n <= 0 or inside.size == 0:
        return
    rng, width = leaf.rng, leaf.f.shape[1]
    for pixel in rng.choice(inside, size=n):
        row, col = divmod(int(pixel), width)
        cx, cy = leaf.X.flat[pixel], leaf.Y.flat[pixel]
        r = radius * rng.uniform(0.7, 1.3)
        reach = int(r * stretch * leaf.px_per_unit * (1.9 if halo else 1.3)) + 2
        win = np.s_[max(row - reach, 0):row + reach + 1, max(col - reach, 0):col + reach + 1]
        dx, dy = (leaf.X[win] - cx) / stretch, leaf.Y[win] - cy
        d = np.hypot(dx, dy) / r
        d = d * (1 + ragged * np.sin(5 * np.arctan2(dy, dx) + rng.uniform(0, 6.3)))
        on_leaf = leaf.f[win] > 0
        edge = 0.5 / max(r * leaf.px_per_unit, 0.5)
        if halo is not None:
            leaf.paint(0.6 * _smooth((1.7 - d) / 0.5) * on_leaf, halo, win)
        leaf.paint(opacity * _smooth((1 - d) / edge) * on_leaf, colour, win)
        if rings:
            band = (np.cos(d * rings * 2 * np.pi) > 0.3) & (d < 1)
            leaf.paint(0.55 * band * on_leaf, C["dark"], win)
        if rim is not None:
            leaf.paint(_smooth(1 - np.abs(d - 0.92) / 0.16) * on_leaf, rim, win)
        if core is not None:
            leaf.paint(_smooth((0.35 - d) / 0.15) * on_leaf, core, win)


def blotches(leaf: Leaf, coverage: float, colour, *, freq: float = 9.0, aniso: float = 1.0,
             soft: float = 0.08, opacity: float = 1.0, side: float = 0.0) -> None:
    """Patches covering about `coverage` of the leaf; side > 0 biases them to one half (asymmetry)."""
    field = _field(leaf, freq, aniso) + side * np.tanh(3 * leaf.Y)
    blade = leaf.f > 0
    if not blade.any() or coverage <= 0:
        return
    threshold = np.quantile(field[blade], 1 - min(coverage, 0.98))
    leaf.paint(opacity * _smooth((field - threshold) / soft + 0.5), colour)


def margin(leaf: Leaf, depth: float, colour, *, ragged: float = 0.12, opacity: float = 1.0) -> None:
    """Necrosis / chlorosis creeping in from the leaf edge to `depth` of the half-width."""
    reach = depth + ragged * (_field(leaf, 7.0) - 0.5) * 2
    leaf.paint(opacity * _smooth((reach - leaf.f) / 0.06 + 0.5), colour)


def stipple(leaf: Leaf, density: float, colour, *, cluster: float = 0.6) -> None:
    """Pixel-fine speckles (mite feeding), denser where a smooth field is high."""
    weight = (1 - cluster) + cluster * 2 * _field(leaf, 6.0)
    dots = leaf.rng.random(leaf.f.shape) < density * weight
    leaf.paint(0.85 * dots, colour)


def interveinal(leaf: Leaf, amount: float, colour, edge_colour) -> None:
    """'Tiger stripes': discoloured bands between the veins with darker borders."""
    stripes = np.abs(np.sin(9 * (leaf.X - 0.7 * np.abs(leaf.Y)) + 1.5))
    band = _smooth((stripes - (1 - amount)) / 0.12) * (_field(leaf, 5.0) > 0.35)
    leaf.paint(0.9 * band, colour)
    leaf.paint(0.7 * band * (stripes < (1 - amount) + 0.12), edge_colour)


def _n(low: float, high: float, s: float) -> int:
    return int(round(low + (high - low) * s))


# disease -> painter(leaf, s); s in (0, 1] is the severity level (general 0.05-0.35, serious 0.65-1)
DISEASES = {
    ("apple", "scab"): lambda lf, s: blotches(lf, 0.05 + 0.3 * s, (0.26, 0.27, 0.10), freq=16, soft=0.06),
    ("apple", "frogeye spot"): lambda lf, s: spots(lf, _n(3, 10, s), 0.07, C["tan"], rim=C["purple"]),
    ("apple", "cedar rust"): lambda lf, s: spots(lf, _n(3, 14, s), 0.05 + 0.03 * s, C["orange"],
                                                 rim=C["red"], core=C["dark"]),
    ("cherry", "powdery mildew"): lambda lf, s: blotches(lf, 0.08 + 0.5 * s, C["white"], soft=0.25, opacity=0.7),
    ("corn", "cercospora leaf spot"): lambda lf, s: spots(lf, _n(3, 14, s), 0.045, C["gray"], stretch=4,
                                                          rim=C["brown"], ragged=0.05),
    ("corn", "puccinia polysora"): lambda lf, s: spots(lf, _n(10, 50, s), 0.035, C["orange"], ragged=0.3),
    ("corn", "curvularia leaf spot"): lambda lf, s: spots(lf, _n(4, 18, s), 0.045, C["tan"], halo=C["yellow"]),
    ("corn", "dwarf mosaic virus"): lambda lf, s: blotches(lf, 0.15 + 0.4 * s, C["pale"], freq=10, aniso=5,
                                                           opacity=0.8),
    ("grape", "black rot"): lambda lf, s: spots(lf, _n(3, 10, s), 0.06 + 0.04 * s, C["brown"], rim=C["black"],
                                                core=C["black"]),
    ("grape", "black measles"): lambda lf, s: interveinal(lf, 0.15 + 0.55 * s, C["yellow"], C["red"]),
    ("grape", "leaf blight"): lambda lf, s: (blotches(lf, 0.06 + 0.35 * s, C["dark"], freq=13, soft=0.03),
                                             margin(lf, 0.05 + 0.25 * s, C["brown"])),
    ("citrus", "greening"): lambda lf, s: blotches(lf, 0.15 + 0.45 * s, C["yellow"], freq=8, side=0.5,
                                                   opacity=0.85),
    ("peach", "bacterial spot"): lambda lf, s: spots(lf, _n(6, 25, s), 0.04, C["black"], halo=C["yellow"],
                                                     ragged=0.35),
    ("pepper", "scab"): lambda lf, s: spots(lf, _n(4, 16, s), 0.045, C["tan"], rim=C["dark"], ragged=0.45),
    ("potato", "early blight"): lambda lf, s: spots(lf, _n(3, 11, s), 0.06 + 0.04 * s, C["brown"], rings=3,
                                                    halo=C["yellow"]),
    ("potato", "late blight"): lambda lf, s: margin(lf, 0.15 + 0.5 * s, (0.20, 0.22, 0.14), ragged=0.2),
    ("strawberry", "scorch"): lambda lf, s: (spots(lf, _n(6, 25, s), 0.045, C["purple"]),
                                             margin(lf, 0.35 * s, C["brown"])),
    ("tomato", "powdery mildew"): lambda lf, s: spots(lf, _n(4, 16, s), 0.08, C["white"], opacity=0.6,
                                                      ragged=0.4),
    ("tomato", "bacterial spot"): lambda lf, s: spots(lf, _n(6, 28, s), 0.035, C["black"], ragged=0.3),
    ("tomato", "early blight"): lambda lf, s: spots(lf, _n(2, 8, s), 0.08 + 0.04 * s, C["brown"], rings=3,
                                                    halo=C["yellow"]),
    ("tomato", "late blight"): lambda lf, s: blotches(lf, 0.1 + 0.45 * s, (0.30, 0.28, 0.22), freq=7, soft=0.05),
    ("tomato", "leaf mold"): lambda lf, s: blotches(lf, 0.1 + 0.4 * s, (0.74, 0.72, 0.30), freq=11, soft=0.2),
    ("tomato", "target spot"): lambda lf, s: spots(lf, _n(2, 7, s), 0.09, C["tan"], rings=4, rim=C["dark"]),
    ("tomato", "septoria leaf spot"): lambda lf, s: spots(lf, _n(6, 24, s), 0.045, C["gray"], rim=C["dark"]),
    ("tomato", "spider mite"): lambda lf, s: (stipple(lf, 0.03 + 0.15 * s, C["yellow"]),
                                              blotches(lf, 0.15 + 0.5 * s, C["bronze"], soft=0.3, opacity=0.6)),
    ("tomato", "yellow leaf curl virus"): lambda lf, s: margin(lf, 0.2 + 0.45 * s, C["yellow"], opacity=0.85),
    ("tomato", "mosaic virus"): lambda lf, s: blotches(lf, 0.35, C["pale"], freq=9 + 8 * s, opacity=0.5 + 0.4 * s),
}
assert {(c.crop, c.disease) for c in taxonomy.CLASSES if c.disease != "healthy"} == set(DISEASES)


def _severity_level(info: taxonomy.ClassInfo, rng: np.random.Generator) -> float:
    if info.severity == "healthy":
        return 0.0
    if info.id in taxonomy.NO_SEVERITY_CLASSES:
        return rng.uniform(0.1, 1.0)
    return rng.uniform(0.05, 0.35) if info.severity == "general" else rng.uniform(0.65, 1.0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Soil, grass, table or shadow: a base colour with blotchy and fine texture."""
    base = [(0.40, 0.30, 0.20), (0.30, 0.45, 0.20), (0.55, 0.55, 0.52), (0.15, 0.14, 0.12)][rng.integers(4)]
    base = np.asarray(base, dtype=np.float32) * np.float32(rng.uniform(0.7, 1.3))
    coarse = Image.fromarray(rng.random((5, 5)).astype(np.float32), mode="F")
    coarse = np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR))[..., None]
    fine = rng.random((size, size, 1), dtype=np.float32)
    tint = rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    return base * tint * (0.7 + 0.45 * coarse + 0.3 * (fine - 0.5))


def render(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """A size x size x 3 uint8 image of a leaf of class `label`."""
    info = taxonomy.class_info(label)
    grid = size * SUPERSAMPLE
    colour, outline = CROP_LOOK[info.crop]
    axis = (np.arange(grid, dtype=np.float32) + 0.5) / grid * 2 - 1
    py, px = np.meshgrid(axis, axis, indexing="ij")
    angle = rng.uniform(0, 2 * np.pi)
    scale = rng.uniform(0.65, 0.95) * (1.35 if outline == "strap" else 1.0)
    cx, cy = (float(v) for v in rng.uniform(-0.15, 0.15, size=2))
    ca, sa = float(np.cos(angle)), float(np.sin(angle))
    X = ((px - cx) * ca + (py - cy) * sa) / scale
    Y = (-(px - cx) * sa + (py - cy) * ca) / scale
    if info.disease == "yellow leaf curl virus":  # curled: narrower, wavy blade
        Y = Y * (1.2 + 0.4 * rng.random()) + 0.05 * np.sin(12 * X)
    f, veins = _shape(outline, X, Y)
    f = np.maximum(f, -1.0)  # continuous outside (the profiles jump to -1 past the tips)
    tint = np.asarray(colour, dtype=np.float32) * rng.uniform(0.88, 1.12, size=3)
    if rng.random() < 0.15:  # older or sun-bleached leaves: yellower even when healthy
        tint = tint * 0.7 + np.asarray(C["yellow"], dtype=np.float32) * 0.3
    shade = 0.85 + 0.3 * (X * rng.uniform(-0.5, 0.5) + 0.5 * f.clip(0, 1))
    rgb = (tint * shade[..., None]).astype(np.float32)
    leaf = Leaf(X, Y, f, np.clip(veins, 0, 1), scale * grid / 2, rgb, rng)
    leaf.paint(0.35 * leaf.veins * (f > 0), np.minimum(tint * 1.5, 1))
    level = _severity_level(info, rng)
    if level > 0:
        DISEASES[(info.crop, info.disease)](leaf, level)
    elif rng.random() < 0.3:  # a harmless blemish, so "any spot" does not mean "diseased"
        spots(leaf, 1, 0.03, C["brown"])
    grad = np.stack(np.gradient(f), axis=0)
    alpha = np.clip(0.5 + f / (np.hypot(grad[0], grad[1]) + 1e-6), 0, 1)[..., None]
    image = _background(rng, grid) * (1 - alpha) + leaf.rgb * alpha
    light = (rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, size=3)).astype(np.float32)
    ramp = 1 + rng.uniform(-0.25, 0.25) * px + rng.uniform(-0.25, 0.25) * py
    image = (image * light * ramp[..., None]).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    image = image + rng.normal(0, 0.025, size=image.shape).astype(np.float32)
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
