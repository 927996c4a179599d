# AlignZeg with the tiny CLIP on your own data, sized for a CPU (the synthetic recipe at 64x64 crops): a
# check that a prepared folder trains and evaluates end to end before the ViT-B/16 run.
#   alignzeg prepare folder --images IMG --labels LAB --classes classes.txt --unseen a b --out data/mine
#   alignzeg train experiments/configs/alignzeg/alignzeg_tiny-vit_1xb16-2k_folder-custom-64x64.py --data-root data/mine
# The data root is the only value to set (here or with --data-root); the tiny CLIP is the one
# `alignzeg pretrain-clip` writes (it knows the synthetic classes only, so unseen scores mean little).
_base_ = ['./alignzeg_tiny-vit_1xb16-2k_synthetic-default-64x64.py']
dataset_type = 'ZeroShotSegDataset'
data_root = 'data/folder'
crop_size = (64, 64)
img_scale = (256, 64)
model = dict(split=None)  # None: DATA_ROOT/split.json (set by `alignzeg train/test`, see --data-root)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomResize', scale=img_scale, ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline))  # sizes differ
test_dataloader = dict(batch_size=1, dataset=dict(type=dataset_type, data_root=data_root, pipeline=test_pipeline,
                                    data_prefix=dict(img_path='images/test', seg_map_path='annotations/test')))
