# Fine-tune (or test) the slimmed model that FisherPruningHook wrote: channels.json + pruned.pth.
#
# In your fine-tune config, after the same model _base_ that was pruned:
#
#   _base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', 'mmfisher::_base_/fisher_finetune.py']
#   model = dict(
#       _delete_=True,                   # replace the base model dict instead of merging into it
#       type='mmfisher.Pruned',          # build `architecture`, slim it to `channels`: a smaller RetinaNet
#       architecture={{_base_.model}},   # the unpruned model config, exactly as it was pruned
#       channels='work_dirs/retinanet_prune/channels.json')
#   load_from = 'work_dirs/retinanet_prune/pruned.pth'   # slimmed weights; they load strictly
#
# `{{_base_.model}}` is replaced by the merged `model` of this config's _base_ files, so override the unpruned model
# there (or in the dict above) the same way it was overridden when pruning. The result is the architecture's own
# class without masks or hooks: tools/test.py, the mmdet / mmpretrain inferencers and torch.onnx.export run it like
# any other model, and it is `channels.json`'s FLOPs at the same resolution.
#
# If your fine-tune config inherits the pruning config instead of the model config, also set `custom_hooks = []`
# (or whatever hooks you keep) so the FisherPruningHook does not run again.
#
# The architecture's init_cfg (e.g. a Pretrained ImageNet backbone) is kept: `runner.train()` may download it and
# load what fits into the slimmed layers before `load_from` overwrites every weight. Set the backbone's
# init_cfg=None to skip that download.
#
# 'mmfisher.Pruned' makes mmengine import mmfisher by itself, so this file sets no keys at all (mmengine refuses a
# key set by two _base_ files): it is this documentation, and a stable name to list in _base_.
