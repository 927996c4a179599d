# The ablation's first row on COCO-Stuff 164k (156 seen / 15 unseen) with CLIP ViT-B/16: AlignZeg with all four components
# off (mrpe, fes, bds, pbc = False), the SAN-style structural parent; everything else as the full model:
#   alignzeg train experiments/configs/alignzeg/alignzeg-parent_vit-b16_4xb4-80k_coco-stuff164k-156s15u-512x512.py
_base_ = ['./alignzeg_vit-b16_4xb4-80k_coco-stuff164k-156s15u-512x512.py']
model = dict(decode_head=dict(mrpe=False, fes=False, bds=False, pbc=False))
