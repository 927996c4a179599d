# Two-stage decoupled baseline (ZegFormer / zsseg; model: _base_/models/two-stage_vit-b16.py),
# 8 GPUs x 4 images (zsseg's COCO recipe: batch 32, 60k iterations), on COCO-Stuff 164k (156 seen / 15 unseen), inductive protocol:
#   alignzeg train experiments/configs/two-stage/two-stage_vit-b16_8xb4-60k_coco-stuff164k-156s15u-512x512.py
_base_ = [
    '../_base_/models/two-stage_vit-b16.py', '../_base_/datasets/coco-stuff164k.py',
    '../_base_/schedules/schedule_80k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    decode_head=dict(proposal=dict(side=dict(ref_grid=32))),
    split='coco-stuff-156s15u')
train_dataloader = dict(batch_size=4)
# MaskFormer / zsseg: no warm-up, poly decay from the first iteration.
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=60000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=60000, val_interval=6000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=6000, save_last=True,
                                     max_keep_ckpts=2))
