"""The bundled data generator: deterministic, idempotent, and valid COCO / mmpretrain folder data."""
import hashlib
import json
import math
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from mmfisher.data_gen import CLASSES, ClsSpec, DetSpec, make_all, make_cls, make_det

SMALL_DET = DetSpec(num_train=12, num_val=6)
SMALL_CLS = ClsSpec(train_per_class=5, val_per_class=2)


def tree_digest(root: str) -> dict:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            with open(p, 'rb') as fh:
                out[osp.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_same_seed_gives_identical_bytes(tmp_path):
    make_det(str(tmp_path / 'a'), SMALL_DET, seed=3)
    make_det(str(tmp_path / 'b'), SMALL_DET, seed=3)
    make_cls(str(tmp_path / 'ca'), SMALL_CLS, seed=3)
    make_cls(str(tmp_path / 'cb'), SMALL_CLS, seed=3)
    a, b = tree_digest(str(tmp_path / 'a')), tree_digest(str(tmp_path / 'b'))
    assert len(a) == 12 + 6 + 2 + 1  # images + 2 jsons + manifest
    assert a == b
    assert tree_digest(str(tmp_path / 'ca')) == tree_digest(str(tmp_path / 'cb'))


def test_other_seed_differs(tmp_path):
    make_det(str(tmp_path / 'a'), SMALL_DET, seed=0)
    make_det(str(tmp_path / 'b'), SMALL_DET, seed=1)
    a, b = tree_digest(str(tmp_path / 'a')), tree_digest(str(tmp_path / 'b'))
    assert a.keys() == b.keys()
    assert sum(a[k] != b[k] for k in a) >= len(a) - 1  # everything but (maybe) nothing equal


def test_idempotent_and_force(tmp_path):
    out = str(tmp_path / 'det')
    assert make_det(out, SMALL_DET) is True
    img = osp.join(out, 'train', '00000.png')
    mtime = os.stat(img).st_mtime_ns
    assert make_det(out, SMALL_DET) is False
    assert os.stat(img).st_mtime_ns == mtime
    assert make_det(out, SMALL_DET, force=True) is True
    # a changed spec regenerates; a tampered manifest (partial or foreign data) does too
    assert make_det(out, DetSpec(num_train=10, num_val=6)) is True
    assert len(os.listdir(osp.join(out, 'train'))) == 10
    with open(osp.join(out, 'manifest.json'), 'w') as f:
        f.write('{}')
    assert make_det(out, DetSpec(num_train=10, num_val=6)) is True
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')], 'temporary folders left behind'


def test_make_all_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match='shapes_det'):
        make_all(str(tmp_path), which=['shapes_seg'])


