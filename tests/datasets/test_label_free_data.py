"""mmfisher.UnlabeledImages: plain image files (a folder or a list file) in mmdet and mmpretrain pipelines, with no
annotation loaded: a packed item carries no label of any kind."""
import os.path as osp

import pytest
import torch
from mmengine.registry import init_default_scope

import mmfisher  # noqa: F401  registers UnlabeledImages
from _label_free_helpers import UNLABELED, ensure_data

DET_PIPELINE = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),   # a reused labeled pipeline: dropped
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
CLS_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='RandomFlip', prob=0.5), dict(type='PackInputs')]


@pytest.fixture(scope='module', autouse=True)
def data():
    ensure_data()


@pytest.mark.parametrize('name', ['UnlabeledImages', 'mmfisher.UnlabeledImages'])
def test_detection_pipeline_under_mmdet_scope(name, monkeypatch):
    import mmfisher.datasets.unlabeled as U
    said = []
    monkeypatch.setattr(U, 'print_log', lambda msg, **kw: said.append(msg))
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    ds = DATASETS.build(dict(type=name, data_root=UNLABELED, data_prefix=dict(img_path='det/'), pipeline=DET_PIPELINE,
                             filter_cfg=dict(filter_empty_gt=True), indices=5))
    assert type(ds).__name__ == 'UnlabeledImages' and len(ds) == 5
    assert any('LoadAnnotations' in s for s in said)
    info = ds.get_data_info(0)
    assert info['width'] == info['height'] == 128 and info['img_path'].endswith('det/00000.png')
    item = ds[0]
    sample = item['data_samples']
    assert tuple(item['inputs'].shape) == (3, 128, 128)
    assert len(sample.gt_instances) == 0 and 'bboxes' not in sample.gt_instances  # no label of any kind
    assert 'gt_label' not in sample and not any(k.startswith('gt_') and k != 'gt_instances' for k in sample.keys())


def test_classification_pipeline_under_mmpretrain_scope():
    init_default_scope('mmpretrain')
    from mmpretrain.registry import DATASETS
    ds = DATASETS.build(dict(type='UnlabeledImages', data_root=UNLABELED, data_prefix='cls', pipeline=CLS_PIPELINE))
    assert len(ds) == 600
    item = ds[3]
    assert tuple(item['inputs'].shape) == (3, 64, 64)
    assert 'gt_label' not in item['data_samples'] and 'gt_score' not in item['data_samples']


def test_list_file_and_aspect_ratio_sampler(tmp_path):
    init_default_scope('mmdet')
    from mmdet.datasets.samplers import AspectRatioBatchSampler
    from mmdet.registry import DATASETS
    from mmengine.dataset import DefaultSampler
    lst = tmp_path / 'images.txt'
    lst.write_text('# a comment\ndet/00003.png\n\n' + osp.join(UNLABELED, 'cls', '00001.png') + '\ndet/00007.png 2\n')  # noqa: E501
    ds = DATASETS.build(dict(type='UnlabeledImages', data_root=UNLABELED, ann_file=str(lst),
                             pipeline=DET_PIPELINE[:1] + DET_PIPELINE[2:]))
    assert [osp.basename(ds.get_data_info(i)['img_path']) for i in range(3)] == ['00003.png', '00001.png',
                                                                              '00007.png']
    assert ds.get_data_info(1)['width'] == 64
    batches = list(AspectRatioBatchSampler(DefaultSampler(ds, shuffle=False), batch_size=2))
    assert sorted(i for b in batches for i in b) == [0, 1, 2]  # grouped by the header sizes, none lost


def test_missing_folder_or_list_file_says_what_to_fix(tmp_path):
    from mmfisher.datasets import UnlabeledImages
    with pytest.raises(FileNotFoundError, match='image folder .* does not exist. Fix'):
        UnlabeledImages(data_root=str(tmp_path), data_prefix='nope')
    with pytest.raises(FileNotFoundError, match='list file .* does not exist. Fix'):
        UnlabeledImages(ann_file=str(tmp_path / 'none.txt'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no images'):
        UnlabeledImages(data_prefix=str(tmp_path / 'empty'))


def test_a_batch_through_the_distillers_preprocessor_has_no_label():
    """What the distiller's loss receives: images and image metadata only."""
    from mmengine.dataset import pseudo_collate
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS, MODELS
    ds = DATASETS.build(dict(type='UnlabeledImages', data_root=UNLABELED, data_prefix='det', pipeline=DET_PIPELINE,
                             indices=4))
    pre = MODELS.build(dict(type='DetDataPreprocessor', mean=[0, 0, 0], std=[1, 1, 1], pad_size_divisor=32))
    batch = pre(pseudo_collate([ds[i] for i in range(4)]), True)
    assert isinstance(batch['inputs'], torch.Tensor) and batch['inputs'].shape[0] == 4
    assert all(len(s.gt_instances) == 0 for s in batch['data_samples'])
