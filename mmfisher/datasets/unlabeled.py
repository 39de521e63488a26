"""``UnlabeledImages``: plain image files, no annotation, for label-free pruning and fine-tuning.

Works in mmdet and mmpretrain pipelines alike (``LoadImageFromFile`` ... ``PackDetInputs`` / ``PackInputs``):
each item is ``{'img_path', 'img_id', 'width', 'height', 'sample_idx'}`` and nothing else, so a packed detection
sample has empty ``gt_instances`` and a classification sample no ``gt_label``. Annotation-loading transforms
(``LoadAnnotations`` and friends) in a reused training pipeline are dropped, said once in the log.

Images come from a folder (``data_prefix=dict(img_path=...)``, searched recursively, sorted) or from a list file
(``ann_file``: one image path per line, relative to ``data_prefix['img_path']``; blank lines and ``#`` comments
skipped; a trailing class index, as in mmpretrain's ``meta/train.txt``, is dropped)::

    train_dataloader = dict(dataset=dict(
        _delete_=True, type='mmfisher.UnlabeledImages', data_root='data/generated/shapes_unlabeled/',
        data_prefix=dict(img_path='det/'), pipeline=[...]))

``width`` / ``height`` (mmdet's ``AspectRatioBatchSampler`` groups by them) are read from the image header the
first time an item is asked for, not when the dataset is built.
"""
import os
import os.path as osp
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from mmengine.dataset import BaseDataset
from mmengine.logging import print_log

from ..registry import DATASETS, MMENGINE_DATASETS

__all__ = ['UnlabeledImages', 'IMG_EXTENSIONS']

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
_ANNOTATION_LOADER = re.compile(r'Load\w*Annotations?$')


def _transform_type(t: Any) -> str:
    if isinstance(t, dict):
        return str(t.get('type', '')).split('.')[-1]
    return type(t).__name__