def test_coco_detection_set_is_valid(tmp_path):
    from pycocotools.coco import COCO
    out = str(tmp_path / 'det')
    make_det(out, SMALL_DET)
    for split, n in (('train', 12), ('val', 6)):
        coco = COCO(osp.join(out, 'annotations', f'{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        assert len(coco.getImgIds()) == n
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            img = np.asarray(Image.open(osp.join(out, split, info['file_name'])).convert('RGB'))
            assert img.shape == (info['height'], info['width'], 3) == (128, 128, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert SMALL_DET.min_objects <= len(anns) <= SMALL_DET.max_objects
            for ann in anns:
                x, y, w, h = ann['bbox']
                assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
                assert SMALL_DET.min_size - 1 <= max(w, h) <= SMALL_DET.max_size + 1
                assert 0 < ann['area'] <= w * h + 0.01  # area rounded to 0.01
                poly = np.array(ann['segmentation'][0]).reshape(-1, 2)
                np.testing.assert_allclose([poly[:, 0].min(), poly[:, 1].min()], [x, y], atol=0.02)
                np.testing.assert_allclose([poly[:, 0].max(), poly[:, 1].max()], [x + w, y + h], atol=0.02)
                # the box really marks a drawn shape: flat fill colour around the polygon's centroid, while
                # the background is noisy
                cx, cy = poly.mean(0).round().astype(int)
                patch = img[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
                assert (patch == patch[0]).all(), f'{split} image {img_id}: no flat shape at the box centroid'
            mask = coco.annToMask(anns[0])
            assert mask.sum() > 0.5 * anns[0]['area']


def test_classification_folder_set(tmp_path):
    out = str(tmp_path / 'cls')
    make_cls(out, SMALL_CLS)
    for split, n in (('train', 5), ('val', 2)):
        assert sorted(os.listdir(osp.join(out, split))) == sorted(CLASSES)
        for c in CLASSES:
            files = sorted(os.listdir(osp.join(out, split, c)))
            assert len(files) == n and all(f.endswith('.png') for f in files)
            assert Image.open(osp.join(out, split, c, files[0])).size == (64, 64)
    from mmpretrain.datasets import CustomDataset
    ds = CustomDataset(data_root=out, data_prefix='train', metainfo=dict(classes=CLASSES), lazy_init=False)
    assert len(ds) == 15
    assert sorted(ds.get_gt_labels().tolist()) == sorted([0] * 5 + [1] * 5 + [2] * 5)
    assert json.load(open(osp.join(out, 'manifest.json')))['kind'] == 'shapes_cls'


def test_bundled_sets_load_through_mm_datasets():
    """The configs' datasets (mmdet CocoDataset, mmpretrain CustomDataset) read the generated data."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    import _foundation as F
    F.ensure_data()
    det = Config.fromfile(F.DET_CFG)
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS as DET_DATASETS
    ds = DET_DATASETS.build(det.train_dataloader.dataset)
    assert len(ds) == DetSpec().num_train
    item = ds[0]
    assert tuple(item['inputs'].shape) == (3, 128, 128)
    assert len(item['data_samples'].gt_instances) >= 1
    cls = Config.fromfile(F.CLS_CFG)
    init_default_scope('mmpretrain')
    from mmpretrain.registry import DATASETS as CLS_DATASETS
    ds = CLS_DATASETS.build(cls.val_dataloader.dataset)
    assert len(ds) == ClsSpec().val_per_class * len(CLASSES)
    assert ds.CLASSES == CLASSES or tuple(ds.metainfo['classes']) == CLASSES


# ---- the unlabeled image set (label-free pruning) and folder modes -------------------------------------------------

def _set_digest(root: str) -> str:
    h = hashlib.sha256()
    for d, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = osp.join(d, f)
            h.update(osp.relpath(p, root).encode())
            with open(p, 'rb') as fh:
                h.update(fh.read())
    return h.hexdigest()


def test_labeled_sets_unchanged_by_the_unlabeled_set(tmp_path):
    """The generator's existing output, byte for byte (digests of generator version 1 before the unlabeled set
    was added): adding a set must not move any other set's random stream."""
    make_det(str(tmp_path / 'det'), SMALL_DET, seed=3)
    make_cls(str(tmp_path / 'cls'), SMALL_CLS, seed=3)
    assert _set_digest(str(tmp_path / 'det')) == '5c39ba332d0e91456d0d1820f1e2fa413345082aababbde80367510a6fdbe562'
    assert _set_digest(str(tmp_path / 'cls')) == '978f97a4f19168cb66952a1da968abe9ab50387a822625d4ed048914e5bafa1d'


def test_unlabeled_set_is_deterministic_and_carries_no_labels(tmp_path):
    from mmfisher.data_gen import UnlabeledSpec, make_unlabeled
    spec = UnlabeledSpec(num_det=6, num_cls=9)
    assert make_unlabeled(str(tmp_path / 'a'), spec, seed=2) is True
    assert make_unlabeled(str(tmp_path / 'a'), spec, seed=2) is False  # up to date: untouched
    make_unlabeled(str(tmp_path / 'b'), spec, seed=2)
    a = tree_digest(str(tmp_path / 'a'))
    assert a == tree_digest(str(tmp_path / 'b'))
    assert sorted(a) == ['cls/%05d.png' % i for i in range(9)] + ['det/%05d.png' % i for i in range(6)] + \
        ['manifest.json']  # images and the manifest, no annotation of any kind
    assert json.load(open(osp.join(tmp_path, 'a', 'manifest.json')))['kind'] == 'shapes_unlabeled'
    assert Image.open(osp.join(tmp_path, 'a', 'det', '00000.png')).size == (128, 128)
    assert Image.open(osp.join(tmp_path, 'a', 'cls', '00000.png')).size == (64, 64)
    # new images of the same distributions, not copies of the labeled ones
    make_det(str(tmp_path / 'det'), SMALL_DET, seed=2)
    labeled = set(tree_digest(str(tmp_path / 'det')).values())
    assert not labeled & set(a.values())
    assert not [p for p in os.listdir(tmp_path) if p.startswith('.')], 'temporary folders left behind'


@pytest.mark.parametrize('umask', [0o022, 0o027])
def test_generated_folders_honour_the_umask(tmp_path, umask):
    from mmfisher.data_gen import UnlabeledSpec, make_unlabeled
    old = os.umask(umask)
    try:
        make_det(str(tmp_path / 'det'), DetSpec(num_train=2, num_val=1))
        make_cls(str(tmp_path / 'cls'), ClsSpec(train_per_class=1, val_per_class=1))
        make_unlabeled(str(tmp_path / 'un'), UnlabeledSpec(num_det=1, num_cls=1))
    finally:
        os.umask(old)
    for name in ('det', 'cls', 'un'):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o777 & ~umask, name  # not mkdtemp's 0700


def test_make_all_and_make_data_know_the_unlabeled_set(tmp_path):
    import subprocess
    import sys
    from mmfisher.data_gen import MAKERS
    assert set(MAKERS) == {'shapes_det', 'shapes_cls', 'shapes_unlabeled', 'shapes_cls_hard', 'shapes_cls_fine'}
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    out = subprocess.run([sys.executable, osp.join(root, 'tools', 'make_data.py'), '--help'], capture_output=True,
                         text=True, cwd=root)
    assert out.returncode == 0 and 'shapes_unlabeled' in out.stdout and 'shapes_cls_hard' in out.stdout
    assert 'shapes_cls_fine' in out.stdout


def test_hard_classification_set_draws_its_own_smaller_shapes(tmp_path):
    """shapes_cls_hard: the folder format of shapes_cls, the spec's smaller shapes and larger val split, its own
    random streams (no image equals the easy set's), and its own manifest kind."""
    from mmfisher.data_gen import HARD_CLS
    spec = ClsSpec(train_per_class=3, val_per_class=2, min_size=HARD_CLS.min_size, max_size=HARD_CLS.max_size)
    make_cls(str(tmp_path / 'easy'), spec, seed=0)
    make_cls(str(tmp_path / 'hard'), spec, seed=0, kind='shapes_cls_hard')
    easy, hard = tree_digest(str(tmp_path / 'easy')), tree_digest(str(tmp_path / 'hard'))
    pngs = [k for k in hard if k.endswith('.png')]
    assert easy.keys() == hard.keys() and len(pngs) == 3 * (3 + 2)
    assert all(easy[k] != hard[k] for k in pngs)
    assert json.load(open(osp.join(tmp_path, 'hard', 'manifest.json')))['kind'] == 'shapes_cls_hard'
    assert HARD_CLS.max_size < ClsSpec().max_size and HARD_CLS.min_size < ClsSpec().min_size
    assert HARD_CLS.val_per_class > ClsSpec().val_per_class
    made = make_all(str(tmp_path / 'all'), which=['shapes_cls_hard'])
    assert made == {'shapes_cls_hard': True}
    root = tmp_path / 'all' / 'shapes_cls_hard'
    assert len(os.listdir(root / 'val' / 'circle')) == HARD_CLS.val_per_class
    # a drawn shape's extent stays within the spec's sizes (the background is a near-flat colour + noise)
    img = np.asarray(Image.open(root / 'val' / 'square' / '00000.png').convert('L'), dtype=np.float32)
    fg = np.abs(img - np.median(img)) > 40
    ys, xs = np.nonzero(fg)
    assert HARD_CLS.min_size - 2 <= max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= HARD_CLS.max_size + 2


def test_shape_outlines_have_their_vertex_counts_and_size():
    """Every named shape: its vertex count, centred in a box of its size; the turned ones draw one angle from
    the RNG (the 3-class sets' streams are unchanged by the new shapes: circles and squares draw none)."""
    from mmfisher.data_gen import SHAPES, _shape_polygon
    counts = dict(circle=32, square=4, triangle=3, pentagon=5, hexagon=6, star=10)
    assert set(SHAPES) == set(counts)
    for name, n in counts.items():
        rng = np.random.default_rng(0)
        poly = _shape_polygon(rng, name, 30.0, 20.0, 10.0)
        assert len(poly) == n, name
        xs, ys = np.array(poly).T
        assert np.all(np.abs(xs - 30.0) <= 5.0 + 1e-9) and np.all(np.abs(ys - 20.0) <= 5.0 + 1e-9), name
        outer = 5.0 * math.sqrt(2) if name == 'square' else 5.0  # the square's side is the size
        assert np.isclose(np.hypot(xs - 30.0, ys - 20.0).max(), outer, atol=0.5), name
        draws = 0 if name in ('circle', 'square') else 1
        assert rng.random() == np.random.default_rng(0).random(draws + 1)[-1], name
    with pytest.raises(ValueError, match='pentagon'):
        _shape_polygon(np.random.default_rng(0), 'ellipse', 0.0, 0.0, 1.0)


def test_fine_classification_set_has_six_classes_of_small_shapes(tmp_path):
    """shapes_cls_fine: the folder format with FINE_CLASSES' six folders per split, its spec's sizes and its own
    manifest kind and random streams."""
    from mmfisher.data_gen import FINE_CLASSES, FINE_CLS
    assert len(FINE_CLASSES) == 6 and FINE_CLS.classes == FINE_CLASSES
    # mmpretrain's CustomDataset numbers the classes by sorted folder name: the config's names must follow it
    from mmengine.config import Config
    root_dir = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    cfg = Config.fromfile(osp.join(root_dir, 'configs', 'tiny', 'resnet_tiny_shapes_cls_fine.py'))
    assert list(FINE_CLASSES) == sorted(FINE_CLASSES) == list(cfg.train_dataloader.dataset.metainfo['classes'])
    assert cfg.model.head.num_classes == cfg.data_preprocessor.num_classes == len(FINE_CLASSES)
    assert cfg.train_dataloader.dataset.data_root == cfg.val_dataloader.dataset.data_root == \
        'data/generated/shapes_cls_fine/'
    assert FINE_CLS.max_size < ClsSpec().max_size and FINE_CLS.min_size < ClsSpec().min_size
    assert FINE_CLS.train_per_class > ClsSpec().train_per_class
    spec = ClsSpec(train_per_class=2, val_per_class=1, min_size=FINE_CLS.min_size, max_size=FINE_CLS.max_size,
                   classes=FINE_CLASSES)
    make_cls(str(tmp_path / 'fine'), spec, seed=0, kind='shapes_cls_fine')
    root = tmp_path / 'fine'
    assert sorted(os.listdir(root / 'train')) == sorted(FINE_CLASSES)
    assert all(len(os.listdir(root / 'val' / c)) == 1 for c in FINE_CLASSES)
    assert open(root / 'classes.txt').read().split() == list(FINE_CLASSES)
    assert json.load(open(root / 'manifest.json'))['kind'] == 'shapes_cls_fine'
    for name in FINE_CLASSES:  # the shape: the pixels far (RGB) from the near-flat background's median
        for idx in range(2):
            img = np.asarray(Image.open(root / 'train' / name / f'{idx:05d}.png').convert('RGB'), dtype=np.float32)
            ys, xs = np.nonzero(np.linalg.norm(img - np.median(img.reshape(-1, 3), 0), axis=2) > 75)
            extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            assert 0.6 * FINE_CLS.min_size <= extent <= FINE_CLS.max_size + 2, (name, idx, extent)
    made = make_all(str(tmp_path / 'all'), which=['shapes_cls_fine'])
    assert made == {'shapes_cls_fine': True}
    assert len(os.listdir(tmp_path / 'all' / 'shapes_cls_fine' / 'train' / 'star')) == FINE_CLS.train_per_class
