# AlignZeg with a frozen ViT-B/16 CLIP on your own data, 4 GPUs x 4 images (the VOC recipe and pipelines;
# see alignzeg_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py for the model):
#   alignzeg prepare folder --images IMG --labels LAB --classes classes.txt --unseen a b --out data/mine
#   alignzeg train experiments/configs/alignzeg/alignzeg_vit-b16_4xb4-20k_folder-custom-512x512.py --data-root data/mine
# The data root is the only value to set (here or with --data-root); the classes, the unseen names and the
# stuff names come from its split.json. The CLIP file comes from `alignzeg convert-clip`. Inductive protocol:
# train in mode 'seen', choose on val, report on test (both in mode 'all').
_base_ = ['./alignzeg_vit-b16_4xb4-20k_voc12aug-15s5u-512x512.py']
dataset_type = 'ZeroShotSegDataset'
data_root = 'data/folder'
model = dict(split=None)  # None: DATA_ROOT/split.json (set by `alignzeg train/test`, see --data-root)
train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split=None))
val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split=None))
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, split=None,
                                    data_prefix=dict(img_path='images/test', seg_map_path='annotations/test')))
