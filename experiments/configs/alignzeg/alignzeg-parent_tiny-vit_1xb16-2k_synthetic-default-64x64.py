# The ablation's first row: AlignZeg with all four components off (mrpe, fes, bds, pbc = False), i.e. the
# structural parent, a SAN-style side-adapter CLIP segmenter with one background embedding. Same
# side network, decoder, losses and schedule as the full model:
#   alignzeg train experiments/configs/alignzeg/alignzeg-parent_tiny-vit_1xb16-2k_synthetic-default-64x64.py
_base_ = ['./alignzeg_tiny-vit_1xb16-2k_synthetic-default-64x64.py']
model = dict(decode_head=dict(mrpe=False, fes=False, bds=False, pbc=False))
