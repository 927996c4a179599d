# ZegCLIP (Zhou et al., CVPR 2023; github.com/ZiqinZhou66/ZegCLIP) with a frozen ViT-B/16 CLIP on PASCAL VOC
# 2012 + SBD aug (15 seen / 5 unseen), inductive protocol, 4 GPUs x 4 images:
#   alignzeg train experiments/configs/zegclip/zegclip_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py
# Follows the released configs/voc12/vpt_seg_zero_vit-b_512x512_20k_12_10.py: deep prompts (10 tokens in
# every block), last-layer projected tokens (D=512) into a 3-layer, 8-head decoder without input projection,
# focal x100 + dice x1, AdamW lr 2e-5 (x10 on prompts and head), weight decay 0.01 (none on norms), linear
# warm-up over 1500 iterations from 1e-6, poly decay (power 0.9) to 1e-6, no gradient clipping, one text
# template, sliding-window test with 512 crops and stride 426, seen scores lowered by 0.1 at evaluation.
# Published (ZegCLIP README, mIoU S/U/hIoU): 91.9 / 77.8 / 84.3.
_base_ = [
    '../_base_/models/zeroshot_clip.py', '../_base_/datasets/voc12aug.py',
    '../_base_/schedules/schedule_20k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    backbone=dict(
        type='ZegCLIPPromptedBackbone',
        clip=dict(model='ViT-B-16', pretrained='data/clip/ViT-B-16.safetensors'),
        out_layers=(11,),
        num_tokens=10,
        deep=True,
        prompt_dropout=0.1,
        final_norm=True),
    decode_head=dict(
        _delete_=True,  # the base model leaves decode_head None
        type='ZegCLIPHead',
        decoder=dict(in_channels=512, embed_dims=512, num_layers=3, num_heads=8, use_proj=False),
        loss_focal_weight=100.0,
        loss_dice_weight=1.0,
        aux_loss=False,
        ignore_as_negative=True,
        seen_calibration=0.1),
    split='voc12-15s5u',
    text=dict(templates='single'),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(426, 426)))
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.01),
    clip_grad=None,
    paramwise_cfg=dict(custom_keys={
        'backbone': dict(lr_mult=10.0),
        'decode_head': dict(lr_mult=10.0),
        'norm': dict(decay_mult=0.0),
        'ln': dict(decay_mult=0.0),
    }))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=1500, end=20000, by_epoch=False),
]
