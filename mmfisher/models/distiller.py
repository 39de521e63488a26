"""``LabelFreeDistiller``: a student and a frozen teacher, trained by distillation only (seed 002, label-free Group
Fisher pruning and fine-tuning).

Config pattern (``configs/_base_/label_free_pruning.py`` / ``label_free_finetune.py``)::

    model = dict(_delete_=True, type='mmfisher.LabelFreeDistiller', architecture={{_base_.model}})   # pruning
    model = dict(_delete_=True, type='mmfisher.LabelFreeDistiller',                                  # fine-tune
                 architecture=dict(type='mmfisher.Pruned', architecture={{_base_.model}},
                                   channels='work_dirs/prune/channels.json'),
                 teacher_checkpoint='work_dirs/trained/epoch_24.pth')

**Which module is pruned.** The wrapper holds ``self.student`` and ``self.teacher``;
:func:`mmfisher.models.pruned_module` returns the student, so ``FisherPruningHook`` traces, masks, fingerprints and
exports the student only, and ``channels.json`` / ``pruned.pth`` are the same files as from labeled pruning.
``predict`` and ``tensor`` modes run the student (validation, ``tools/test.py``, tracing). The teacher is frozen:
``requires_grad=False``, always in eval mode (also after ``model.train()``), run under ``torch.no_grad``, never
masked, never exported.

**Weights.** ``load_from`` with a plain model checkpoint (keys ``backbone.*`` ...) loads into the student *and*
the teacher (a pre-hook maps each un-prefixed key onto ``student.*`` and ``teacher.*``), so the teacher is a frozen
copy of the model pruning starts from; with ``teacher_checkpoint`` set, plain keys go to the student only and the
teacher loads that file strictly when the model is built (a label-free run's own checkpoint, with ``student.*`` /
``teacher.*`` keys, gives its ``teacher.*``). Without either, the teacher copies the student's initial weights.

**Loss** (``loss()``, on the student's preprocessed batch; no label is read: ``data_samples`` only carry image
metadata, and labels that a dataset happens to carry are ignored, said once in the log). All terms weigh 1 by
default (``output_weight``, ``anchor_weight``; the fine-tune base uses 0.1 as seed 002 does):

* classifiers: ``T^2 * KL(p_teacher || p_student)`` of the softmax class distributions at temperature ``T``
  (``temperature``, default 1), averaged over images (``loss_kd_cls``). Direction: KL(teacher || student), the
  poster's formula and Hinton distillation, because its gradient in the student's logits is ``p_s - p_t``: the
  labeled cross-entropy's gradient with the teacher's distribution in place of the one-hot label, so the Fisher it
  yields is the labeled Group Fisher's with soft labels, and every class the teacher gives mass to pulls on the
  student. KL(student || teacher) (seed 002's code) is mode-seeking: where the student already puts no mass its
  gradient vanishes, so channels that carry the teacher's secondary classes get little Fisher. ``T = 1`` because
  seed 002 uses none and the Fisher should measure the model's actual output distribution; ``T^2`` keeps the
  gradient scale independent of ``T``. Multi-label heads: binary KL per class.
* dense detectors (one-stage: RetinaNet, FCOS, ATSS, FSAF, GFL, YOLOX, RTMDet; and the RPN of two-stage ones):
  the head's per-level outputs, named by the head's ``loss_by_feat`` signature. Class scores (``cls_scores``):
  sigmoid heads by a binary KL per (anchor, class) element, ``KL(Bern(p_t) || Bern(p_s))``, summed and divided by
  the teacher's total score mass ``sum p_t`` (its expected number of positives, as a focal loss divides by the
  positives; a mean over elements would drown the few foreground elements in ~99% background); softmax heads by
  the per-anchor KL, divided by the teacher's foreground mass. Box regression (``bbox_preds``) by the squared error
  per anchor and channel, and centerness / objectness / IoU quality outputs by a binary KL, both weighted by the
  teacher's max class score at that anchor and divided by the sum of those weights, so background anchors, whose
  boxes nothing trains, do not dominate. Terms ``loss_kd_cls``, ``loss_kd_bbox``, ``loss_kd_centerness`` ...
  (``loss_kd_rpn_*`` for an RPN).
* two-stage detectors (Faster R-CNN): the RPN as a dense head, plus the RoI head's class and box outputs on the
  *teacher's* proposals (its RPN's test-time proposals, so both see the same RoIs): softmax KL per RoI
  (``loss_kd_roi_cls``, mean over RoIs) and the box deltas weighted by the teacher's class probabilities (per class
  for class-specific regression, foreground probability otherwise; ``loss_kd_roi_bbox``). A mask head or another
  output the wrapper cannot pair is refused when the model is built, naming the output: an unpaired branch would
  get no gradient, hence zero Fisher, and be pruned first.
* anchor layers: mean squared error between student and teacher outputs at intermediate modules
  (``loss_anchor``, summed over anchors). ``anchors='auto'`` picks them by seed 002's rule from the student's
  channel graph (:func:`mmfisher.core.anchors.select_anchors`, ``num_partitions`` partitions, default 5);
  ``'all'``: every norm output after a conv/linear layer (the seed's "every activation" ablation); a list: module
  names by hand; None: output terms only. The chosen anchors are logged. While channels are masked, an anchor
  compares the *alive* channels only (see :mod:`mmfisher.core.anchors`), so a masked student's anchor term equals
  its slimmed copy's; a slimmed (``Pruned``) student is compared with the teacher's kept channels.

**Sampled targets** (``sample_targets``; on in the pruning base, off in the fine-tune base). Group Fisher squares
per-sample gradients of the loss. With soft targets the distillation loss sits at its minimum while the student
equals the teacher: in a deterministic model (eval-mode or no batch norm, GroupNorm, no dropout: e.g. every mmdet
detector with ``norm_eval=True``) every gradient, hence every channel's Fisher, is exactly 0 until something is
masked, and the first pruning step would be arbitrary. With ``sample_targets=True`` each term becomes a one-sample
Monte-Carlo estimate of itself: the class terms add ``(p_t - y) . log p_s`` with labels ``y`` drawn from the
teacher's distribution (categorical or Bernoulli; the sum is then the cross-entropy with the sampled labels, minus
a constant), the squared-error terms add ``-sqrt(2 / (N Z)) sum sqrt(c) xi (s - t)`` with standard normal ``xi``
(``Z`` the term's normaliser, ``c`` each element's weight, ``N`` images). Every added term has mean zero, so the
expected loss and gradient are the soft ones; the expected squared per-sample gradient is the loss's Gauss-Newton
curvature (the Fisher information of the teacher's predictive distribution), which is what Group Fisher's
importance approximates, and it is non-zero from the first iteration. The draws come from a private generator
seeded by ``(seed, iteration, rank)``, so ``--resume`` reproduces an uninterrupted run and the global random
streams are untouched. ``kd_*`` log entries (no ``loss`` in the name, not summed) show the exact soft values.
"""
import contextlib
import copy
import hashlib
import inspect
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseModel
from torch import nn

