"""Prompt templates, template-averaged class embeddings, the on-disk cache and ``alignzeg text-embed``."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from alignzeg.clip.model import TINY_CLIP_CONFIG, clip_tokenizer, save_clip
from alignzeg.clip.text import TEMPLATES, TextEncoder, load_embeddings, model_cache_key, resolve_templates

NAMES = ["cat", "red square", "playingfield"]


def test_template_sets():
    assert len(TEMPLATES["vild"]) == 14 == len(set(TEMPLATES["vild"]))
    assert TEMPLATES["vild"][0] == "a photo of a {}." and TEMPLATES["vild"][-1] == "There is a large {} in the scene."
    assert TEMPLATES["single"] == ["a photo of a {}."]
    assert all(t.count("{}") == 1 for t in TEMPLATES["vild"])


def test_resolve_templates(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a {}\n\n  the {} here \n")
    assert resolve_templates(path) == ["a {}", "the {} here"]
    assert resolve_templates(["x {} y"]) == ["x {} y"]
    with pytest.raises(ValueError, match="nope"):
        resolve_templates("nope")
    with pytest.raises(ValueError, match="placeholder"):
        resolve_templates(["no slot"])


def test_embed_equals_independent_average(tiny_model):
    tok = clip_tokenizer(TINY_CLIP_CONFIG)
    templates = TEMPLATES["vild"][:4]
    enc = TextEncoder(tiny_model, tok, templates=templates, batch_size=5)
    emb = enc.embed(NAMES)
    assert emb.shape == (3, 64) and emb.dtype == torch.float32
    with torch.no_grad():
        for i, name in enumerate(NAMES):
            per = torch.stack([F.normalize(tiny_model.encode_text(tok([t.format(name)]))[0], dim=0)
                               for t in templates])
            ref = per.mean(0)
            torch.testing.assert_close(emb[i], ref / ref.norm(), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    assert enc.num_encode_calls == 3  # 12 prompts in batches of 5


def test_cache_hit_skips_encoding_and_keys_differ(tmp_path, tiny_model):
    tok = clip_tokenizer(TINY_CLIP_CONFIG)
    first = TextEncoder(tiny_model, tok, templates="single", cache_dir=tmp_path, cache_key="tiny:abc")
    emb = first.embed(NAMES)
    assert first.num_encode_calls == 1
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 1 and files[0].startswith("text-") and files[0].endswith(".safetensors")

    again = TextEncoder(tiny_model, tok, templates="single", cache_dir=tmp_path, cache_key="tiny:abc")
    assert torch.equal(again.embed(NAMES), emb) and again.num_encode_calls == 0

    for other in (TextEncoder(tiny_model, tok, templates="single", cache_dir=tmp_path, cache_key="tiny:other"),
                  TextEncoder(tiny_model, tok, templates=TEMPLATES["vild"][:2], cache_dir=tmp_path,
                              cache_key="tiny:abc")):
        other.embed(NAMES)
        assert other.num_encode_calls == 1
    reordered = TextEncoder(tiny_model, tok, templates="single", cache_dir=tmp_path, cache_key="tiny:abc")
    out = reordered.embed(NAMES[::-1])
    assert reordered.num_encode_calls == 1 and torch.allclose(out, emb.flip(0), atol=1e-6)
    assert len(list(tmp_path.iterdir())) == 4 and not list(tmp_path.glob(".*"))  # no temporaries left


def test_default_cache_key_uses_checkpoint_hash(tmp_path, tiny_model):
    from alignzeg.clip.model import build_clip, file_sha256

    path = save_clip(tiny_model, TINY_CLIP_CONFIG, tmp_path / "tiny.safetensors")
    loaded = build_clip(None, path)
    assert model_cache_key(loaded) == f"tiny:file-{file_sha256(path)}"
    key = model_cache_key(tiny_model)  # built from a config only: hash of the text weights
    assert key.startswith("custom-") and ":text-" in key and key == model_cache_key(tiny_model)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_text_embed_cli(tmp_path, tiny_model, suffix):
    from alignzeg.cli import main

    ckpt = save_clip(tiny_model, TINY_CLIP_CONFIG, tmp_path / "tiny.safetensors")
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(NAMES) + "\n")
    out = tmp_path / f"emb{suffix}"
    assert main(["text-embed", "--pretrained", str(ckpt), "--names-file", str(names_file),
                 "--templates", "single", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]) == 0
    emb, info = load_embeddings(out)
    assert info["names"] == NAMES and info["templates"] == TEMPLATES["single"]
    ref = TextEncoder(tiny_model, clip_tokenizer(TINY_CLIP_CONFIG), templates="single").embed(NAMES)
    torch.testing.assert_close(emb, ref, atol=1e-6, rtol=0)
    if suffix == ".safetensors":
        with safe_open(str(out), framework="pt") as fh:
            assert json.loads(fh.metadata()["names"]) == NAMES


def test_text_embed_cli_split(tmp_path, tiny_model):
    from alignzeg.cli import main
    from alignzeg.splits import load_split

    ckpt = save_clip(tiny_model, TINY_CLIP_CONFIG, tmp_path / "tiny.safetensors")
    out = tmp_path / "voc.safetensors"
    assert main(["text-embed", "--pretrained", str(ckpt), "--split", "voc12-15s5u", "--templates", "single",
                 "--out", str(out)]) == 0
    emb, info = load_embeddings(out)
    assert info["names"] == list(load_split("voc12-15s5u").classes) and emb.shape == (len(info["names"]), 64)


def test_text_embed_cli_missing_names_file(tmp_path):
    from alignzeg.cli import main

    with pytest.raises(FileNotFoundError, match="missing.txt"):
        main(["text-embed", "--model", str(tmp_path / "x.json"), "--names-file", str(tmp_path / "missing.txt"),
              "--out", str(tmp_path / "o.pt")])


def test_text_embed_seen_too_fills_the_cache_training_reads(tmp_path, tiny_model):
    """`--seen-too` caches the seen vocabulary too: a TextEncoder on the same checkpoint then hits for both."""
    from alignzeg.cli import main
    from alignzeg.clip.model import build_clip
    from alignzeg.splits import load_split

    ckpt = save_clip(tiny_model, TINY_CLIP_CONFIG, tmp_path / "tiny.safetensors")
    cache = tmp_path / "cache"
    assert main(["text-embed", "--pretrained", str(ckpt), "--split", "voc12-15s5u", "--templates", "single",
                 "--cache-dir", str(cache), "--seen-too", "--out", str(tmp_path / "v.safetensors")]) == 0
    assert len(list(cache.glob("text-*.safetensors"))) == 2
    split = load_split("voc12-15s5u")
    model = build_clip(None, ckpt)
    enc = TextEncoder(model, clip_tokenizer(model), templates="single", cache_dir=cache)
    seen = enc.embed(list(split.seen))
    full = enc.embed(list(split.classes))
    assert enc.num_encode_calls == 0
    torch.testing.assert_close(seen, full[split.seen_ids])
    with pytest.raises(SystemExit, match="--seen-too needs"):
        main(["text-embed", "--pretrained", str(ckpt), "--names-file", str(tmp_path / "n.txt"), "--seen-too",
              "--out", str(tmp_path / "w.pt")]) if (tmp_path / "n.txt").write_text("cat\n") else None
