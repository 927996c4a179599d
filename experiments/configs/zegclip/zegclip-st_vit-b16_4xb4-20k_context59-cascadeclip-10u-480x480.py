# ZegCLIP, transductive setting (self-training), on the data of zegclip_vit-b16_4xb4-40k_context59-cascadeclip-10u-480x480.py:
#   alignzeg train experiments/configs/zegclip/zegclip-st_vit-b16_4xb4-20k_context59-cascadeclip-10u-480x480.py --load-from <the inductive run's model.pth or iter_40000.pth>
# ZegCLIP's self-training (alignzeg/models/self_training.py): start from the inductive checkpoint of the same
# method and split (required; every weight must load), the unseen names join the training vocabulary,
# unseen pixels of the training images are unlabelled (254, apart from void 255) and
# each training step labels them with the model's own best unseen class (no threshold, as ZegCLIP).
# No released self-training recipe for this method and dataset: ZegCLIP's rule is applied (half the
# inductive iterations, the inductive optimizer and warm-up); an assumption, not a published schedule.
# Evaluation without the seen-score calibration (0.0), as ZegCLIP's self-training inference.
_base_ = ['./zegclip_vit-b16_4xb4-40k_context59-cascadeclip-10u-480x480.py']
train_dataloader = dict(dataset=dict(mode='transductive', unlabelled_index=254))
model = dict(
    train_vocabulary='all',
    self_training=dict(unlabelled_index=254, threshold=None),
    decode_head=dict(seen_calibration=0.0))
load_from = None  # the inductive checkpoint: --load-from (alignzeg train) or the pipeline's inductive run
train_cfg = dict(max_iters=20000)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-06, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=1e-06, power=0.9, begin=1500, end=20000, by_epoch=False),
]
