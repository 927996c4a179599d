# ZegCLIP (Zhou et al., CVPR 2023; github.com/ZiqinZhou66/ZegCLIP) with a frozen ViT-B/16 CLIP: the model and
# optimizer every paper-scale ZegCLIP config shares, after the released configs (configs/voc12/
# vpt_seg_zero_vit-b_512x512_20k_12_10.py, configs/coco/vpt_seg_zero_vit-b_512x512_80k_12_100_multi.py):
# deep prompts in every block (num_tokens per dataset: 10 VOC, 100 COCO-Stuff), last-layer projected tokens
# (D=512) into a 3-layer, 8-head decoder without input projection, focal x100 + dice x1, AdamW lr 2e-5
# (x10 on prompts and head), weight decay 0.01 (none on norms), linear warm-up over 1500 iterations from
# 1e-6, poly decay (power 0.9) to 1e-6, no gradient clipping, seen scores lowered by 0.1 at evaluation. A
# dataset config adds the crop-dependent values, the split, the prompt tokens and the text templates.
_base_ = ['./zeroshot_clip.py', '../schedules/adamw.py']
model = dict(
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
        seen_calibration=0.1))
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
