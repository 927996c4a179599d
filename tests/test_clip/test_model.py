"""build_clip / save_clip / read_checkpoint / convert-clip on tiny checkpoints in the real on-disk formats."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from alignzeg.clip.model import (CLIP_MEAN, CLIP_STD, TINY_CLIP_CONFIG, build_clip, clip_tokenizer,
                                 config_from_openai_state_dict, read_checkpoint, save_clip)

from .conftest import OPENAI_TINY_CFG

ATOL = 1e-5


def _texts(model):
    return clip_tokenizer(model)(["a photo of a cat.", "a red square on grass", "x"])


def _assert_same_outputs(a, b, images, atol=ATOL):
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), atol=atol, rtol=0)
        tokens = _texts(a)
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens), atol=atol, rtol=0)


def test_openai_torchscript_is_genuine(openai_tiny):
    path, _ = openai_tiny
    with pytest.raises(Exception):
        torch.load(str(path), map_location="cpu", weights_only=True)
    sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in sd and "token_embedding.weight" in sd
    assert "input_resolution" in sd
    assert sd["visual.conv1.weight"].dtype == torch.float16 and sd["ln_final.weight"].dtype == torch.float32


def test_openai_torchscript_loads_without_config(openai_tiny, images):
    path, reference = openai_tiny
    model = build_clip(None, path)
    assert model.alignzeg_cfg["quick_gelu"] is True
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    cfg = dict(model.alignzeg_cfg)
    assert cfg["vision_cfg"] == {"image_size": 64, "layers": 3, "width": 128, "patch_size": 8}
    assert cfg["text_cfg"]["heads"] == 2 and cfg["text_cfg"]["context_length"] == 16
    assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
    _assert_same_outputs(model, reference, images)


def test_openai_torchscript_with_given_config_turns_quick_gelu_on(openai_tiny, images):
    path, reference = openai_tiny
    cfg = json.loads(json.dumps(OPENAI_TINY_CFG))
    cfg.pop("quick_gelu")
    model = build_clip(cfg, str(path))
    assert model.alignzeg_cfg["quick_gelu"] is True
    _assert_same_outputs(model, reference, images)


def test_open_clip_state_dict_wrapped_with_module_prefix(tmp_path, tiny_model, images):
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in tiny_model.state_dict().items()}}, path)
    model = build_clip(TINY_CLIP_CONFIG, path)
    _assert_same_outputs(model, tiny_model, images, atol=0)


def test_plain_safetensors_with_json_config(tmp_path, tiny_model, images):
    cfg_path = tmp_path / "tiny.json"
    cfg_path.write_text(json.dumps(TINY_CLIP_CONFIG))
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    model = build_clip(str(cfg_path), path)
    assert model.alignzeg_source["model"] == "tiny"
    _assert_same_outputs(model, tiny_model, images, atol=0)
    with pytest.raises(ValueError, match="open_clip_model.safetensors.*carries no model config"):
        build_clip(None, path)


def test_save_clip_roundtrip_and_metadata(tmp_path, tiny_model, images):
    path = save_clip(tiny_model, TINY_CLIP_CONFIG, tmp_path / "tiny.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        assert json.loads(fh.metadata()["model_cfg"]) == TINY_CLIP_CONFIG
    model = build_clip(None, path)
    assert model.alignzeg_cfg == TINY_CLIP_CONFIG
    _assert_same_outputs(model, tiny_model, images, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary files left


def test_config_json_is_tiny_config_and_heads():
    from alignzeg.clip.model import CONFIG_DIR

    cfg = json.loads((CONFIG_DIR / "tiny-vit-b8-64.json").read_text())
    assert cfg == TINY_CLIP_CONFIG
    model = build_clip(str(CONFIG_DIR / "tiny-vit-b8-64.json"))
    assert model.visual.transformer.resblocks[0].attn.num_heads == 4
    assert model.transformer.resblocks[0].attn.num_heads == 4
    assert model.visual.grid_size == (8, 8) and model.visual.proj.shape == (128, 64)
    assert model.token_embedding.weight.shape == (49408, 128) and model.positional_embedding.shape == (32, 128)


def test_convert_cli_then_rebuild(openai_tiny, tmp_path, images):
    from alignzeg.cli import main

    src, reference = openai_tiny
    out = tmp_path / "vit-t-8.safetensors"
    assert main(["convert-clip", "--src", str(src), "--out", str(out)]) == 0
    _, info = read_checkpoint(out)
    assert info["format"] == "safetensors" and info["model_cfg"]["quick_gelu"] is True
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata()["source_file"] == src.name
        assert all(fh.get_tensor(k).dtype != torch.float16 for k in fh.keys())
    model = build_clip(None, out)
    assert type(model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    _assert_same_outputs(model, reference, images)


def test_config_inference_matches_open_clip(openai_tiny):
    from open_clip.model import build_model_from_openai_state_dict

    path, _ = openai_tiny
    state, _ = read_checkpoint(path)
    cfg = config_from_openai_state_dict(state)
    # the traced archive also holds open_clip's non-persistent text attn_mask, which OpenAI files lack
    oc = build_model_from_openai_state_dict({k: v for k, v in state.items() if k != "attn_mask"},
                                            cast_dtype=torch.float32)
    ours = build_clip(cfg)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in oc.state_dict().items()}


def test_resized_position_embedding(openai_tiny):
    from open_clip.model import resize_pos_embed

    path, reference = openai_tiny
    model = build_clip(None, path, image_size=128)
    assert model.visual.grid_size == (16, 16) and model.visual.positional_embedding.shape == (257, 128)
    state = {"visual.positional_embedding": reference.visual.positional_embedding.detach().clone()}
    resize_pos_embed(state, model)
    torch.testing.assert_close(model.visual.positional_embedding.detach(), state["visual.positional_embedding"])
    with torch.no_grad():
        assert model.encode_image(torch.zeros(1, 3, 128, 128)).shape == (1, 32)


def test_error_missing_file_names_path(tmp_path):
    path = tmp_path / "no" / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError, match=str(path)):
        build_clip("ViT-B-16", path)


@pytest.mark.parametrize("name,data", [("notes.pt", b"this is not a checkpoint\n"),
                                       ("weights.safetensors", b"\x00\x01garbage"),
                                       ("list.pt", None)])
def test_error_not_a_checkpoint_names_path(tmp_path, name, data):
    path = tmp_path / name
    if data is None:
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes(data)
    with pytest.raises(ValueError, match=str(path)):
        build_clip(TINY_CLIP_CONFIG, path)


def test_error_shape_mismatch_names_path_and_keys(openai_tiny):
    path, _ = openai_tiny
    with pytest.raises(ValueError) as err:
        build_clip(TINY_CLIP_CONFIG, path)
    msg = str(err.value)
    assert str(path) in msg and "shape mismatches" in msg
    assert "text_projection: checkpoint (128, 32) vs model (128, 64)" in msg
    assert "missing keys: visual.transformer.resblocks.3." in msg


def test_unknown_tag_or_architecture_fails_offline_fast():
    with pytest.raises(FileNotFoundError, match="not-a-tag"):
        build_clip("ViT-B-16", "not-a-tag")
    with pytest.raises(ValueError, match="ViT-Q-99"):
        build_clip("ViT-Q-99")


def test_tokenizer_context_lengths(tmp_path, tiny_model):
    assert clip_tokenizer(TINY_CLIP_CONFIG)(["a cat"]).shape == (1, 32)
    assert clip_tokenizer("ViT-B-16")(["a cat"]).shape == (1, 77)
    assert clip_tokenizer(tiny_model)(["a cat", "b"]).shape == (2, 32)
    path = save_clip(tiny_model, TINY_CLIP_CONFIG, tmp_path / "t.safetensors")
    assert clip_tokenizer(str(path))(["a"]).shape == (1, 32)


def test_mean_std_scale():
    assert CLIP_MEAN[0] == pytest.approx(122.7709383) and CLIP_STD[2] == pytest.approx(70.3231129)


def test_package_import_is_cheap():
    code = ("import sys, alignzeg.clip as c; assert 'build_clip' in c.__all__; "
            "print(int('torch' in sys.modules), int('open_clip' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]
