# The embedded synthetic zero-shot benchmark (`alignzeg prepare synthetic`, DVC output data/synthetic):
# 64x64 scenes; split.json in the data root. Training sees seen classes only (mode 'seen': unseen pixels
# ignored, labels in seen-index space); validation and test use all classes (mode 'all'). Three disjoint
# splits: train, val (choices such as prompt templates are made here) and test (every reported number).
dataset_type = 'SyntheticZSDataset'
data_root = 'data/synthetic'
crop_size = (64, 64)
# serialize_data=False: with num_workers=0 there are no worker processes to share a pickled data list
# with, and mmengine's serialisation ends in a gc.collect() (~0.4 s per process with torch loaded).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=16,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        mode='seen',
        data_prefix=dict(img_path='images/train', seg_map_path='annotations/train'),
        serialize_data=False,
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        mode='all',
        test_mode=True,
        data_prefix=dict(img_path='images/val', seg_map_path='annotations/val'),
        serialize_data=False,
        pipeline=test_pipeline))
# the test split: the val loader with the test folders
test_dataloader = dict(
    val_dataloader,
    dataset=dict(val_dataloader['dataset'],
                 data_prefix=dict(img_path='images/test', seg_map_path='annotations/test')))
val_evaluator = dict(type='ZeroShotIoUMetric')
test_evaluator = val_evaluator
