# MaskCLIP (Zhou et al., ECCV 2022; model: _base_/models/maskclip_vit-b16.py), training-free, on PASCAL Context-59 (ZS3Net's split, 49 seen / 10 unseen), inductive protocol:
#   alignzeg test experiments/configs/maskclip/maskclip_vit-b16_1xb1-0k_context59-zs3-10u-480x480.py --no-checkpoint
_base_ = [
    '../_base_/models/maskclip_vit-b16.py', '../_base_/datasets/context59.py',
    '../_base_/schedules/schedule_40k.py', '../_base_/default_runtime.py'
]
crop_size = (480, 480)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    split='context59-zs3-10u',
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(320, 320)))
