# Two-stage decoupled baseline (ZegFormer / zsseg) with a frozen ViT-B/16 CLIP: the model and optimizer every
# paper-scale two-stage config shares. zsseg: MaskFormer proposals (100 queries, 6 decoder layers), AdamW
# lr 1e-4, weight decay 1e-4, poly decay, full-model gradient clipping at 0.01, CLIP-space classifier with
# temperature 100 and a learned no-object embedding; at test time masked crops (threshold 0.5, mean-colour
# fill) resized to CLIP's 224 input, ensemble lambda = 0.8. Here the proposal features come from the shared
# side network (SAN-sized) instead of ResNet-101; losses and matching costs are Mask2Former's. Whole-image
# test, as zsseg's detectron2 evaluation. A dataset config adds data_preprocessor.size, the side network's
# ref_grid (crop / 16) and the split.
_base_ = ['./zeroshot_clip.py', '../schedules/adamw.py']
model = dict(
    backbone=dict(
        clip=dict(model='ViT-B-16', pretrained='data/clip/ViT-B-16.safetensors'),
        out_layers=(2, 5, 8, 11)),
    decode_head=dict(
        _delete_=True,  # the base model leaves decode_head None
        type='TwoStageHead',
        proposal=dict(
            side=dict(clip_channels=768, patch_size=16, embed_dims=240, num_layers=8, num_heads=6, mlp_ratio=4.0,
                      fusion_index=(0, 1, 2, 3)),
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
    text=dict(templates='vild'),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0001),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(custom_keys={
        'query_feat': dict(decay_mult=0.0),
        'pos_embed': dict(decay_mult=0.0),
        'void_embedding': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
    }))
