# ZeroShotEncoderDecoder skeleton. Method configs set model.decode_head, model.split and the CLIP.
# mean/std: OpenAI CLIP image statistics on the 0..255 scale (alignzeg.clip.model.CLIP_MEAN / CLIP_STD;
# tests/test_configs.py checks they agree).
clip_mean = [122.7709383, 116.7460125, 104.09373615]
clip_std = [68.5005327, 66.6321579, 70.32316305]
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=clip_mean,
    std=clip_std,
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size_divisor=16,
    # Test images are padded to a multiple of the patch size; the padding is removed from the logits.
    test_cfg=dict(size_divisor=16))
model = dict(
    type='ZeroShotEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='CLIPBackbone',
        # A save_clip() safetensors file carries its own architecture (model=None); see alignzeg.clip.model.
        clip=dict(model=None, pretrained='data/clip/tiny_clip.safetensors'),
        out_layers=None,
        frozen=True),
    decode_head=None,
    split=None,
    text=dict(templates='vild', cache_dir=None),
    train_vocabulary='seen',
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
