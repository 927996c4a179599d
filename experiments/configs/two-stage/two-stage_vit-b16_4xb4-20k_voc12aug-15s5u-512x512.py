# Two-stage decoupled baseline (ZegFormer / zsseg; model: _base_/models/two-stage_vit-b16.py),
# 4 GPUs x 4 images (zsseg's VOC recipe: batch 16, 20k iterations), on PASCAL VOC 2012 + SBD aug (15 seen / 5 unseen), inductive protocol:
#   alignzeg train experiments/configs/two-stage/two-stage_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py
_base_ = [
    '../_base_/models/two-stage_vit-b16.py', '../_base_/datasets/voc12aug.py',
    '../_base_/schedules/schedule_20k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    decode_head=dict(proposal=dict(side=dict(ref_grid=32))),
    split='voc12-15s5u')
train_dataloader = dict(batch_size=4)
# MaskFormer / zsseg: no warm-up, poly decay from the first iteration.
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=20000, by_epoch=False)]
