# Two-stage decoupled baseline (ZegFormer / zsseg) with a frozen ViT-B/16 CLIP on COCO-Stuff 164k
# (156 seen / 15 unseen), inductive protocol, 8 GPUs x 4 images (zsseg's COCO recipe: batch 32, 60k iterations):
#   alignzeg train experiments/configs/two-stage/two-stage_vit-b16_8xb4-60k_coco-stuff164k-156s15u-512x512.py
# Same model and optimiser as the VOC config (see there); ViLD prompt templates; whole-image test.
_base_ = [
    '../_base_/models/zeroshot_clip.py', '../_base_/datasets/coco-stuff164k.py',
    '../_base_/schedules/schedule_80k.py', '../_base_/default_runtime.py'
]
custom_imports = dict(imports=['alignzeg.mmseg_modules', 'baselines.mmseg_modules'], allow_failed_imports=False)
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size, size_divisor=None),
    backbone=dict(
        clip=dict(model='ViT-B-16', pretrained='data/clip/ViT-B-16.safetensors'),
        out_layers=(2, 5, 8, 11)),
    decode_head=dict(
        _delete_=True,  # the base model leaves decode_head None
        type='TwoStageHead',
        proposal=dict(
            side=dict(clip_channels=768, patch_size=16, embed_dims=240, num_layers=8, num_heads=6, mlp_ratio=4.0,
                      fusion_index=(0, 1, 2, 3), ref_grid=32),
            clip_dims=512,
            num_queries=100,
            num_layers=6,
            num_heads=8,
            cls_temperature=100.0),
        matcher=dict(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=12544),
        loss=dict(loss_cls_weight=2.0, loss_mask_weight=5.0, loss_dice_weight=5.0, eos_coef=0.1, num_points=12544),
        clip_ensemble=True,
        clip_ensemble_weight=0.8,
        mask_thr=0.5,
        region_mode='crop',
        expand_ratio=1.0,
        clip_temperature=None),
    split='coco-stuff-156s15u',
    text=dict(templates='vild'),
    test_cfg=dict(mode='whole'))
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0001),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(custom_keys={
        'query_feat': dict(decay_mult=0.0),
        'pos_embed': dict(decay_mult=0.0),
        'void_embedding': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
    }))
# 60k iterations, no warm-up, poly decay (MaskFormer / zsseg).
param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=60000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=60000, val_interval=6000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=6000, save_last=True,
                                     max_keep_ckpts=2))
