# The tiny ResNet of resnet_tiny_shapes_cls.py on the six-class bundled set (tools/make_data.py ->
# data/generated/shapes_cls_fine): circles, squares, triangles, pentagons, hexagons and stars of 20-40 px in 64 px,
# 2,400 train and 1,800 val images. Converged (x16, run twice) it scores 97.4% (on shapes_cls_hard 99.1%, where
# pruning methods tie after a fine-tune): benchmarks/balanced.py's task 'cls_fine'.
_base_ = ['./resnet_tiny_shapes_cls.py']

data_root = 'data/generated/shapes_cls_fine/'
metainfo = dict(classes=('circle', 'hexagon', 'pentagon', 'square', 'star', 'triangle'))  # the folders, sorted
data_preprocessor = dict(num_classes=6)
model = dict(head=dict(num_classes=6))
train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo))
test_dataloader = val_dataloader

max_epochs = 8  # 600 iterations of 75, as the 3-class configs' 30 epochs of 19
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=10),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, end=max_epochs, T_max=max_epochs, eta_min=1e-5,
         convert_to_iter_based=True),
]