from ..core import anchors as A
from ..core import analyze_fast, load_channel_config
from ..registry import MMENGINE_MODELS, MODELS
from .tracing import check_input_shape, is_classifier, is_detector, make_trace_forward

__all__ = ['LabelFreeDistiller', 'LabelFreeError', 'TeacherCheckpointError', 'PairingError', 'extract_student']


class LabelFreeError(ValueError):
    """A label-free distillation setting that cannot work (the message names the field and the fix)."""


class TeacherCheckpointError(LabelFreeError):
    """``teacher_checkpoint`` is missing, unreadable, or not a checkpoint of the teacher's architecture."""


class PairingError(LabelFreeError):
    """A model output the wrapper cannot pair between student and teacher."""


_PREFIXES = ('student.', 'teacher.', 'data_preprocessor.')
_QUALITY = ('centerness', 'objectness', 'obj', 'iou', 'quality')
_BOX = ('bbox', 'reg', 'box', 'dist')


def _is_pruned_cfg(cfg: Any) -> bool:
    return isinstance(cfg, dict) and str(cfg.get('type', '')).split('.')[-1] == 'Pruned'


def _type_name(cfg: Any) -> str:
    return str(cfg.get('type')) if isinstance(cfg, dict) else type(cfg).__name__


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _flat_tensors(obj: Any) -> List[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


def _bkl(s: torch.Tensor, t: torch.Tensor, p_t: torch.Tensor) -> torch.Tensor:
    """Per element ``KL(Bern(p_t) || Bern(sigmoid(s)))`` from logits (stable: BCE(s) - BCE(t), both at p_t)."""
    return (F.binary_cross_entropy_with_logits(s, p_t, reduction='none')
            - F.binary_cross_entropy_with_logits(t, p_t, reduction='none'))


class LabelFreeDistiller(BaseModel):
    """Student + frozen teacher, trained by distillation only (see the module docstring for every term).

    Args:
        architecture (dict): the student's model config (the model being pruned), or a ``mmfisher.Pruned`` dict to
            fine-tune a slimmed model; built in the current ``default_scope``.
        teacher (dict, optional): the teacher's model config. Defaults to ``architecture`` (for a ``Pruned``
            student: its unpruned ``architecture``).
        teacher_checkpoint (str, optional): weights loaded strictly into the teacher when it is built. Required
            when the student is ``Pruned`` or ``teacher`` differs from the student. Defaults to None (the teacher
            gets ``load_from``'s weights, like the student).
        anchors (str | Sequence[str] | None): ``'auto'`` (seed 002's rule), ``'all'``, module names, or None.
            Defaults to ``'auto'``.
        num_partitions (int): ``P``, the number of automatic anchors (partitions of the units). Defaults to 5.
        temperature (float): softmax temperature of the class KL terms. Defaults to 1.0.
        output_weight (float): weight of the output terms. Defaults to 1.0.
        anchor_weight (float): weight of the anchor term. Defaults to 1.0.
        sample_targets (bool): add the zero-mean sampling terms that make the Fisher informative while the student
            equals the teacher (see "Sampled targets"). Defaults to True.
        input_shape (Sequence[int], optional): ``(C, H, W)`` at which the student is traced to choose anchors;
            None: a default shape at build time (retried at the first batch's shape if the model needs another).
        seed (int): seed of the sampling generator. Defaults to 0.
        data_preprocessor (dict, optional): what the Runner passes from a top-level ``data_preprocessor`` field
            (mmpretrain configs); set on the student and teacher configs unless they have their own.
        init_cfg (dict, optional): unused (the student's own init_cfg applies).
    """

    def __init__(self,
                 architecture: Dict[str, Any],
                 teacher: Optional[Dict[str, Any]] = None,
                 teacher_checkpoint: Optional[str] = None,
                 anchors: Union[str, Sequence[str], None] = 'auto',
                 num_partitions: int = 5,
                 temperature: float = 1.0,
                 output_weight: float = 1.0,
                 anchor_weight: float = 1.0,
                 sample_targets: bool = True,
                 input_shape: Optional[Sequence[int]] = None,
                 seed: int = 0,
                 data_preprocessor: Optional[Dict[str, Any]] = None,
                 init_cfg: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(init_cfg=None)
        from mmengine.registry import MODELS as ROOT
        self._check_args(architecture, teacher, teacher_checkpoint, anchors, num_partitions, temperature,
                         output_weight, anchor_weight, sample_targets, seed)
        self.input_shape = check_input_shape(input_shape) if input_shape is not None else None
        self.anchor_spec = anchors if anchors is None or isinstance(anchors, str) else list(anchors)
        self.num_partitions = num_partitions
        self.temperature = float(temperature)
        self.output_weight = float(output_weight)
        self.anchor_weight = float(anchor_weight)
        self.sample_targets = sample_targets
        self.seed = int(seed)
        self.teacher_checkpoint = teacher_checkpoint

        student_cfg = copy.deepcopy(architecture)
        self.pruned_student = _is_pruned_cfg(student_cfg)
        unpruned = student_cfg['architecture'] if self.pruned_student else student_cfg
        teacher_cfg = copy.deepcopy(teacher if teacher is not None else unpruned)
        if _is_pruned_cfg(teacher_cfg):
            raise LabelFreeError('LabelFreeDistiller: teacher must be the unpruned model config (the teacher is '
                                 'never slimmed), not a mmfisher.Pruned dict; leave teacher unset to use the '
                                 "student's unpruned architecture")
        if data_preprocessor is not None:
            student_cfg.setdefault('data_preprocessor', data_preprocessor)
            teacher_cfg.setdefault('data_preprocessor', data_preprocessor)
        self.student = self._build(ROOT, student_cfg, 'architecture')
        self.teacher = self._build(ROOT, teacher_cfg, 'teacher')
        self.data_preprocessor = self.student.data_preprocessor

        self.kept_channels: Optional[Dict[str, Any]] = None
        if self.pruned_student:
            channels = student_cfg.get('channels')
            cfg = load_channel_config(channels) if isinstance(channels, str) else dict(channels)
            self.kept_channels = cfg.get('layers') or {}

        same = self._same_structure(self.student, self.teacher)
        if teacher_checkpoint is not None:
            self._load_teacher(teacher_checkpoint)
        elif self.pruned_student:
            raise TeacherCheckpointError(
                'LabelFreeDistiller: the student is a mmfisher.Pruned (slimmed) model, so the teacher cannot take '
                'its weights from load_from (pruned.pth). Fix: set teacher_checkpoint to the unpruned model\'s '
                'checkpoint (the load_from that pruning started from)')
        elif not same:
            raise TeacherCheckpointError(
                'LabelFreeDistiller: teacher is a different architecture from the student, so it cannot share '
                "load_from's weights. Fix: set teacher_checkpoint to a checkpoint of the teacher config")
        else:
            self._sync_teacher()
        self._freeze_teacher()
        self._register_load_state_dict_pre_hook(self._map_plain_keys)

        self.kind, self.plan = self._pairing_plan()
        self.anchor_names: Optional[List[str]] = None
        self._graph = None
        self._said_labels = False
        self._calls = 0
        if self.anchor_spec is None or self.anchor_spec == []:
            self.anchor_names = []
        else:
            self._setup_anchors(self.input_shape, at_build=True)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_args(architecture, teacher, teacher_checkpoint, anchors, num_partitions, temperature,
                    output_weight, anchor_weight, sample_targets, seed) -> None:
        if not isinstance(architecture, dict) or 'type' not in architecture:
            raise LabelFreeError('LabelFreeDistiller: architecture must be the student\'s model config dict (with a '
                                 '"type"), e.g. architecture={{_base_.model}}, or a mmfisher.Pruned dict')
        if str(architecture['type']).split('.')[-1] == 'LabelFreeDistiller':
            raise LabelFreeError('LabelFreeDistiller: architecture is itself a LabelFreeDistiller; pass the '
                                 'model config being pruned')
        if teacher is not None and (not isinstance(teacher, dict) or 'type' not in teacher):
            raise LabelFreeError('LabelFreeDistiller: teacher must be a model config dict (with a "type") or None '
                                 '(the student\'s own architecture)')
        if teacher_checkpoint is not None and (not isinstance(teacher_checkpoint, str) or not teacher_checkpoint):
            raise TeacherCheckpointError(f'LabelFreeDistiller: teacher_checkpoint={teacher_checkpoint!r} must be '
                                         'the path (or URL) of the unpruned model\'s checkpoint, or None')
        if not (anchors is None or anchors in ('auto', 'all') or
                (isinstance(anchors, (list, tuple)) and all(isinstance(a, str) and a for a in anchors))):
            raise A.AnchorError(f'LabelFreeDistiller: anchors={anchors!r} must be "auto" (seed 002\'s rule), '
                                '"all" (every norm output), a list of module names, or None (output terms only)')
        if isinstance(num_partitions, bool) or not isinstance(num_partitions, int) or num_partitions < 1:
            raise A.AnchorError(f'LabelFreeDistiller: num_partitions={num_partitions!r} must be an int >= 1 (the '
                                'number of automatic anchor layers; seed 002 uses 5)')
        if not _number(temperature) or float(temperature) <= 0:
            raise LabelFreeError(f'LabelFreeDistiller: temperature={temperature!r} must be a number > 0 '
                                 '(1.0: the plain class distributions)')
        for name, value in (('output_weight', output_weight), ('anchor_weight', anchor_weight)):
            if not _number(value) or float(value) < 0:
                raise LabelFreeError(f'LabelFreeDistiller: {name}={value!r} must be a number >= 0 '
                                     '(1.0 for pruning, 0.1 for fine-tuning in seed 002)')
        if not isinstance(sample_targets, bool):
            raise LabelFreeError(f'LabelFreeDistiller: sample_targets={sample_targets!r} must be True or False')
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LabelFreeError(f'LabelFreeDistiller: seed={seed!r} must be an int')

    @staticmethod
    def _build(registry, cfg: Dict[str, Any], field: str) -> nn.Module:
        try:
            model = registry.build(cfg)
        except KeyError as exc:
            raise LabelFreeError(f'LabelFreeDistiller: cannot build {field} type={_type_name(cfg)!r} ({exc}). Fix: '
                                 "set default_scope (e.g. 'mmdet' or 'mmpretrain') or give a scoped type such as "
                                 "'mmdet.RetinaNet'") from exc
        if not isinstance(model, BaseModel):
            raise LabelFreeError(f'LabelFreeDistiller: {field} built a {type(model).__name__}, not an mmengine '
                                 'BaseModel with a data_preprocessor and loss/predict/tensor modes')
        return model

    @staticmethod
    def _same_structure(a: nn.Module, b: nn.Module) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)

    def _sync_teacher(self) -> None:
        with torch.no_grad():
            self.teacher.load_state_dict(self.student.state_dict())

    def _freeze_teacher(self) -> None:
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()

    def _load_teacher(self, path: str) -> None:
        from mmengine.runner.checkpoint import _load_checkpoint
        remote = '://' in path
        if not remote and not os.path.isfile(path):
            raise TeacherCheckpointError(
                f'LabelFreeDistiller: teacher_checkpoint "{path}" does not exist. Fix: set teacher_checkpoint to '
                'the unpruned, trained model\'s checkpoint (the load_from that pruning started from)')
        try:
            ckpt = _load_checkpoint(path, map_location='cpu')
        except Exception as exc:  # noqa: BLE001  any read failure: say which file and why
            why = (str(exc).strip().splitlines() or [''])[0][:160]
            raise TeacherCheckpointError(f'LabelFreeDistiller: teacher_checkpoint "{path}" cannot be read '
                                         f'({type(exc).__name__}: {why}). Fix: point it at an intact checkpoint '
                                         'of the unpruned model') from exc
        sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise TeacherCheckpointError(f'LabelFreeDistiller: teacher_checkpoint "{path}" holds no model '
                                         'state_dict. Fix: point it at a model checkpoint (an mmengine .pth)')
        sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
        if sd and all(k.startswith(('student.', 'teacher.', 'data_preprocessor.')) for k in sd):
            sd = {k[len('teacher.'):]: v for k, v in sd.items() if k.startswith('teacher.')}  # a label-free run's
        own = self.teacher.state_dict()
        missing = [k for k in own if k not in sd and not k.startswith('data_preprocessor.')]
        unexpected = [k for k in sd if k not in own and not k.startswith('data_preprocessor.')]
        shapes = [f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}' for k in own
                  if k in sd and sd[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            parts = []
            if shapes:
                parts.append(f'{len(shapes)} shape mismatches (e.g. {shapes[:3]})')
            if missing:
                parts.append(f'{len(missing)} missing keys (e.g. {missing[:3]})')
            if unexpected:
                parts.append(f'{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})')
            slim = ' It looks like a slimmed model (pruned.pth):' if shapes and not missing else ''
            raise TeacherCheckpointError(
                f'LabelFreeDistiller: teacher_checkpoint "{path}" does not match the teacher '
                f'({type(self.teacher).__name__}): {"; ".join(parts)}.{slim} Fix: the teacher is the unpruned '
                'model; set teacher_checkpoint to a checkpoint of that architecture (the model pruning started '
                'from), or set `teacher` to the config the checkpoint was trained with')
        self.teacher.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        print_log(f'LabelFreeDistiller: teacher {type(self.teacher).__name__} loaded from {path}', logger='current')

    def _map_plain_keys(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                        error_msgs) -> None:
        """``load_state_dict`` pre-hook: un-prefixed keys (a plain model checkpoint) load into the student, and into
        the teacher unless it has its own ``teacher_checkpoint`` (then the teacher's current weights fill its keys,
        so a strict load succeeds and a non-strict one reports nothing missing)."""
        plain = [k for k in state_dict if k.startswith(prefix) and not k[len(prefix):].startswith(_PREFIXES)]
        if not plain:
            return
        to_teacher = self.teacher_checkpoint is None
        for k in plain:
            rest = k[len(prefix):]
            value = state_dict.pop(k)
            state_dict.setdefault(f'{prefix}student.{rest}', value)
            if to_teacher:
                state_dict.setdefault(f'{prefix}teacher.{rest}', value)
        if not to_teacher:  # the teacher keeps its own checkpoint: nothing of it is "missing"
            for k, v in self.teacher.state_dict().items():
                state_dict.setdefault(f'{prefix}teacher.{k}', v)

    def init_weights(self) -> None:
        """The student's own initialisation; the teacher keeps its checkpoint or copies the student."""
        if hasattr(self.student, 'init_weights'):
            self.student.init_weights()
        if self.teacher_checkpoint is None and self._same_structure(self.student, self.teacher):
            self._sync_teacher()

    def train(self, mode: bool = True) -> 'LabelFreeDistiller':
        super().train(mode)
        self.teacher.eval()
        return self

    # ------------------------------------------------------------------ output pairing
    def _pairing_plan(self) -> Tuple[str, Dict[str, Any]]:
        s = self.student
        if is_classifier(s):
            head = getattr(s, 'head', None)
            if head is None:
                raise PairingError(f'LabelFreeDistiller: the classifier {type(s).__name__} has no head, so its '
                                   'output is features, not a class distribution: add a classification head')
            multi = 'MultiLabel' in type(head).__name__
            return 'classifier', dict(multi_label=multi)
        if is_detector(s):
            from mmdet.models.detectors import SingleStageDetector, TwoStageDetector
            if isinstance(s, SingleStageDetector):
                return 'dense', dict(head=self._dense_names(s.bbox_head, 'bbox_head'))
            if isinstance(s, TwoStageDetector):
                plan = {}
                if getattr(s, 'with_rpn', False):
                    plan['rpn'] = self._dense_names(s.rpn_head, 'rpn_head')
                else:
                    raise PairingError(f'LabelFreeDistiller: {type(s).__name__} has no rpn_head, so there are no '
                                       'teacher proposals to run both RoI heads on; supported two-stage detectors '
                                       'have an RPN (Faster R-CNN)')
                roi = s.roi_head
                if getattr(roi, 'with_mask', False):
                    raise PairingError(f'LabelFreeDistiller cannot pair output roi_head.mask_head '
                                       f'({type(roi.mask_head).__name__}) of {type(s).__name__}: mask outputs have '
                                       'no distillation term here, so that branch would get no gradient and be '
                                       'pruned first. Fix: distil a detector without a mask head (Faster R-CNN)')
                sig = inspect.signature(type(roi)._bbox_forward).parameters if hasattr(roi, '_bbox_forward') else {}
                if list(sig)[:3] != ['self', 'x', 'rois'] or not getattr(roi, 'with_bbox', False):
                    raise PairingError(f'LabelFreeDistiller cannot pair the outputs of roi_head '
                                       f'({type(roi).__name__}): it needs a StandardRoIHead-like '
                                       '_bbox_forward(x, rois) returning cls_score and bbox_pred (cascade and '
                                       'query-based heads are not supported)')
                if getattr(roi.bbox_head, 'custom_cls_channels', False):
                    raise PairingError('LabelFreeDistiller cannot pair output roi_head.bbox_head.cls_score: its '
                                       'loss uses custom class channels, not a softmax over classes + background')
                return 'two_stage', plan
            raise PairingError(f'LabelFreeDistiller cannot pair the outputs of {type(s).__name__}: supported are '
                               'single-stage dense detectors (RetinaNet, FCOS, ATSS, FSAF, GFL, YOLOX, RTMDet ...), '
                               'two-stage detectors with an RPN (Faster R-CNN) and mmpretrain classifiers')
        raise PairingError(f'LabelFreeDistiller cannot pair the outputs of {type(s).__name__}: it is neither an '
                           'mmdet detector nor an mmpretrain classifier')

    @staticmethod
    def _dense_names(head: nn.Module, where: str) -> Dict[str, Any]:
        try:
            params = [p for p in inspect.signature(head.loss_by_feat).parameters]
        except (TypeError, ValueError, AttributeError) as exc:
            raise PairingError(f'LabelFreeDistiller cannot pair the outputs of {where} ({type(head).__name__}): '
                               'no loss_by_feat to name them') from exc
        names = []
        for p in params:
            if p.startswith('batch_') or p in ('self', 'kwargs', 'args'):
                break
            names.append(p)
        kinds = {}
        for n in names:
            low = n.lower()
            if 'cls' in low:
                kinds[n] = 'cls'
            elif any(q in low for q in _QUALITY):
                kinds[n] = 'quality'
            elif any(b in low for b in _BOX):
                kinds[n] = 'box'
            else:
                raise PairingError(f'LabelFreeDistiller cannot pair output {where}.{n} of {type(head).__name__}: '
                                   'only class scores (cls_*), box regression (bbox_*/reg_*) and centerness / '
                                   'objectness / IoU outputs have distillation terms')
        if list(kinds.values()).count('cls') != 1:
            raise PairingError(f'LabelFreeDistiller cannot pair the outputs of {where} ({type(head).__name__}): '
                               f'expected exactly one class-score output, found {names}')
        return dict(names=names, kinds=kinds, where=where)

    # ------------------------------------------------------------------ anchors
    def _default_shape(self) -> Tuple[int, int, int]:
        return (3, 224, 224) if self.kind == 'classifier' else (3, 320, 320)

    def _setup_anchors(self, shape: Optional[Sequence[int]], at_build: bool = False) -> None:
        given = shape is not None
        shape = tuple(int(v) for v in shape) if given else self._default_shape()
        try:
            graph = analyze_fast(self.student, lambda m: make_trace_forward(m, shape))
            sel = analyze_fast(self.teacher, lambda m: make_trace_forward(m, shape)) if self.pruned_student else graph
        except Exception as exc:  # noqa: BLE001
            if at_build and not given:  # the default shape may not suit this model: retry at the first batch
                print_log(f'LabelFreeDistiller: tracing at {shape} failed ({type(exc).__name__}: {exc}); anchors '
                          'are chosen at the first batch', logger='current')
                return
            raise A.AnchorError(f'LabelFreeDistiller: cannot trace the student at input_shape={shape} to choose '
                                f'anchors ({type(exc).__name__}: {exc}). Fix: set input_shape to the training '
                                'resolution, or anchors=None') from exc
        spec = self.anchor_spec
        if spec == 'auto':
            choices = A.select_anchors(sel, self.num_partitions)
            names = [c.anchor for c in choices]
            lines = [f'  partition {c.partition + 1} ({c.units} units, last {c.last_unit}): {c.anchor}'
                     + (f' (after {c.layer})' if c.layer != c.anchor else '') + (f' [{c.note}]' if c.note else '')
                     for c in choices]
            how = f'seed 002 rule, {self.num_partitions} partitions of {len(sel.units)} units'
        elif spec == 'all':
            names = A.every_anchor(sel)
            lines = [f'  {", ".join(names[:12])}' + (f', ... {len(names) - 12} more' if len(names) > 12 else '')]
            how = 'every norm output after a conv/linear layer'
        else:
            names = A.check_anchor_names(self.student, spec, 'anchors')
            A.check_anchor_names(self.teacher, spec, 'anchors (in the teacher)')
            lines = [f'  {n}' for n in names]
            how = 'named'
        for n in names:  # every chosen name must exist in both
            A.check_anchor_names(self.student, [n], 'anchors')
            A.check_anchor_names(self.teacher, [n], 'anchors (in the teacher)')
        self._graph = graph
        self.anchor_names = names
        print_log(f'LabelFreeDistiller: {len(names)} anchor layer(s) ({how}):\n' + '\n'.join(lines),
                  logger='current')

    def _anchor_dim(self, name: str, ndim: int) -> int:
        rule = self._graph.rules.get(name) if self._graph is not None else None
        return rule.out_dim(ndim) if rule is not None else 1

    def _anchor_indices(self, name: str):
        alive = A.alive_positions(self._graph, self.student, name) if self._graph is not None else None
        kept = None
        if self.kept_channels is not None and name in self.kept_channels:
            spec = self.kept_channels[name] or {}
            kept = spec.get('out') if spec.get('out') is not None else spec.get('in')
        return A.compose(kept, alive)

    @contextlib.contextmanager
    def _capture(self, model: nn.Module, names: Sequence[str]):
        store: Dict[str, List[torch.Tensor]] = {n: [] for n in names}
        modules = dict(model.named_modules())
        handles = []
        for n in names:
            def hook(module, args, output, n=n):
                store[n].append([t.clone() for t in _flat_tensors(output)])
            handles.append(modules[n].register_forward_hook(hook))
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    def _anchor_loss(self, s_cap, t_cap, gen, batch) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        total, noise = None, None
        for name in self.anchor_names:
            s_calls, t_calls = s_cap[name], t_cap[name]
            if len(s_calls) != len(t_calls) or not s_calls:
                raise A.AnchorError(f'anchor "{name}" ran {len(s_calls)} time(s) in the student and '
                                    f'{len(t_calls)} in the teacher: its outputs cannot be paired. Fix: name a '
                                    'module both run equally often')
            s_idx, t_idx = self._anchor_indices(name)
            for s_outs, t_outs in zip(s_calls, t_calls):
                if len(s_outs) != len(t_outs):
                    raise A.AnchorError(f'anchor "{name}" returns {len(s_outs)} tensors in the student and '
                                        f'{len(t_outs)} in the teacher: they cannot be paired')
                for s, t in zip(s_outs, t_outs):
                    single = len(s_outs) == 1
                    dim = self._anchor_dim(name, s.dim())
                    si, ti = (s_idx, t_idx) if single else (None, None)
                    mse = A.anchor_mse(s, t, dim, si, ti, name)
                    total = mse if total is None else total + mse
                    if gen is not None:
                        z = A.fisher_noise_mse(s, t, batch, gen, dim, si, ti, name)
                        noise = z if noise is None else noise + z
        return total, noise

    # ------------------------------------------------------------------ forward
    def forward(self, inputs: torch.Tensor, data_samples=None, mode: str = 'tensor'):
        if mode == 'loss':
            return self.loss(inputs, data_samples)
        if mode in ('predict', 'tensor'):
            return self.student(inputs, data_samples, mode=mode)
        raise RuntimeError(f'LabelFreeDistiller: invalid mode "{mode}"; only supports loss, predict and tensor')

    def _note_labels(self, data_samples) -> None:
        if self._said_labels or not data_samples:
            return
        found = None
        for sample in data_samples:
            gt = getattr(sample, 'gt_instances', None)
            if gt is not None and len(gt) > 0:
                found = 'gt_instances'
            elif hasattr(sample, 'keys') and any(k in sample.keys() for k in ('gt_label', 'gt_score')):
                found = 'gt_label'
            if found:
                break
        if found:
            self._said_labels = True
            print_log(f'LabelFreeDistiller: the training data carries labels ({found}); they are ignored: the loss '
                      'is distillation from the teacher only', logger='current')

    @contextlib.contextmanager
    def exact_targets(self) -> Iterator[None]:
        """Within it, :meth:`loss` gives the exact terms only (``sample_targets`` off): for forward-only loss
        measurements (balanced pruning's curves), which the sampled terms' noise would blur; restored after."""
        saved = self.sample_targets
        self.sample_targets = False
        try:
            yield
        finally:
            self.sample_targets = saved

    def _generator(self, device: torch.device) -> torch.Generator:
        from mmengine.dist import get_rank
        from mmengine.logging import MessageHub
        it = None
        try:
            it = MessageHub.get_current_instance().get_info('iter')
        except Exception:  # noqa: BLE001  no message hub outside a runner
            it = None
        if it is None:
            it = self._calls
        digest = hashlib.sha256(repr((self.seed, int(it), int(get_rank()))).encode()).digest()
        gen = torch.Generator(device=device)
        gen.manual_seed(int.from_bytes(digest[:8], 'little') & ((1 << 63) - 1))
        return gen

    def loss(self, inputs: torch.Tensor, data_samples=None) -> Dict[str, torch.Tensor]:
        """Distillation terms on one preprocessed batch (see the module docstring); no label is read."""
        self._note_labels(data_samples)
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        if self.anchor_names is None:
            self._setup_anchors(tuple(inputs.shape[1:]))
        self._calls += 1
        batch = int(inputs.shape[0])
        gen = self._generator(inputs.device) if self.sample_targets else None
        names = self.anchor_names
        with self._capture(self.teacher, names) as t_cap, torch.no_grad():
            t_out = self._teacher_forward(inputs, data_samples)
        with self._capture(self.student, names) as s_cap:
            s_out = self._student_forward(inputs, data_samples, t_out)
        terms: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        if self.kind == 'classifier':
            terms['cls'] = self._class_terms(s_out, t_out, gen, batch)
        elif self.kind == 'dense':
            terms.update(self._dense_terms(self.plan['head'], self.student.bbox_head, s_out, t_out, '', gen,
                                           batch))
        else:
            terms.update(self._dense_terms(self.plan['rpn'], self.student.rpn_head, s_out['rpn'], t_out['rpn'],
                                           'rpn_', gen, batch))
            terms.update(self._roi_terms(s_out['roi'], t_out['roi'], gen, batch))
        losses: Dict[str, torch.Tensor] = {}
        for key, (exact, noise) in terms.items():
            losses[f'loss_kd_{key}'] = self.output_weight * (exact if noise is None else exact + noise)
            if noise is not None:
                losses[f'kd_{key}'] = exact.detach()
        if names:
            exact, noise = self._anchor_loss(s_cap, t_cap, gen, batch)
            losses['loss_anchor'] = self.anchor_weight * (exact if noise is None else exact + noise)
            if noise is not None:
                losses['kd_anchor'] = exact.detach()
        return losses

    # teacher / student forwards: the same batch, the student's preprocessing
    def _teacher_forward(self, inputs, data_samples):
        t = self.teacher
        if self.kind == 'classifier':
            return t(inputs, mode='tensor')
        x = t.extract_feat(inputs)
        if self.kind == 'dense':
            return t.bbox_head(x)
        from mmdet.structures.bbox import bbox2roi
        rpn = t.rpn_head(x)
        metas = [s.metainfo for s in data_samples]
        proposals = t.rpn_head.predict_by_feat(*rpn, batch_img_metas=metas, rescale=False)
        rois = bbox2roi([p.bboxes for p in proposals])
        roi = t.roi_head._bbox_forward(x, rois)
        return dict(rpn=rpn, rois=rois, roi=(roi['cls_score'], roi['bbox_pred']))

    def _student_forward(self, inputs, data_samples, t_out):
        s = self.student
        if self.kind == 'classifier':
            return s(inputs, mode='tensor')
        x = s.extract_feat(inputs)
        if self.kind == 'dense':
            return s.bbox_head(x)
        rpn = s.rpn_head(x)
        roi = s.roi_head._bbox_forward(x, t_out['rois'])
        return dict(rpn=rpn, roi=(roi['cls_score'], roi['bbox_pred']))

    # ------------------------------------------------------------------ output terms
    def _class_terms(self, s_out, t_out, gen, batch):
        s_list, t_list = _flat_tensors(s_out), _flat_tensors(t_out)
        if len(s_list) != 1 or len(t_list) != 1 or s_list[0].dim() != 2 or s_list[0].shape != t_list[0].shape:
            raise PairingError(f'LabelFreeDistiller cannot pair output head of {type(self.student).__name__}: '
                               f'expected one (N, num_classes) score tensor from student and teacher, got '
                               f'{[tuple(x.shape) for x in s_list]} and {[tuple(x.shape) for x in t_list]}')
        s, t = s_list[0].float(), t_list[0].float().detach()
        n = max(s.shape[0], 1)
        if self.plan['multi_label']:
            p_t = torch.sigmoid(t)
            exact = _bkl(s, t, p_t).sum() / n
            noise = None
            if gen is not None:
                y = torch.bernoulli(p_t.to(gen.device), generator=gen).to(s.device)
                noise = ((p_t - y) * s).sum() / n
            return exact, noise
        tau = self.temperature
        log_s, log_t = F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1)
        p_t = log_t.exp()
        exact = (tau ** 2) * (p_t * (log_t - log_s)).sum() / n
        noise = None
        if gen is not None:
            y = torch.multinomial(p_t.to(gen.device), 1, generator=gen).flatten().to(s.device)
            onehot = F.one_hot(y, p_t.shape[1]).to(p_t.dtype)
            noise = (tau ** 2) * ((p_t - onehot) * log_s).sum() / n
        return exact, noise

    def _dense_terms(self, plan, head, s_out, t_out, prefix, gen, batch):
        names, kinds, where = plan['names'], plan['kinds'], plan['where']
        if not isinstance(s_out, (tuple, list)) or len(s_out) < len(names) or len(t_out) < len(names):
            raise PairingError(f'LabelFreeDistiller cannot pair the outputs of {where}: expected {len(names)} '
                               f'outputs {names}, got {len(s_out) if isinstance(s_out, (tuple, list)) else s_out}')
        cls_i = names.index(next(n for n in names if kinds[n] == 'cls'))
        c = int(getattr(head, 'cls_out_channels', 0) or 0)
        sigmoid = bool(getattr(head, 'use_sigmoid_cls', True))
        levels = len(t_out[cls_i])
        acc = {n: [0.0, 0.0, 0.0] for n in names}  # numerator, normaliser, noise
        for n in names:
            if len(s_out[names.index(n)]) != levels or len(t_out[names.index(n)]) != levels:
                raise PairingError(f'LabelFreeDistiller cannot pair output {where}.{n}: '
                                   f'{len(s_out[names.index(n)])} levels in the student, '
                                   f'{len(t_out[names.index(n)])} in the teacher, {levels} class-score levels')
        for lvl in range(levels):
            t_c = t_out[cls_i][lvl].float().detach()
            s_c = s_out[cls_i][lvl].float()
            if s_c.shape != t_c.shape or t_c.dim() != 4 or c <= 0 or t_c.shape[1] % c:
                raise PairingError(f'LabelFreeDistiller cannot pair output {where}.{names[cls_i]} (level {lvl}): '
                                   f'student {tuple(s_c.shape)}, teacher {tuple(t_c.shape)}, '
                                   f'{c} class channels per anchor')
            nb, ac, h, w = t_c.shape
            a = ac // c
            t5, s5 = t_c.view(nb, a, c, h, w), s_c.view(nb, a, c, h, w)
            slot = acc[names[cls_i]]
            if sigmoid:
                p_t = torch.sigmoid(t5)
                slot[0] = slot[0] + _bkl(s5, t5, p_t).sum()
                slot[1] = slot[1] + p_t.sum()
                weight = p_t.amax(2)  # (N, A, H, W)
                if gen is not None:
                    y = torch.bernoulli(p_t.to(gen.device), generator=gen).to(s5.device)
                    slot[2] = slot[2] + ((p_t - y) * s5).sum()
            else:
                log_t, log_s = F.log_softmax(t5, 2), F.log_softmax(s5, 2)
                p_t = log_t.exp()
                fg = 1 - p_t[:, :, -1]  # mmdet's softmax heads put background last
                slot[0] = slot[0] + (p_t * (log_t - log_s)).sum()
                slot[1] = slot[1] + fg.sum()
                weight = fg
                if gen is not None:
                    flat = p_t.permute(0, 1, 3, 4, 2).reshape(-1, c)
                    y = torch.multinomial(flat.to(gen.device), 1, generator=gen).flatten().to(s5.device)
                    onehot = F.one_hot(y, c).to(p_t.dtype).view(nb, a, h, w, c).permute(0, 1, 4, 2, 3)
                    slot[2] = slot[2] + ((p_t - onehot) * log_s).sum()
            for j, n in enumerate(names):
                if j == cls_i:
                    continue
                o_t = t_out[j][lvl].float().detach()
                o_s = s_out[j][lvl].float()
                if o_s.shape != o_t.shape or o_t.dim() != 4 or o_t.shape[0] != nb or o_t.shape[2:] != (h, w) or \
                        o_t.shape[1] % a:
                    raise PairingError(f'LabelFreeDistiller cannot pair output {where}.{n} (level {lvl}): student '
                                       f'{tuple(o_s.shape)}, teacher {tuple(o_t.shape)}, expected (N, {a} x D, '
                                       f'{h}, {w}) like the class scores')
                d = o_t.shape[1] // a
                ot5, os5 = o_t.view(nb, a, d, h, w), o_s.view(nb, a, d, h, w)
                coef = (weight / d).unsqueeze(2)  # (N, A, 1, H, W)
                slot = acc[n]
                slot[1] = slot[1] + weight.sum()
                if kinds[n] == 'box':
                    diff = os5 - ot5
                    slot[0] = slot[0] + (coef * diff ** 2).sum()
                    if gen is not None:
                        xi = torch.randn(diff.shape, generator=gen, device=gen.device).to(diff.device)
                        slot[2] = slot[2] + (coef.sqrt() * xi * diff).sum()
                else:
                    p_q = torch.sigmoid(ot5)
                    slot[0] = slot[0] + (coef * _bkl(os5, ot5, p_q)).sum()
                    if gen is not None:
                        y = torch.bernoulli(p_q.to(gen.device), generator=gen).to(os5.device)
                        slot[2] = slot[2] + (coef * (p_q - y) * os5).sum()
        out = {}
        for n in names:
            num, den, noise = acc[n]
            z = torch.clamp(torch.as_tensor(den, dtype=torch.float32), min=1.0 if kinds[n] == 'cls' else 1e-6)
            exact = num / z
            extra = None
            if gen is not None:
                if kinds[n] == 'box':
                    extra = -torch.sqrt(2.0 / (max(batch, 1) * z)) * noise
                else:
                    extra = noise / z
            out[prefix + self._short(n, kinds[n])] = (exact, extra)
        return out

    @staticmethod
    def _short(name: str, kind: str) -> str:
        if kind == 'cls':
            return 'cls'
        if kind == 'box':
            return 'bbox'
        base = name[:-2] if name.endswith('es') else name.rstrip('s')
        return base

    def _roi_terms(self, s_roi, t_roi, gen, batch):
        head = self.student.roi_head.bbox_head
        s_cls, s_box = (x.float() for x in s_roi)
        t_cls, t_box = (x.float().detach() for x in t_roi)
        if s_cls.shape != t_cls.shape or s_cls.dim() != 2:
            raise PairingError(f'LabelFreeDistiller cannot pair output roi_head.bbox_head.cls_score: student '
                               f'{tuple(s_cls.shape)}, teacher {tuple(t_cls.shape)}')
        if s_box is None or t_box is None or s_box.shape != t_box.shape or s_box.dim() != 2:
            raise PairingError('LabelFreeDistiller cannot pair output roi_head.bbox_head.bbox_pred: student '
                               f'{None if s_box is None else tuple(s_box.shape)}, teacher '
                               f'{None if t_box is None else tuple(t_box.shape)}')
        r, k = t_cls.shape
        nr = max(r, 1)
        tau = self.temperature
        log_s, log_t = F.log_softmax(s_cls / tau, 1), F.log_softmax(t_cls / tau, 1)
        p_t = log_t.exp()
        cls_exact = (tau ** 2) * (p_t * (log_t - log_s)).sum() / nr
        cls_noise = None
        if gen is not None and r:
            y = torch.multinomial(p_t.to(gen.device), 1, generator=gen).flatten().to(s_cls.device)
            cls_noise = (tau ** 2) * ((p_t - F.one_hot(y, k).to(p_t.dtype)) * log_s).sum() / nr
        probs = F.softmax(t_cls, 1)
        num_classes = int(getattr(head, 'num_classes', k - 1))
        if s_box.shape[1] == 4 * num_classes:
            weight = probs[:, :num_classes]                     # (R, C): each class's box by its probability
            diff = (s_box - t_box).view(r, num_classes, 4)
        elif s_box.shape[1] == 4:
            weight = (1 - probs[:, num_classes:num_classes + 1].sum(1, keepdim=True))  # (R, 1) foreground
            diff = (s_box - t_box).view(r, 1, 4)
        else:
            raise PairingError(f'LabelFreeDistiller cannot pair output roi_head.bbox_head.bbox_pred: {s_box.shape[1]} '
                               f'channels are neither 4 nor 4 x {num_classes} classes')
        coef = (weight / 4).unsqueeze(2)
        z = torch.clamp(weight.sum(), min=1e-6)
        box_exact = (coef * diff ** 2).sum() / z
        box_noise = None
        if gen is not None:
            xi = torch.randn(diff.shape, generator=gen, device=gen.device).to(diff.device)
            box_noise = -torch.sqrt(2.0 / (max(batch, 1) * z)) * (coef.sqrt() * xi * diff).sum()
        return {'roi_cls': (cls_exact, cls_noise), 'roi_bbox': (box_exact, box_noise)}


def extract_student(src: str, dst: str) -> str:
    """Write the student of a ``LabelFreeDistiller`` checkpoint (keys ``student.*``, e.g. a label-free fine-tune's
    ``epoch_12.pth``) as a plain model checkpoint ``{'meta', 'state_dict'}`` for ``load_from`` / ``tools/test.py``
    with the ``mmfisher.Pruned`` config of the same channels.json (written atomically). Returns ``dst``.

    Raises:
        LabelFreeError: ``src`` is not a checkpoint with ``student.*`` keys.
    """
    from mmengine.runner.checkpoint import _load_checkpoint

    from ..core.files import atomic_write
    if not os.path.isfile(src):
        raise LabelFreeError(f'extract_student: "{src}" does not exist; give a checkpoint of a label-free run')
    ckpt = _load_checkpoint(src, map_location='cpu')
    sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else {}
    sd = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in sd.items()}
    student = {k[len('student.'):]: v for k, v in sd.items() if k.startswith('student.')}
    if not student:
        raise LabelFreeError(f'extract_student: "{src}" has no student.* weights: it is not a LabelFreeDistiller '
                             'checkpoint (a plain model checkpoint can be used as it is)')
    meta = dict(ckpt.get('meta') or {}) if isinstance(ckpt, dict) else {}
    meta['extracted_from'] = os.path.abspath(src)
    return atomic_write(dst, lambda f: torch.save({'meta': meta, 'state_dict': student}, f))


MODELS.register_module(name='LabelFreeDistiller', module=LabelFreeDistiller)
MMENGINE_MODELS.register_module(name='LabelFreeDistiller', module=LabelFreeDistiller)
