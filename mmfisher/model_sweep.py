"""Models the engine is checked on, and the check: mm zoo families beyond plain CNNs, torchvision and timm models,
built with random weights, traced with ``analyze_fast`` (what FisherPruningHook runs), masked at random, slimmed
and compared (``compare_masked_slimmed``). Shared by ``benchmarks/prunable_share.py`` and the tests.

A family is ``(source, name, input shape (C, H, W), overrides)``: ``source`` is ``'mm'`` (``name`` a config spec,
``overrides`` dotted config keys), ``'torchvision'`` or ``'timm'`` (``name`` the model's builder name,
``overrides`` keyword arguments).
"""
import time
from collections import Counter
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

Family = Tuple[str, str, Tuple[int, int, int], Dict[str, Any]]

MM_FAMILIES: Dict[str, Family] = {
    'convnext': ('mm', 'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py', (3, 64, 64), {}),
    'swin': ('mm', 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py', (3, 64, 64),
             {'model.backbone.img_size': 64, 'model.backbone.pad_small_map': True}),
    'vit': ('mm', 'mmpretrain::vision_transformer/vit-base-p16_64xb64_in1k.py', (3, 64, 64),
            {'model.backbone.img_size': 64}),
    'resnest': ('mm', 'mmpretrain::resnest/resnest50_32xb64_in1k.py', (3, 64, 64), {}),
    'detr': ('mm', 'mmdet::detr/detr_r50_8xb2-150e_coco.py', (3, 128, 128), {}),
    'deformable_detr': ('mm', 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py', (3, 128, 128), {}),
    'dino': ('mm', 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', (3, 128, 128), {'model.num_queries': 100}),
    'mask_rcnn_swin': ('mm', 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py', (3, 128, 128), {}),
}

_TV_DET = ('fasterrcnn_resnet50_fpn', 'fasterrcnn_mobilenet_v3_large_fpn', 'maskrcnn_resnet50_fpn',
           'keypointrcnn_resnet50_fpn', 'retinanet_resnet50_fpn', 'fcos_resnet50_fpn', 'ssd300_vgg16',
           'ssdlite320_mobilenet_v3_large')
TORCHVISION: Dict[str, Tuple[int, int, int]] = dict(
    {n: (3, 64, 64) for n in (
        'resnet18', 'resnext50_32x4d', 'mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small', 'efficientnet_b0',
        'efficientnet_v2_s', 'regnet_x_400mf', 'regnet_y_400mf', 'densenet121', 'shufflenet_v2_x0_5',
        'squeezenet1_0', 'mnasnet0_5', 'googlenet', 'vgg11_bn', 'convnext_tiny', 'swin_t', 'swin_v2_t')},
    vit_b_16=(3, 224, 224), maxvit_t=(3, 224, 224), alexnet=(3, 224, 224),
    **{n: (3, 128, 128) for n in _TV_DET if not n.startswith('ssd')},
    ssd300_vgg16=(3, 300, 300), ssdlite320_mobilenet_v3_large=(3, 128, 128))

#: timm models by family, small variants; 64x64 unless the model fixes its input size (``img_size`` is passed
#: where the model takes it)
TIMM: Dict[str, Tuple[int, int, int]] = dict(
    {n: (3, 64, 64) for n in (
        'resnet18', 'resnet50d', 'resnext26ts', 'seresnext26d_32x4d', 'resnest14d', 'skresnet18', 'res2net50_14w_8s',
        'regnetx_002', 'regnety_002', 'regnetz_b16', 'efficientnet_b0', 'tf_efficientnet_b0', 'tf_efficientnetv2_b0',
        'efficientnetv2_rw_t', 'mixnet_s', 'mnasnet_100', 'fbnetc_100', 'spnasnet_100', 'tinynet_e', 'lcnet_050',
        'hardcorenas_a', 'mobilenetv2_100', 'mobilenetv3_large_100', 'mobilenetv3_small_050',
        'mobilenetv4_conv_small', 'ghostnet_100', 'ghostnetv2_100', 'rexnet_100', 'semnasnet_050', 'densenet121',
        'dla34', 'dpn68', 'hrnet_w18_small', 'cspresnet50', 'cspdarknet53', 'darknet53', 'vovnet39a',
        'ese_vovnet19b_dw', 'selecsls42b', 'gernet_s', 'repvgg_a0', 'repghostnet_050', 'hgnetv2_b0', 'xception41',
        'nf_resnet26', 'dm_nfnet_f0', 'tresnet_m', 'convnext_atto', 'convnextv2_atto', 'convnext_atto_ols',
        'efficientformerv2_s0', 'poolformer_s12', 'poolformerv2_s12', 'convformer_s18', 'caformer_s18',
        'vit_tiny_patch16_224', 'deit_tiny_patch16_224', 'deit3_small_patch16_224', 'beit_base_patch16_224',
        'eva02_tiny_patch14_224', 'swin_tiny_patch4_window7_224', 'swinv2_tiny_window8_256', 'cait_xxs24_224',
        'xcit_nano_12_p16_224', 'pvt_v2_b0', 'twins_svt_small', 'coat_lite_tiny', 'levit_128s', 'mixer_s16_224',
        'resmlp_12_224', 'gmlp_ti16_224', 'maxvit_tiny_rw_224', 'coatnet_0_rw_224', 'mobilevit_xxs',
        'mobilevitv2_050', 'edgenext_xx_small', 'fastvit_t8', 'efficientvit_b0', 'efficientvit_m0',
        'tiny_vit_5m_224', 'nextvit_small', 'repvit_m0_9', 'inception_next_tiny', 'focalnet_tiny_srf', 'davit_tiny',
        'volo_d1_224', 'pit_ti_224', 'tnt_s_patch16_224', 'sequencer2d_s')},
    inception_v3=(3, 128, 128), efficientformer_l1=(3, 224, 224), crossvit_tiny_240=(3, 240, 240))


def randomize_degenerate(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give zero-initialised weights (ViT's classifier, deformable attention, zero-init residual norms, layer
    scales at 1e-6) and default norm statistics random values: otherwise outputs are constant or blind to pruned
    channels and a masked-vs-slimmed comparison is vacuous. Returns ``model`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif p.dim() == 1 and name.endswith('weight') and not bool(p.any()):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() <= 1 and p.numel() and name.endswith(('gamma', 'scale', 'weight')) and \
                    bool((p.abs() < 1e-4).all()):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model.eval()


def build_mm(spec: str, overrides: Dict[str, Any]) -> nn.Module:
    from .zoo import build_model, load_config
    cfg = load_config(spec)
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split('.')
        for k in path:
            node = node[k]
        node[last] = value
    return build_model(cfg, init_weights=True)


def build_torchvision(name: str) -> nn.Module:
    import torchvision
    if name in _TV_DET:
        classes = 2 if name.startswith('keypoint') else 5
        return getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=classes)
    return getattr(torchvision.models, name)(weights=None, num_classes=10)


def build_timm(name: str, size: int) -> nn.Module:
    import timm
    try:
        return timm.create_model(name, pretrained=False, num_classes=10, img_size=size)
    except TypeError:  # the model takes no img_size
        return timm.create_model(name, pretrained=False, num_classes=10)


def build(source: str, name: str, shape: Tuple[int, int, int], overrides: Optional[Dict[str, Any]] = None,
          seed: int = 0) -> nn.Module:
    """The model of one family entry, random weights made non-degenerate (:func:`randomize_degenerate`)."""
    torch.manual_seed(seed)
    if source == 'mm':
        model = build_mm(name, overrides or {})
    elif source == 'torchvision':
        model = build_torchvision(name)
    elif source == 'timm':
        model = build_timm(name, shape[-1])
    else:
        raise ValueError(f'unknown model source {source!r}: use mm, torchvision or timm')
    return randomize_degenerate(model, seed)


def forward_maker(source: str, shape: Tuple[int, int, int], batch: int = 1, seed: int = 0
                  ) -> Callable[[nn.Module], Callable[[nn.Module], Any]]:
    """``make_forward`` for :func:`~mmfisher.core.analyze_fast` and the comparison: an mm model's tensor forward
    on a fake batch, a plain model called on a random batch (inputs on the model's device, in its
    dtype: the float64 re-check runs a double copy)."""
    if source == 'mm':
        from .zoo import tensor_forward
        return lambda m: tensor_forward(m, shape, seed=seed)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))

    def make(m: nn.Module) -> Callable[[nn.Module], Any]:
        def run(mm: nn.Module) -> Any:
            p = next(mm.parameters())
            return mm(x.to(device=p.device, dtype=p.dtype if p.is_floating_point() else x.dtype))
        return run
    return make


def _dense_head_outputs(mm: nn.Module, x: torch.Tensor) -> Any:
    """A torchvision single-stage detector's head outputs before its post-processing (score threshold, top-k and
    NMS over random weights' near-equal scores flip under float rounding, which says nothing of the slimming)."""
    images, _ = mm.transform(list(x))
    feats = mm.backbone(images.tensors)
    return mm.head(list(feats.values()) if isinstance(feats, dict) else [feats])


def compare_maker(source: str, name: str, shape: Tuple[int, int, int], batch: int = 2, seed: int = 0
                  ) -> Callable[[nn.Module], Callable[[nn.Module], Any]]:
    """The comparison's ``make_forward``: :func:`forward_maker`, except the dense-head outputs of torchvision's
    single-stage detectors (SSD, SSDlite, RetinaNet, FCOS)."""
    if source != 'torchvision' or not name.startswith(('ssd', 'retinanet', 'fcos')):
        return forward_maker(source, shape, batch, seed)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))

    def make(m: nn.Module) -> Callable[[nn.Module], Any]:
        def run(mm: nn.Module) -> Any:
            p = next(mm.parameters())
            return _dense_head_outputs(mm, x.to(device=p.device, dtype=p.dtype))
        return run
    return make


def reasons_of(graph) -> Counter:
    """Unprunable layers counted by reason (the layer-specific part of a reason cut off)."""
    out = Counter()
    for why in graph.unprunable.values():
        out[why.split(' (')[0] if 'channels)' in why else why] += 1
    return out


def check(model: nn.Module, source: str, shape: Tuple[int, int, int], ratio: float = 0.3, seed: int = 0,
          compare: bool = True, name: str = '') -> Dict[str, Any]:
    """Trace, mask a random ``ratio`` of every unit, slim a copy, compare (on :func:`compare_maker`'s outputs;
    ``name``: the model's builder name). Returns ``channels_total``,
    ``channels_prunable``, ``share``, ``units``, ``top_reasons`` and (``compare``) ``ok``, ``max_abs_diff``,
    ``output_scale``, ``float64_max_abs_diff``, ``params_ratio`` (slimmed / full), ``slim``."""
    from .core import analyze_fast, compare_masked_slimmed, random_alive
    t0 = time.perf_counter()
    graph = analyze_fast(model, forward_maker(source, shape, 1, seed))
    s = graph.summary()
    total, prunable = s['channels_total'], s['channels_prunable']
    out: Dict[str, Any] = dict(shape=list(shape), channels_total=total, channels_prunable=prunable,
                               share=round(prunable / max(total, 1), 4), units=len(graph.units),
                               trace_seconds=round(time.perf_counter() - t0, 2), trace_device=graph.device,
                               top_reasons=reasons_of(graph).most_common(8), graph=graph)
    if compare and graph.num_atoms:
        alive = random_alive(graph, ratio, seed)
        make = compare_maker(source, name, shape, 2 if source != 'mm' else 1, seed)
        n_full = sum(p.numel() for p in model.parameters())
        res = compare_masked_slimmed(model, graph, make(model), alive, make_forward=make)
        out.update(ok=bool(res['ok']), max_abs_diff=float(res['max_abs_diff']), output_scale=float(res['scale']),
                   float64_max_abs_diff=res.get('float64_max_abs_diff'), slim=res['slim'],
                   params_ratio=round(sum(p.numel() for p in res['slim'].parameters()) / max(n_full, 1), 4))
    return out
