"""Deterministic generator of the project's bundled toy data sets (plain numpy + PIL; no mm imports).

The data sets are drawn from the same shape primitives on noisy backgrounds:

* ``shapes_det``: COCO-format detection, ``annotations/{train,val}.json`` + ``{train,val}/*.png``; several
  non-overlapping objects per image, tight boxes, polygon segmentations.
* ``shapes_cls``: mmpretrain ``CustomDataset`` folder format, ``{train,val}/<class>/*.png``; one shape per image.
* ``shapes_cls_hard``: the same format and drawing with smaller shapes (24-48 px in 64 px) and a larger val split
  (400 per class), for benchmarks whose methods a converged model on ``shapes_cls`` (about 99% top-1 on 150 val
  images) cannot tell apart.
* ``shapes_cls_fine``: the same format with six classes (:data:`FINE_CLASSES`: pentagons, hexagons and circles
  of 20-40 px among them), 400 train and 300 val images per class: the tiny ResNet converged on it scores
  about 97% (on ``shapes_cls_hard`` about 99%), leaving pruned models room to differ.
* ``shapes_unlabeled``: plain images for label-free pruning (``mmfisher.UnlabeledImages``), no annotation at all:
  ``det/*.png`` drawn like ``shapes_det`` and ``cls/*.png`` like ``shapes_cls`` (the class of each image is drawn
  and thrown away), from their own random streams, so they are new images of the same distributions.

Contract: the output is a pure function of ``(spec, seed)``: every image gets its own RNG seeded from
``(seed, data set, split, index)``, so files are byte-identical across runs and machines. Generation is
idempotent: a ``manifest.json`` records the parameters; a complete matching set is left untouched. Every set is
written into a temporary folder that is moved into place when complete; folders get the mode ``mkdir`` gives
under the current umask (not ``mkdtemp``'s 0700).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from .core.files import default_mode

GENERATOR_VERSION = 1
CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle')
_SIDES = dict(triangle=3, pentagon=5, hexagon=6)
SHAPES: Tuple[str, ...] = ('circle', 'square', 'star') + tuple(_SIDES)
# shapes_cls_fine's classes: circles, pentagons and hexagons among them, a few pixels apart. Sorted, as
# mmpretrain's CustomDataset numbers a folder-format set's classes by their folders' sorted names
FINE_CLASSES: Tuple[str, ...] = ('circle', 'hexagon', 'pentagon', 'square', 'star', 'triangle')
MANIFEST = 'manifest.json'

Polygon = List[Tuple[float, float]]


@dataclass(frozen=True)
class DetSpec:
    """Parameters of the detection set."""
    img_size: int = 128
    num_train: int = 480
    num_val: int = 96
    min_objects: int = 1
    max_objects: int = 4
    min_size: int = 14
    max_size: int = 44
    classes: Tuple[str, ...] = CLASSES


@dataclass(frozen=True)
class ClsSpec:
    """Parameters of the classification set (counts are per class)."""
    img_size: int = 64
    train_per_class: int = 200
    val_per_class: int = 50
    min_size: int = 28
    max_size: int = 56
    classes: Tuple[str, ...] = CLASSES


@dataclass(frozen=True)
class UnlabeledSpec:
    """Parameters of the unlabeled set: image counts; the drawing follows ``det`` / ``cls``."""
    num_det: int = 480
    num_cls: int = 600
    det: DetSpec = DetSpec()
    cls: ClsSpec = ClsSpec()


@dataclass
class _Placed:
    label: int
    polygon: Polygon = field(default_factory=list)
    bbox: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # x, y, w, h


def _rng(seed: int, *keys: object) -> np.random.Generator:
    """An independent RNG for one item, derived from the global seed and the item's keys."""
    digest = hashlib.sha256(repr((seed, ) + keys).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], 'little'))


def _background(rng: np.random.Generator, size: int) -> Tuple[Image.Image, np.ndarray]:
    """A flat random colour with Gaussian noise and a soft gradient; returns the image and its mean colour."""
    base = rng.uniform(40, 215, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    grad = rng.uniform(-30, 30, size=(2, 3))
    img = base[None, None, :] + xx[..., None] * grad[0] + yy[..., None] * grad[1]
    img = img + rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), 'RGB'), base


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray) -> Tuple[int, int, int]:
    """A random colour at least ~90 (L2, RGB) away from the background mean."""
    for _ in range(100):
        c = rng.uniform(0, 255, size=3)
        if np.linalg.norm(c - bg) > 90:
            break
    return tuple(int(v) for v in c)  # type: ignore[return-value]


def _regular(cx: float, cy: float, r: float, n: int, a0: float) -> Polygon:
    """The ``n`` vertices of a regular polygon of circumradius ``r`` turned by ``a0``."""
    return [(cx + r * math.cos(a0 + 2 * math.pi * k / n), cy + r * math.sin(a0 + 2 * math.pi * k / n))
            for k in range(n)]


