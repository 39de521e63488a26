# Fine-tune the slimmed tiny ViT that configs/tiny/vit_tiny_cls_prune.py wrote (a real, smaller VisionTransformer:
# narrower embedding, fewer heads, narrower MLPs); tools/test.py and torch.onnx.export take it as it is.
_base_ = ['./vit_tiny_shapes_cls.py', '../_base_/fisher_finetune.py']

model = dict(_delete_=True, type='mmfisher.Pruned', architecture={{_base_.model}},
             channels='work_dirs/vit_tiny_cls_prune/channels.json')
load_from = 'work_dirs/vit_tiny_cls_prune/pruned.pth'
max_epochs = 10
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
