# MaskCLIP (Zhou et al., ECCV 2022) with ViT-B/16 on PASCAL VOC 2012 (15 seen / 5 unseen): training-free,
#   alignzeg test experiments/configs/maskclip/maskclip_vit-b16_1xb1-0k_voc12aug-15s5u-512x512.py --no-checkpoint
# The CLIP file comes from `alignzeg convert-clip` (OpenAI ViT-B/16 weights).
_base_ = [
    '../_base_/models/zeroshot_clip.py', '../_base_/datasets/voc12aug.py',
    '../_base_/schedules/schedule_20k.py', '../_base_/default_runtime.py'
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    backbone=dict(clip=dict(model='ViT-B-16', pretrained='data/clip/ViT-B-16.safetensors')),
    decode_head=dict(_delete_=True, type='MaskCLIPHead'),  # the base model leaves decode_head None
    split='voc12-15s5u',
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