class UnlabeledImages(BaseDataset):
    """Image files without labels (see the module docstring).

    Args:
        data_root (str): joined with ``ann_file`` and ``data_prefix``. Defaults to ''.
        data_prefix (dict | str): ``dict(img_path=FOLDER)`` (a string is taken as the folder). Defaults to ''.
        ann_file (str): an optional list file of image paths (one per line). Defaults to '' (scan the folder).
        extensions (Sequence[str]): file suffixes counted as images when scanning. Defaults to common formats.
        pipeline (list): the transforms; annotation loaders are removed.
        metainfo (dict, optional): e.g. ``dict(classes=...)`` for tools that read it; never used for labels.
        backend_args (dict, optional): mmengine file backend arguments (listing and reading).
        **kwargs: the rest of :class:`mmengine.dataset.BaseDataset` (``indices``, ``test_mode``, ...);
            ``filter_cfg`` (mmdet's ``filter_empty_gt``) is accepted and ignored: there are no annotations.
    """

    METAINFO: dict = dict(classes=())

    def __init__(self,
                 data_root: str = '',
                 data_prefix: Union[dict, str] = '',
                 ann_file: str = '',
                 extensions: Sequence[str] = IMG_EXTENSIONS,
                 pipeline: Sequence[Any] = (),
                 metainfo: Optional[dict] = None,
                 backend_args: Optional[dict] = None,
                 **kwargs) -> None:
        if isinstance(data_prefix, str):
            data_prefix = dict(img_path=data_prefix)
        if not isinstance(data_prefix, dict) or set(data_prefix) - {'img_path', 'img'}:
            raise ValueError(f'UnlabeledImages: data_prefix={data_prefix!r} must be dict(img_path=FOLDER) or a '
                             'folder string')
        if 'img' in data_prefix:  # mmdet spells it img=
            data_prefix = dict(img_path=data_prefix.get('img_path', data_prefix['img']))
        data_prefix.setdefault('img_path', '')
        if isinstance(extensions, str):
            extensions = (extensions, )
        self.extensions = tuple(e.lower() if e.startswith('.') else '.' + e.lower() for e in extensions)
        self.backend_args = backend_args
        kwargs.pop('filter_cfg', None)
        pipeline = list(pipeline)
        dropped = [_transform_type(t) for t in pipeline if _ANNOTATION_LOADER.match(_transform_type(t))]
        if dropped:
            print_log(f'UnlabeledImages: the images carry no labels, so {sorted(set(dropped))} left the pipeline',
                      logger='current')
            pipeline = [t for t in pipeline if not _ANNOTATION_LOADER.match(_transform_type(t))]
        self._sizes: Dict[int, tuple] = {}
        super().__init__(ann_file=ann_file, metainfo=metainfo, data_root=data_root, data_prefix=data_prefix,
                         pipeline=pipeline, **kwargs)

    def load_data_list(self) -> List[dict]:
        from mmengine.fileio import exists, get_text, isdir, join_path, list_dir_or_file
        root = self.data_prefix.get('img_path', '') or ''
        if self.ann_file:
            if not exists(self.ann_file, backend_args=self.backend_args):
                raise FileNotFoundError(f'UnlabeledImages: list file ann_file="{self.ann_file}" does not exist. '
                                        'Fix: point ann_file at a text file of image paths (one per line), or '
                                        'leave it empty to scan data_prefix["img_path"]')
            lines = get_text(self.ann_file, backend_args=self.backend_args).splitlines()
            paths, labelled = [], 0
            for ln in lines:
                ln = ln.strip()
                if not ln or ln.startswith('#'):
                    continue
                parts = ln.rsplit(None, 1)
                if len(parts) == 2 and parts[1].lstrip('-').isdigit():  # "path label" (mmpretrain's lists)
                    ln, labelled = parts[0], labelled + 1
                paths.append(ln)
            if labelled:
                print_log(f'UnlabeledImages: {labelled} lines of {self.ann_file} end in a class index; it is '
                          'ignored (the images are read without labels)', logger='current')
            paths = [p if osp.isabs(p) or not root else join_path(root, p) for p in paths]
        else:
            folder = root or '.'
            if not isdir(folder, backend_args=self.backend_args):
                raise FileNotFoundError(f'UnlabeledImages: image folder "{folder}" does not exist. Fix: set '
                                        'data_root / data_prefix=dict(img_path=...) to a folder of images '
                                        '(tools/make_data.py writes data/generated/shapes_unlabeled/)')
            rel = list_dir_or_file(folder, list_dir=False, suffix=None, recursive=True,
                                   backend_args=self.backend_args)
            paths = sorted(join_path(folder, p) for p in rel if osp.splitext(p)[1].lower() in self.extensions
                           and not osp.basename(p).startswith('.'))
        if not paths:
            where = self.ann_file or root
            raise ValueError(f'UnlabeledImages: no images in "{where}" (extensions {self.extensions}). Fix: point '
                             'data_prefix / ann_file at image files')
        return [dict(img_path=p, img_id=i) for i, p in enumerate(paths)]

    def _size(self, idx: int, path: str) -> tuple:
        size = self._sizes.get(idx)
        if size is None:
            from PIL import Image
            if osp.isfile(path):
                with Image.open(path) as im:
                    size = im.size
            else:
                import io

                from mmengine.fileio import get
                with Image.open(io.BytesIO(get(path, backend_args=self.backend_args))) as im:
                    size = im.size
            self._sizes[idx] = size
        return size

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        width, height = self._size(info['sample_idx'], info['img_path'])
        info.setdefault('width', int(width))
        info.setdefault('height', int(height))
        return info


DATASETS.register_module(name='UnlabeledImages', module=UnlabeledImages)
MMENGINE_DATASETS.register_module(name='UnlabeledImages', module=UnlabeledImages)


def list_images(folder: str, extensions: Sequence[str] = IMG_EXTENSIONS) -> List[str]:
    """Image files under ``folder`` (recursive, sorted, relative paths): what ``UnlabeledImages`` would read."""
    out = []
    for d, _, files in os.walk(folder):
        for f in files:
            if osp.splitext(f)[1].lower() in extensions and not f.startswith('.'):
                out.append(osp.relpath(osp.join(d, f), folder))
    return sorted(out)