def _shape_polygon(rng: np.random.Generator, name: str, cx: float, cy: float, s: float) -> Polygon:
    """Outline of the shape ``name`` (one of :data:`SHAPES`) of size ``s`` centred at (cx, cy): circles as
    32-gons, squares axis-aligned, the other polygons turned by a random angle (one draw from ``rng``)."""
    r = s / 2
    if name == 'circle':
        return _regular(cx, cy, r, 32, 0.0)
    if name == 'square':
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if name in _SIDES:
        return _regular(cx, cy, r, _SIDES[name], rng.uniform(0, 2 * math.pi))
    if name == 'star':  # five points: the outer vertices of one pentagon, the inner ones (0.45 r) between them
        outer, inner = _regular(cx, cy, r, 5, a0 := rng.uniform(0, 2 * math.pi)), \
            _regular(cx, cy, 0.45 * r, 5, a0 + math.pi / 5)
        return [p for pair in zip(outer, inner) for p in pair]
    raise ValueError(f'unknown shape class {name!r}; known: {SHAPES}')


def _bbox(poly: Polygon) -> Tuple[float, float, float, float]:
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return (min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys))


def _poly_area(poly: Polygon) -> float:
    """Shoelace area."""
    s = 0.0
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2


def _overlaps(a: Tuple[float, ...], b: Tuple[float, ...], gap: float = 2.0) -> bool:
    return not (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0] or a[1] + a[3] + gap <= b[1]
                or b[1] + b[3] + gap <= a[1])


def _draw(img: Image.Image, rng: np.random.Generator, bg: np.ndarray, poly: Polygon) -> None:
    ImageDraw.Draw(img).polygon(poly, fill=_contrasting_colour(rng, bg))


def draw_det_image(spec: DetSpec, rng: np.random.Generator) -> Tuple[Image.Image, List[_Placed]]:
    """One detection image with ``min_objects..max_objects`` non-overlapping shapes fully inside it."""
    img, bg = _background(rng, spec.img_size)
    want = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    placed: List[_Placed] = []
    for _ in range(want * 30):
        if len(placed) == want:
            break
        label = int(rng.integers(len(spec.classes)))
        s = float(rng.uniform(spec.min_size, spec.max_size))
        cx, cy = rng.uniform(s / 2 + 1, spec.img_size - s / 2 - 1, size=2)
        outline = _shape_polygon(rng, spec.classes[label], float(cx), float(cy), s)
        poly = [(round(x, 2), round(y, 2)) for x, y in outline]
        box = _bbox(poly)
        if any(_overlaps(box, p.bbox) for p in placed):
            continue
        placed.append(_Placed(label, poly, box))
    for p in placed:
        _draw(img, rng, bg, p.polygon)
    return img, placed


def draw_cls_image(spec: ClsSpec, rng: np.random.Generator, label: int) -> Image.Image:
    """One classification image: a single shape of class ``label`` somewhere inside the image."""
    img, bg = _background(rng, spec.img_size)
    s = float(rng.uniform(spec.min_size, spec.max_size))
    cx, cy = rng.uniform(s / 2 + 1, spec.img_size - s / 2 - 1, size=2)
    _draw(img, rng, bg, _shape_polygon(rng, spec.classes[label], float(cx), float(cy), s))
    return img


def _manifest(kind: str, spec: object, seed: int) -> Dict[str, object]:
    return dict(kind=kind, generator_version=GENERATOR_VERSION, seed=seed, spec=asdict(spec))  # type: ignore


def _is_current(out_dir: str, manifest: Dict[str, object]) -> bool:
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == json.loads(json.dumps(manifest))


def _publish(tmp: str, out_dir: str, manifest: Dict[str, object]) -> None:
    """Write the manifest last, then move the finished folder into place (a partial set is never published)."""
    with open(os.path.join(tmp, MANIFEST), 'w') as f:
        json.dump(manifest, f, indent=1)
    os.chmod(tmp, default_mode(directory=True))  # mkdtemp made it 0700
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def _save_png(img: Image.Image, path: str) -> None:
    img.save(path, format='PNG', optimize=False)


def make_det(out_dir: str, spec: DetSpec = DetSpec(), seed: int = 0, force: bool = False) -> bool:
    """Generate the COCO detection set into ``out_dir``; returns False if an identical set was already there."""
    manifest = _manifest('shapes_det', spec, seed)
    if not force and _is_current(out_dir, manifest):
        return False
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.shapes_det.', dir=parent)
    os.makedirs(os.path.join(tmp, 'annotations'))
    categories = [dict(id=i + 1, name=n, supercategory='shape') for i, n in enumerate(spec.classes)]
    for split, count in (('train', spec.num_train), ('val', spec.num_val)):
        os.makedirs(os.path.join(tmp, split))
        images, anns = [], []
        for idx in range(count):
            img, placed = draw_det_image(spec, _rng(seed, 'det', split, idx))
            name = f'{idx:05d}.png'
            _save_png(img, os.path.join(tmp, split, name))
            images.append(dict(id=idx + 1, file_name=name, width=spec.img_size, height=spec.img_size))
            for p in placed:
                x, y, w, h = (round(v, 2) for v in p.bbox)  # polygon vertices are already on a 0.01 grid
                anns.append(
                    dict(id=len(anns) + 1, image_id=idx + 1, category_id=p.label + 1, bbox=[x, y, w, h],
                         area=round(_poly_area(p.polygon), 2), iscrowd=0,
                         segmentation=[[c for pt in p.polygon for c in pt]]))
        with open(os.path.join(tmp, 'annotations', f'{split}.json'), 'w') as f:
            json.dump(dict(images=images, annotations=anns, categories=categories), f)
    _publish(tmp, out_dir, manifest)
    return True


