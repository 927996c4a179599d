# MaskCLIP (Zhou et al., ECCV 2022; model: _base_/models/maskclip_vit-b16.py), training-free, on COCO-Stuff 164k (156 seen / 15 unseen), inductive protocol:
#   alignzeg test experiments/configs/maskclip/maskclip_vit-b16_1xb1-0k_coco-stuff164k-156s15u-512x512.py --no-checkpoint
_base_ = [
    '../_base_/models/maskclip_vit-b16.py', '../_base_/datasets/coco-stuff164k.py',
    '../_base_/schedules/schedule_80k.py', '../_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    split='coco-stuff-156s15u',
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
