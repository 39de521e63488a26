"""The balanced curve points on an mmdet RetinaNet replay the unchanged containers and the head's batch-only target
methods (``mmfisher.models.invariant`` + ``mmfisher.core.replay``): the same curves, bit for bit, with the
targets computed once per batch."""
import copy

import numpy as np
import pytest
import torch
from mmengine.runner import Runner

from _hook_helpers import DET_SHAPE, det_cfg
from mmfisher.core import PruningState, analyze_fast
from mmfisher.core.balanced import BalancedPruning
from mmfisher.models import make_trace_forward
from mmfisher.models.invariant import BATCH_ONLY_ARGS, invariant_methods


@pytest.fixture(scope='module')
def detector(tmp_path_factory):
    """The tests' small RetinaNet after 6 training iterations, and 2 preprocessed training batches."""
    cfg = det_cfg(str(tmp_path_factory.mktemp('det')), max_iters=6)
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model
    it = iter(runner.train_dataloader)
    with torch.no_grad():
        batches = [model.data_preprocessor(next(it), True) for _ in range(2)]
    return model, batches


def prune(model, batches, replay_mb):
    model = copy.deepcopy(model)
    graph = analyze_fast(model, lambda m: make_trace_forward(m, DET_SHAPE))
    state = PruningState(model, graph, input_shape=DET_SHAPE)
    calls = []
    head = model.bbox_head
    real = type(head).get_targets

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)
    head.get_targets = counted.__get__(head)  # counts the computations (the replay wraps this instance method)

    def loss_fn(data):
        losses = model(**data, mode='loss')
        return sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if 'loss' in k)
    invariant = [(m, n) for m, n in invariant_methods(model) if n != 'get_targets'] + [(head, 'get_targets')]
    res = BalancedPruning(target=0.6, grid=(0.5,), replay_mb=replay_mb, full_curves=True).run(
        state, model, batches, loss_fn, invariant=invariant)
    del head.get_targets
    return res, len(calls)


def test_replayed_targets_and_containers_give_the_same_curves(detector):
    model, batches = detector
    found = {(type(m).__name__, n) for m, n in invariant_methods(model)}
    assert found == {('RetinaHead', 'get_anchors'), ('RetinaHead', 'get_targets')}
    off, calls_off = prune(model, batches, 0)
    on, calls_on = prune(model, batches, 1024)
    assert [c.name for c in on.curves] == [c.name for c in off.curves]
    for a, b in zip(on.curves, off.curves):
        assert np.array_equal(a.ks, b.ks) and np.array_equal(a.variation, b.variation), a.name
    assert on.pruned == off.pruned and on.combined_loss == off.combined_loss
    stats = on.replay
    assert stats['invariant_recorded'] == 2 and stats['calls_replayed'] > 0
    assert {'bbox_head.get_anchors()', 'bbox_head.get_targets()'} == set(stats['invariant_methods'])
    # the targets were computed by the Fisher pass, the BN re-estimation (which gives the combined loss) and the
    # first point (which recorded them) only (without the replay: once per point and batch)
    points = sum(len(c.ks) for c in on.curves)
    assert calls_on == 3 * len(batches)
    assert calls_off == (2 + points) * len(batches)


def test_only_batch_only_signatures_are_invariant():
    from mmdet.models.dense_heads import RetinaHead

    class Aligned(RetinaHead):
        """Targets aligned to the predictions (as TOOD's): must be recomputed in every trial."""

        def get_targets(self, cls_scores, bbox_preds, anchor_list, valid_flag_list, batch_gt_instances,
                        batch_img_metas, batch_gt_instances_ignore=None, unmap_outputs=True):
            raise NotImplementedError

    class Loose(RetinaHead):
        def get_anchors(self, *args, **kwargs):  # a signature that says nothing: not taken
            return super().get_anchors(*args, **kwargs)

    kw = dict(num_classes=3, in_channels=8, stacked_convs=1, feat_channels=8,
              anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4, scales_per_octave=1,
                                    ratios=[1.0], strides=[8]))
    assert [n for _, n in invariant_methods(Aligned(**kw))] == ['get_anchors']
    assert [n for _, n in invariant_methods(Loose(**kw))] == ['get_targets']
    assert 'cls_scores' not in BATCH_ONLY_ARGS and 'bbox_preds' not in BATCH_ONLY_ARGS