HARD_CLS = ClsSpec(train_per_class=200, val_per_class=400, min_size=24, max_size=48)
# six classes of 20-40 px shapes (pentagons, hexagons and circles a few pixels apart), 4x the train images
# (12-26 px were not learnable by the tiny ResNet: train 100%, val 32%)
FINE_CLS = ClsSpec(train_per_class=400, val_per_class=300, min_size=20, max_size=40, classes=FINE_CLASSES)


def make_cls(out_dir: str, spec: ClsSpec = ClsSpec(), seed: int = 0, force: bool = False,
             kind: str = 'shapes_cls') -> bool:
    """Generate the folder-format classification set into ``out_dir``; False if already there. ``kind`` names the
    set in its manifest and in its images' random streams (``shapes_cls_hard`` draws its own images)."""
    manifest = _manifest(kind, spec, seed)
    if not force and _is_current(out_dir, manifest):
        return False
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.shapes_cls.', dir=parent)
    for split, per_class in (('train', spec.train_per_class), ('val', spec.val_per_class)):
        for label, name in enumerate(spec.classes):
            folder = os.path.join(tmp, split, name)
            os.makedirs(folder)
            for idx in range(per_class):
                keys = ('cls', split, label, idx) if kind == 'shapes_cls' else (kind, split, label, idx)
                img = draw_cls_image(spec, _rng(seed, *keys), label)
                _save_png(img, os.path.join(folder, f'{idx:05d}.png'))
    with open(os.path.join(tmp, 'classes.txt'), 'w') as f:
        f.write('\n'.join(spec.classes) + '\n')
    _publish(tmp, out_dir, manifest)
    return True


def make_unlabeled(out_dir: str, spec: UnlabeledSpec = UnlabeledSpec(), seed: int = 0, force: bool = False) -> bool:
    """Generate the unlabeled image set (``det/*.png``, ``cls/*.png``, no annotation) into ``out_dir``; False if
    an identical set was already there."""
    manifest = _manifest('shapes_unlabeled', spec, seed)
    if not force and _is_current(out_dir, manifest):
        return False
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.shapes_unlabeled.', dir=parent)
    try:
        os.makedirs(os.path.join(tmp, 'det'))
        for idx in range(spec.num_det):
            img, _ = draw_det_image(spec.det, _rng(seed, 'unlabeled', 'det', idx))
            _save_png(img, os.path.join(tmp, 'det', f'{idx:05d}.png'))
        os.makedirs(os.path.join(tmp, 'cls'))
        for idx in range(spec.num_cls):
            rng = _rng(seed, 'unlabeled', 'cls', idx)
            label = int(rng.integers(len(spec.cls.classes)))
            _save_png(draw_cls_image(spec.cls, rng, label), os.path.join(tmp, 'cls', f'{idx:05d}.png'))
        _publish(tmp, out_dir, manifest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def make_cls_hard(out_dir: str, seed: int = 0, force: bool = False) -> bool:
    """Generate ``shapes_cls_hard`` (:data:`HARD_CLS`) into ``out_dir``; False if already there."""
    return make_cls(out_dir, HARD_CLS, seed=seed, force=force, kind='shapes_cls_hard')


def make_cls_fine(out_dir: str, seed: int = 0, force: bool = False) -> bool:
    """Generate ``shapes_cls_fine`` (:data:`FINE_CLS`) into ``out_dir``; False if already there."""
    return make_cls(out_dir, FINE_CLS, seed=seed, force=force, kind='shapes_cls_fine')


MAKERS = dict(shapes_det=make_det, shapes_cls=make_cls, shapes_unlabeled=make_unlabeled,
              shapes_cls_hard=make_cls_hard, shapes_cls_fine=make_cls_fine)


def make_all(root: str = 'data/generated', seed: int = 0, force: bool = False,
             which: Optional[Sequence[str]] = None) -> Dict[str, bool]:
    """Generate every set of :data:`MAKERS` (or those in ``which``) under ``root``; maps each name to whether
    it was (re)made."""
    makers = MAKERS
    names = list(which) if which else list(makers)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f'unknown data set(s) {unknown}; choose from {list(makers)}')
    return {n: makers[n](os.path.join(root, n), seed=seed, force=force) for n in names}
