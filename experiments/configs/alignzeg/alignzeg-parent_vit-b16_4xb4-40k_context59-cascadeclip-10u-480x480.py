# The ablation's first row on PASCAL Context-59 (Cascade-CLIP's split, 49 seen / 10 unseen) with CLIP ViT-B/16: AlignZeg with all four components
# off (mrpe, fes, bds, pbc = False), the SAN-style structural parent; everything else as the full model:
# Everything as alignzeg-parent_vit-b16_4xb4-40k_context59-zs3-10u-480x480.py but the split.
_base_ = ['./alignzeg-parent_vit-b16_4xb4-40k_context59-zs3-10u-480x480.py']
model = dict(split='context59-cascadeclip-10u')
# the split of every loader (the dataset base names ZS3Net's)
train_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
val_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
test_dataloader = dict(dataset=dict(split='context59-cascadeclip-10u'))
