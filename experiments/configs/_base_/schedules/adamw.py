# The paper-scale optimizer defaults (AdamW, gradient clipping at 0.01), inherited by every
# _base_/models/<method>_vit-b16.py, which sets its own lr and param-wise rules.
optimizer = dict(type='AdamW', lr=2e-5, betas=(0.9, 0.999), weight_decay=0.01)
# GroupedOptimWrapperConstructor (alignzeg.engine.optim): mmengine's param-wise rules, equal groups merged
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer, clip_grad=dict(max_norm=0.01, norm_type=2),
                     constructor='GroupedOptimWrapperConstructor')
