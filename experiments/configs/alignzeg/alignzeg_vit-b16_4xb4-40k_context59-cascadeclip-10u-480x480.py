# AlignZeg (model: _base_/models/alignzeg_vit-b16.py), 4 GPUs x 4 images, on PASCAL Context-59 (Cascade-CLIP's split, 49 seen / 10 unseen), inductive protocol:
#   alignzeg train experiments/configs/alignzeg/alignzeg_vit-b16_4xb4-40k_context59-cascadeclip-10u-480x480.py
_base_ = [
    '../_base_/models/alignzeg_vit-b16.py', '../_base_/datasets/context59.py',
    '../_base_/schedules/schedule_40k.py', '../_base_/default_runtime.py'
]
crop_size = (480, 480)
REF_GRID = 30  # crop / patch size
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    decode_head=dict(side_cfg=dict(ref_grid=REF_GRID)),
    split='context59-cascadeclip-10u',
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(320, 320)))
# the split of every loader (the dataset base names ZS3Net's)
train_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
val_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
test_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
