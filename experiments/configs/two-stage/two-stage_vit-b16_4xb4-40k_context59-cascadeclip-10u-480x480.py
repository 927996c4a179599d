# Two-stage decoupled baseline (ZegFormer / zsseg; model: _base_/models/two-stage_vit-b16.py),
# 4 GPUs x 4 images (zsseg reports no Context run: its VOC recipe with the Context schedule, 40k iterations), on PASCAL Context-59 (Cascade-CLIP's split, 49 seen / 10 unseen), inductive protocol:
# Everything as two-stage_vit-b16_4xb4-40k_context59-zs3-10u-480x480.py but the split.
_base_ = ['./two-stage_vit-b16_4xb4-40k_context59-zs3-10u-480x480.py']
model = dict(split='context59-cascadeclip-10u')
# the split of every loader (the dataset base names ZS3Net's)
train_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
val_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
test_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
