# The ablation's first row on PASCAL Context-59 (Cascade-CLIP's split, 49 seen / 10 unseen) with CLIP ViT-B/16: AlignZeg with all four components
# off (mrpe, fes, bds, pbc = False), the SAN-style structural parent; everything else as the full model:
#   alignzeg train experiments/configs/alignzeg/alignzeg-parent_vit-b16_4xb4-40k_context59-cascadeclip-10u-480x480.py
_base_ = ['./alignzeg_vit-b16_4xb4-40k_context59-cascadeclip-10u-480x480.py']
model = dict(decode_head=dict(mrpe=False, fes=False, bds=False, pbc=False))
