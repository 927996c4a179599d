# AlignZeg (Ge et al., ECCV 2024, arXiv 2404.05667; reconstructed, see the README's "Reconstruction notes")
# with a frozen ViT-B/16 CLIP: the model and optimizer every paper-scale AlignZeg config shares. A dataset
# config adds the crop-dependent values (data_preprocessor.size, side_cfg.ref_grid = crop / 16, test_cfg)
# and the split. Sizes follow SAN's side adapter (width 240, 8 blocks, 100 queries) and Mask2Former's
# losses; the AlignZeg-specific values are guesses, not the paper's (its body could not be read).
# The CLIP file comes from `alignzeg convert-clip` (OpenAI ViT-B/16 weights).
_base_ = ['./zeroshot_clip.py', '../schedules/adamw.py']
model = dict(
    backbone=dict(
        clip=dict(model='ViT-B-16', pretrained='data/clip/ViT-B-16.safetensors'),
        out_layers=(2, 5, 8, 11)),
    decode_head=dict(
        _delete_=True,  # the base model leaves decode_head None
        type='AlignZegHead',
        clip_channels=768,  # ViT-B/16 width
        embed_dim=512,  # ViT-B/16 joint-space dimension
        patch_size=16,
        num_queries=100,  # SAN / Mask2Former
        embed_dims=240,  # SAN's side-adapter width
        num_decoder_layers=6,
        num_heads=8,
        ffn_ratio=4.0,
        side_cfg=dict(num_layers=8, num_heads=6, mlp_ratio=4.0, fusion_index=(0, 1, 2, 3)),
        clip_pool=True,
        logit_scale_init=1 / 0.07,
        learnable_logit_scale=True,
        # lambda_bc=bc, lambda1=cls, lambda2=(mask, dice), lambda3=vir, lambda4=reg (reconstructed defaults)
        loss=dict(bc=1.0, cls=2.0, mask=5.0, dice=5.0, vir=1.0, reg=1.0, eos_coef=0.1, num_points=12544,
                  cost_class=2.0, cost_mask=5.0, cost_dice=5.0),
        mrpe=True,
        fes=True,
        fes_cfg=dict(alpha=1.0, num_virtual=None),
        bds=True,
        bds_cfg=dict(num_prototypes=4, reduce='max'),
        pbc=True,
        pbc_cfg=dict(hidden_dims=256, label_rule='virtual', ignore_ratio=0.5, mask_threshold=0.5,
                     detach_input=True, threshold=0.5, strength=2.0)))
# AdamW as SAN / Mask2Former; learned embeddings, prototypes, the logit scale and norms without weight decay.
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0001),
    paramwise_cfg=dict(custom_keys={
        'query_feat': dict(decay_mult=0.0),
        'query_pos': dict(decay_mult=0.0),
        'pos_embed': dict(decay_mult=0.0),
        'bg_prototypes': dict(decay_mult=0.0),
        'logit_scale': dict(decay_mult=0.0),
        'norm': dict(decay_mult=0.0),
    }))
