# ZegCLIP (Zhou et al., CVPR 2023; model: _base_/models/zegclip_vit-b16.py), 4 GPUs x 4 images, on COCO-Stuff 164k (156 seen / 15 unseen), inductive protocol:
#   alignzeg train experiments/configs/zegclip/zegclip_vit-b16_4xb4-80k_coco-stuff164k-156s15u-512x512.py
# Released recipe: configs/coco/vpt_seg_zero_vit-b_512x512_80k_12_100_multi.py (100 prompt tokens,
# multi-template text, here the ViLD templates; sliding window 512 / 426).
# Published (ZegCLIP README, mIoU S/U/hIoU): 40.2 / 41.1 / 40.8.
_base_ = [
    '../_base_/models/zegclip_vit-b16.py', '../_base_/datasets/coco-stuff164k.py',
    '../_base_/schedules/schedule_80k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    backbone=dict(num_tokens=100),
    split='coco-stuff-156s15u',
    text=dict(templates='vild'),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
train_dataloader = dict(batch_size=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=1500, end=80000, by_epoch=False),
]
