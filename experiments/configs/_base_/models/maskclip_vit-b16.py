# MaskCLIP (Zhou et al., ECCV 2022) with ViT-B/16: training-free (`alignzeg test CONFIG --no-checkpoint`); the
# model every paper-scale MaskCLIP config shares. A dataset config adds data_preprocessor.size, the split
# and the sliding-window test. The CLIP file comes from `alignzeg convert-clip` (OpenAI ViT-B/16 weights).
_base_ = ['./zeroshot_clip.py', '../schedules/adamw.py']
model = dict(
    backbone=dict(clip=dict(model='ViT-B-16', pretrained='data/clip/ViT-B-16.safetensors')),
    decode_head=dict(_delete_=True, type='MaskCLIPHead'))  # the base model leaves decode_head None
