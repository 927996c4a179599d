# AlignZeg with the class indicator's 'virtual+ignore' label rule: "uses unseen locations". Unmatched
# proposals that lie mostly on ignore pixels are labelled "potentially unseen"; in inductive training the
# ignore pixels are where the unseen classes are, so this variant learns from unseen locations and is not
# strictly inductive. Never reported among the inductive rows (the evaluation records it in protocol.json
# and the analysis tables it apart). Not in train.methods by default; add it to run it:
#   alignzeg train experiments/configs/alignzeg/alignzeg-unseenloc_tiny-vit_1xb16-2k_synthetic-default-64x64.py
_base_ = ['./alignzeg_tiny-vit_1xb16-2k_synthetic-default-64x64.py']
model = dict(decode_head=dict(pbc_cfg=dict(label_rule='virtual+ignore')))
