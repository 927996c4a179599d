# MaskCLIP (Zhou et al., ECCV 2022) on the embedded synthetic benchmark: training-free, evaluated with
#   alignzeg test experiments/configs/maskclip/maskclip_tiny-vit_1xb8-0k_synthetic-default-64x64.py --no-checkpoint
# "0k" iterations: nothing is trained; batch 8 is the evaluation batch. The tiny CLIP is the DVC output of
# `alignzeg pretrain-clip`.
_base_ = [
    '../_base_/models/zeroshot_clip.py', '../_base_/datasets/synthetic.py',
    '../_base_/schedules/schedule_2k.py', '../_base_/default_runtime.py'
]
data_root = 'data/synthetic'
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None, test_cfg=dict(size_divisor=8)),
    backbone=dict(clip=dict(model=None, pretrained='data/clip/tiny_clip.safetensors')),
    decode_head=dict(_delete_=True, type='MaskCLIPHead'),  # the base model leaves decode_head None
    split=data_root + '/split.json',
    test_cfg=dict(mode='whole'))
