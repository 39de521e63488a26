# The tiny ResNet of resnet_tiny_shapes_cls.py on the harder bundled set (tools/make_data.py ->
# data/generated/shapes_cls_hard): the same 600 train images' format with shapes of 24-48 px instead of 28-56,
# and 1,200 val images, so that methods a converged model on shapes_cls (about 99% top-1 on 150 val images) ties
# can be told apart. benchmarks/balanced.py's task 'cls_hard'.
_base_ = ['./resnet_tiny_shapes_cls.py']

data_root = 'data/generated/shapes_cls_hard/'
train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
