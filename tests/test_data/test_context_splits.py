"""The two Context-59 10-unseen splits, checked against the lists published with their sources."""
from alignzeg.splits import available_splits, load_split

# valeoai/ZS3 pascal_context_unseen_classes.txt, "10 unseen" line (cumulative 2/4/6/8/10 split)
ZS3_10 = ["cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "keyboard", "aeroplane"]
# HVision-NKU/Cascade-CLIP configs/context_59/vpt_seg_zero_vit-b_512x512_40k_12_10.py (indices, mmseg order)
CASCADE_NOVEL = [0, 2, 3, 7, 9, 13, 17, 19, 31, 37]


def test_zs3_split():
    s = load_split("context59-zs3-10u")
    assert list(s.unseen) == ZS3_10 and s.num_classes == 59 and len(s.seen) == 49


def test_cascadeclip_split():
    zs3 = load_split("context59-zs3-10u")
    s = load_split("context59-cascadeclip-10u")
    assert s.classes == zs3.classes
    assert s.unseen_ids == CASCADE_NOVEL
    assert list(s.unseen) == ["aeroplane", "bed", "bedclothes", "boat", "bottle", "car", "cloth", "cow",
                              "keyboard", "plate"]
    assert "context59-cascadeclip-10u" in available_splits()
