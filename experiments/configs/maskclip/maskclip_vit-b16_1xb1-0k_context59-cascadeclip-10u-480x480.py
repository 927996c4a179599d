# MaskCLIP (Zhou et al., ECCV 2022; model: _base_/models/maskclip_vit-b16.py), training-free, on PASCAL Context-59 (Cascade-CLIP's split, 49 seen / 10 unseen), inductive protocol:
#   alignzeg test experiments/configs/maskclip/maskclip_vit-b16_1xb1-0k_context59-cascadeclip-10u-480x480.py --no-checkpoint
# Everything as maskclip_vit-b16_1xb1-0k_context59-zs3-10u-480x480.py but the split.
_base_ = ['./maskclip_vit-b16_1xb1-0k_context59-zs3-10u-480x480.py']
model = dict(split='context59-cascadeclip-10u')
# the split of every loader (the dataset base names ZS3Net's)
train_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
val_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
test_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
