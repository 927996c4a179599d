# ZegCLIP (Zhou et al., CVPR 2023; model: _base_/models/zegclip_vit-b16.py), 4 GPUs x 4 images, on PASCAL Context-59 (ZS3Net's split, 49 seen / 10 unseen), inductive protocol:
#   alignzeg train experiments/configs/zegclip/zegclip_vit-b16_4xb4-40k_context59-zs3-10u-480x480.py
# ZegCLIP releases no Context config: the VOC recipe (10 prompt tokens, one template) with the Context
# schedule (40k) and crops (480, stride 400 = ZegCLIP's 5/6 of the crop); Cascade-CLIP's ZegCLIP-based
# Context config (vpt_seg_zero_vit-b_512x512_40k_12_10.py) uses 40k iterations and 10 tokens too.
_base_ = [
    '../_base_/models/zegclip_vit-b16.py', '../_base_/datasets/context59.py',
    '../_base_/schedules/schedule_40k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (480, 480)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    split='context59-zs3-10u',
    text=dict(templates='single'),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(400, 400)))
train_dataloader = dict(batch_size=4)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=1500, end=40000, by_epoch=False),
]
