# Two-stage decoupled baseline (ZegFormer / zsseg; model: _base_/models/two-stage_vit-b16.py),
# 4 GPUs x 4 images (zsseg reports no Context run: its VOC recipe with the Context schedule, 40k iterations), on PASCAL Context-59 (Cascade-CLIP's split, 49 seen / 10 unseen), inductive protocol:
#   alignzeg train experiments/configs/two-stage/two-stage_vit-b16_4xb4-40k_context59-cascadeclip-10u-480x480.py
_base_ = [
    '../_base_/models/two-stage_vit-b16.py', '../_base_/datasets/context59.py',
    '../_base_/schedules/schedule_40k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (480, 480)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    decode_head=dict(proposal=dict(side=dict(ref_grid=30))),
    split='context59-cascadeclip-10u')
# the split of every loader (the dataset base names ZS3Net's)
train_dataloader = dict(batch_size=4, dataset=dict(split='context59-cascadeclip-10u'))
val_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
test_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
# MaskFormer / zsseg: no warm-up, poly decay from the first iteration.
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=40000, by_epoch=False)]
