# The two-stage baseline (zsseg), transductive setting (self-training), on the data of two-stage_tiny-vit_1xb16-2k_synthetic-default-64x64.py:
#   alignzeg train experiments/configs/two-stage/two-stage-st_tiny-vit_1xb16-1k_synthetic-default-64x64.py --load-from <the inductive run's model.pth or iter_2000.pth>
# ZegCLIP's self-training (alignzeg/models/self_training.py): start from the inductive checkpoint of the same
# method and split (required; every weight must load), the unseen names join the training vocabulary,
# unseen pixels of the training images are unlabelled (255, the ignore value: the synthetic data has no void pixels) and
# each training step labels them with the model's own best unseen class (no threshold, as ZegCLIP).
# Schedule: half the inductive iterations (ZegCLIP's ratio on VOC and COCO); the DVC stage self_train sets
# its own length (params.yaml self_train.max_iters).
_base_ = ['./two-stage_tiny-vit_1xb16-2k_synthetic-default-64x64.py']
train_dataloader = dict(dataset=dict(mode='transductive'))
model = dict(
    train_vocabulary='all',
    self_training=dict(unlabelled_index=255, threshold=None))
load_from = None  # the inductive checkpoint: --load-from (alignzeg train) or the pipeline's inductive run
train_cfg = dict(max_iters=1000)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=100, end=1000, by_epoch=False),
]
