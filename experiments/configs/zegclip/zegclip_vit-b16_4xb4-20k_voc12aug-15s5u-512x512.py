# ZegCLIP (Zhou et al., CVPR 2023; model: _base_/models/zegclip_vit-b16.py), 4 GPUs x 4 images, on PASCAL VOC 2012 + SBD aug (15 seen / 5 unseen), inductive protocol:
#   alignzeg train experiments/configs/zegclip/zegclip_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py
# Released recipe: configs/voc12/vpt_seg_zero_vit-b_512x512_20k_12_10.py (10 prompt tokens, one template,
# sliding window 512 / 426). Published (ZegCLIP README, mIoU S/U/hIoU): 91.9 / 77.8 / 84.3.
_base_ = [
    '../_base_/models/zegclip_vit-b16.py', '../_base_/datasets/voc12aug.py',
    '../_base_/schedules/schedule_20k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    split='voc12-15s5u',
    text=dict(templates='single'),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
train_dataloader = dict(batch_size=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=1500, end=20000, by_epoch=False),
]
