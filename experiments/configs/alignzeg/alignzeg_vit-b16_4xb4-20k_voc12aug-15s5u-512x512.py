# AlignZeg (model: _base_/models/alignzeg_vit-b16.py), 4 GPUs x 4 images, on PASCAL VOC 2012 + SBD aug (15 seen / 5 unseen), inductive protocol:
#   alignzeg train experiments/configs/alignzeg/alignzeg_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py
_base_ = [
    '../_base_/models/alignzeg_vit-b16.py', '../_base_/datasets/voc12aug.py',
    '../_base_/schedules/schedule_20k.py', '../_base_/default_runtime.py'
]
crop_size = (512, 512)
REF_GRID = 32  # crop / patch size
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    decode_head=dict(side_cfg=dict(ref_grid=REF_GRID)),
    split='voc12-15s5u',
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
