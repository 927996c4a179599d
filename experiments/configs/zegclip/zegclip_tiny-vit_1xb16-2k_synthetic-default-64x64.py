# ZegCLIP (Zhou et al., CVPR 2023; github.com/ZiqinZhou66/ZegCLIP) on the embedded synthetic benchmark with
# the tiny CLIP (ViT, 8-px patches, width 128, 4 blocks, D=64), inductive protocol:
#   alignzeg train experiments/configs/zegclip/zegclip_tiny-vit_1xb16-2k_synthetic-default-64x64.py
# Frozen CLIP with deep visual prompts (10 per block), relationship-descriptor queries, a 3-layer attention
# decoder, focal (x100) + dice loss, and seen-score calibration (-0.1 on seen classes) at evaluation.
# Optimiser: AdamW with lr_mult 10 on the prompts and the head and no gradient clipping, as ZegCLIP, but base lr
# 5e-4 instead of ZegCLIP's 2e-5, and the decoder's input projection (Linear + LayerNorm, use_proj=True) on.
# ZegCLIP's values are sized for 20k iterations on unit-norm 512-d tokens; in the synthetic study's 250
# iterations at batch 16 they leave every sigmoid map at ~0.22 +- 0.02 (measured, seed 0), so the 0.1 seen
# calibration exceeds the whole score range and sends every pixel to an unseen class (seen mIoU ~1.6).
# Measured at 250 iterations, seed 0 (seen / unseen / hIoU with calibration 0.1): lr 2e-5 1.6 / 4.0 / 2.3;
# 1e-4 8.0 / 3.2 / 4.5; 3e-4 8.3 / 3.7 / 5.1; 3e-4 + use_proj 10.9 / 9.1 / 9.9; 5e-4 + use_proj
# 10.9 / 10.9 / 10.9; 1e-3 + use_proj diverges (2.3 / 0.1).
# Calibration sweep of the chosen run (seen / unseen / hIoU): 0.0 9.6 / 2.7 / 4.3, 0.05 10.6 / 9.7 / 10.1,
# 0.1 10.9 / 10.9 / 10.9, 0.2 11.2 / 12.1 / 11.6: ZegCLIP's 0.1 is kept (within 0.7 hIoU of the best
# measured, and not tuned on the evaluation images).
_base_ = [
    '../_base_/models/zeroshot_clip.py', '../_base_/datasets/synthetic.py',
    '../_base_/schedules/schedule_2k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
data_root = 'data/synthetic'
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None, test_cfg=dict(size_divisor=8)),
    backbone=dict(
        type='ZegCLIPPromptedBackbone',
        clip=dict(model=None, pretrained='data/clip/tiny_clip.safetensors'),
        out_layers=(3,),
        num_tokens=10,
        deep=True,
        prompt_dropout=0.1,
        final_norm=True),
    decode_head=dict(
        _delete_=True,  # the base model leaves decode_head None
        type='ZegCLIPHead',
        decoder=dict(in_channels=64, embed_dims=64, num_layers=3, num_heads=4, use_proj=True),
        loss_focal_weight=100.0,
        loss_dice_weight=1.0,
        aux_loss=False,
        ignore_as_negative=True,
        seen_calibration=0.1),  # ZegCLIP's inductive value; measured choice, see the header
    split=data_root + '/split.json',
    text=dict(templates='single'),
    test_cfg=dict(mode='whole'))
# foreach=True: torch's multi-tensor AdamW (on CPU the default is a per-parameter loop); the same updates
# bit for bit, in fewer kernel calls per step.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.01, foreach=True),
    clip_grad=None,
    paramwise_cfg=dict(custom_keys={
        'backbone': dict(lr_mult=10.0),
        'decode_head': dict(lr_mult=10.0),
        'norm': dict(decay_mult=0.0),
        'ln': dict(decay_mult=0.0),
    }))
