# The SAN-style parent, transductive setting (self-training), on the data of alignzeg-parent_vit-b16_4xb4-80k_coco-stuff164k-156s15u-512x512.py:
#   alignzeg train experiments/configs/alignzeg/alignzeg-parent-st_vit-b16_4xb4-40k_coco-stuff164k-156s15u-512x512.py --load-from <the inductive run's model.pth or iter_80000.pth>
# ZegCLIP's self-training (alignzeg/models/self_training.py): start from the inductive checkpoint of the same
# method and split (required; every weight must load), the unseen names join the training vocabulary,
# unseen pixels of the training images are unlabelled (254, apart from void 255) and
# each training step labels them with the model's own best unseen class (no threshold, as ZegCLIP).
# No released self-training recipe for this method and dataset: ZegCLIP's rule is applied (half the
# inductive iterations, the inductive optimizer and warm-up); an assumption, not a published schedule.
_base_ = ['./alignzeg-parent_vit-b16_4xb4-80k_coco-stuff164k-156s15u-512x512.py']
train_dataloader = dict(dataset=dict(mode='transductive', unlabelled_index=254))
model = dict(
    train_vocabulary='all',
    self_training=dict(unlabelled_index=254, threshold=None))
load_from = None  # the inductive checkpoint: --load-from (alignzeg train) or the pipeline's inductive run
train_cfg = dict(max_iters=40000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=1500, end=40000, by_epoch=False),
]
