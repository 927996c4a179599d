# MaskCLIP (Zhou et al., ECCV 2022; model: _base_/models/maskclip_vit-b16.py), training-free, on PASCAL VOC 2012 + SBD aug (15 seen / 5 unseen), inductive protocol:
#   alignzeg test experiments/configs/maskclip/maskclip_vit-b16_1xb1-0k_voc12aug-15s5u-512x512.py --no-checkpoint
_base_ = [
    '../_base_/models/maskclip_vit-b16.py', '../_base_/datasets/voc12aug.py',
    '../_base_/schedules/schedule_20k.py', '../_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    split='voc12-15s5u',
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
