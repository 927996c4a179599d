"""Build open_clip CLIP models from an architecture name or a config, with weights from a local file.

Follows open_clip (https://github.com/mlfoundations/open_clip, MIT licence), version 3.3.0:
architectures and model classes come from ``open_clip.get_model_config`` / ``open_clip.CLIP``;
the OpenAI-checkpoint config inference mirrors ``open_clip.model.build_model_from_openai_state_dict``;
positional-embedding resizing at load time uses ``open_clip.model.resize_pos_embed``.
What differs from ``open_clip.create_model``:

- ``pretrained`` may be an OpenAI TorchScript archive (read through ``torch.jit.load`` and its state
  dict, QuickGELU switched on), an open_clip state dict (``.pt/.pth/.bin``, possibly wrapped in
  ``{'state_dict': ...}`` with ``module.`` prefixes, always read with ``weights_only=True``) or a
  ``.safetensors`` file. open_clip's own loader refuses TorchScript archives under ``weights_only``.
- A checkpoint that does not fit the architecture raises one error naming the file and the first
  missing / unexpected / mis-shaped keys, instead of torch's very long ``load_state_dict`` message.
- ``save_clip`` writes safetensors whose metadata carries the model config, so ``build_clip(None, file)``
  rebuilds the model without knowing its architecture.

Nothing here downloads anything unless ``pretrained`` is an open_clip tag (``openai``,
``laion2b_s34b_b88k``); that path goes through ``open_clip.create_model``.
"""
from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "TINY_CLIP_CONFIG", "CONFIG_DIR", "METADATA_KEY",
    "build_clip", "save_clip", "clip_tokenizer", "read_checkpoint", "config_from_openai_state_dict",
    "resolve_model_config", "file_sha256",
]

# OpenAI CLIP image statistics (open_clip.constants.OPENAI_DATASET_MEAN/STD) on the 0..255 scale used by
# mmseg's SegDataPreProcessor.
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
METADATA_KEY = "model_cfg"  # safetensors metadata entry holding the model config JSON (open_clip's naming)

# A small CLIP for the embedded CPU benchmark: ViT with 8-px patches on 64-px images, 4 heads of width 32,
# and a 4-layer text transformer over open_clip's BPE vocabulary (works offline). Also shipped as
# configs/tiny-vit-b8-64.json.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": False,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}

# Entries OpenAI's TorchScript archives keep next to the weights (open_clip pops the same names).
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_MAX_LISTED = 5


# --------------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------------
def resolve_model_config(model: str | Mapping | os.PathLike) -> tuple[dict, str]:
    """Return ``(config dict, model key)`` for an open_clip architecture name, a config dict or a JSON path.

    The model key names the architecture in caches and logs: the architecture name, the JSON file stem, or
    ``"custom-<sha256[:12]>"`` of the canonical JSON of a dict.
    """
    import hashlib

    if isinstance(model, Mapping):
        cfg = copy.deepcopy(dict(model))
        digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
        key = f"custom-{digest}"
    else:
        text = os.fspath(model)
        path = Path(text)
        if text.endswith(".json") or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"CLIP model config {path} does not exist")
            try:
                cfg = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise ValueError(f"CLIP model config {path} is not valid JSON: {err}") from err
            cfg = cfg.get("model_cfg", cfg)  # open_clip_config.json nests it
            key = path.stem
        else:
            import open_clip

            name = text.replace("/", "-")
            cfg = open_clip.get_model_config(name)
            if cfg is None:
                raise ValueError(f"unknown open_clip architecture {text!r} (model); see open_clip.list_models()")
            key = name
    for field in ("embed_dim", "vision_cfg", "text_cfg"):
        if field not in cfg:
            raise ValueError(f"CLIP model config {model!r} lacks field {field!r}")
    return cfg, key


def config_from_openai_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Infer an open_clip model config from an OpenAI-layout state dict (``quick_gelu`` set true).

    Same inference as ``open_clip.model.build_model_from_openai_state_dict``: widths, depths and patch
    size from the tensor shapes, text heads = width // 64 (OpenAI's convention; open_clip's vision default
    head_width is 64 as well).
    """
    sd = state_dict
    if "visual.proj" in sd:
        width = sd["visual.conv1.weight"].shape[0]
        layers = len([k for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight")])
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg: dict[str, Any] = {"image_size": patch * grid, "layers": layers, "width": width,
                                      "patch_size": patch}
    elif "visual.layer1.0.conv1.weight" in sd:
        counts = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}")}) for b in (1, 2, 3, 4)]
        width = sd["visual.layer1.0.conv1.weight"].shape[0]
        out_w = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision_cfg = {"image_size": out_w * 32, "layers": counts, "width": width, "patch_size": None}
    else:
        raise KeyError("visual.proj / visual.layer1.0.conv1.weight")
    text_width = sd["ln_final.weight"].shape[0]
    text_cfg = {
        "context_length": int(sd["positional_embedding"].shape[0]),
        "vocab_size": int(sd["token_embedding.weight"].shape[0]),
        "width": int(text_width),
        "heads": int(text_width // 64),
        "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks")}),
    }
    vision_cfg = {k: (int(v) if isinstance(v, int) else v) for k, v in vision_cfg.items()}
    return {"embed_dim": int(sd["text_projection"].shape[1]), "quick_gelu": True,
            "vision_cfg": vision_cfg, "text_cfg": text_cfg}


# --------------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file (streamed)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _is_torchscript_zip(path: Path) -> bool:
    # torch.serialization._is_torchscript_zip looks for the same record.
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a CLIP checkpoint file into ``(state_dict, info)``.

    ``info`` holds ``format`` ("torchscript", "state_dict" or "safetensors") and ``model_cfg`` (the config
    from safetensors metadata written by :func:`save_clip`, else None). OpenAI TorchScript archives are read
    with ``torch.jit.load(map_location='cpu')`` and their state dict taken; pickled state dicts only with
    ``weights_only=True``. ``{'state_dict': ...}`` wrappers and ``module.`` prefixes are removed.
    Raises FileNotFoundError / ValueError naming ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CLIP checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"CLIP checkpoint {path} is not a file")
    info: dict[str, Any] = {"format": None, "model_cfg": None}
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                obj = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"CLIP checkpoint {path} is not a readable safetensors file: {err}") from err
        info["format"] = "safetensors"
        if METADATA_KEY in meta:
            try:
                info["model_cfg"] = json.loads(meta[METADATA_KEY])
            except ValueError as err:
                raise ValueError(f"CLIP checkpoint {path}: metadata {METADATA_KEY!r} is not JSON: {err}") from err
    elif _is_torchscript_zip(path):
        try:
            import warnings

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)  # jit.load deprecation notice
                scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:
            raise ValueError(f"CLIP checkpoint {path} looks like TorchScript but cannot be loaded: {err}") from err
        obj = dict(scripted.state_dict())
        info["format"] = "torchscript"
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:
            first = str(err).split(". ")[0][:160]
            raise ValueError(
                f"CLIP checkpoint {path} is not a loadable checkpoint (torch.load with weights_only=True "
                f"failed: {type(err).__name__}: {first})") from err
        info["format"] = "state_dict"
        if isinstance(obj, Mapping):
            for wrapper in ("state_dict", "model", "module"):
                if isinstance(obj.get(wrapper), Mapping):
                    obj = obj[wrapper]
                    break
    if not isinstance(obj, Mapping):
        raise ValueError(f"CLIP checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"CLIP checkpoint {path} holds no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, info


def _fit_report(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Describe why ``state`` does not fit ``model`` ('' when it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" ... (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: " + "; ".join(items[:_MAX_LISTED]) + more)
    return " | ".join(parts)


def _prepare_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's load-time fixes: old text layout, logit_scale shape, extra OpenAI entries, pos-embed size."""
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed

    state = dict(state)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    # TorchScript archives also store non-persistent buffers (open_clip's text attn_mask): drop those.
    persistent = set(model.state_dict())
    for name, _ in model.named_buffers():
        if name not in persistent:
            state.pop(name, None)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for key in ("logit_scale", "logit_bias"):
        own = getattr(model, key, None)
        if key in state and isinstance(own, torch.Tensor) and own.ndim != state[key].ndim:
            state[key] = state[key].reshape(own.shape)
    pos = state.get("visual.positional_embedding")
    if pos is not None and pos.ndim == 2 and hasattr(model.visual, "grid_size"):
        n_img = pos.shape[0] - 1
        side = round(n_img ** 0.5)
        if side * side == n_img:  # square grid: resize like open_clip does (bicubic, antialias)
            state["visual.positional_embedding"] = pos.float()
            resize_pos_embed(state, model)
    return state


# --------------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------------
def _instantiate(cfg: dict) -> nn.Module:
    import open_clip
    from open_clip.transform import PreprocessCfg
    from dataclasses import asdict

    cfg = copy.deepcopy(cfg)
    vision_cfg, text_cfg = cfg["vision_cfg"], cfg["text_cfg"]
    # Never fetch tower weights while constructing.
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = False
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    if custom_text:
        cls = open_clip.CoCa if "multimodal_cfg" in cfg else open_clip.CustomTextCLIP
    else:
        cls = open_clip.CLIP
    try:
        model = cls(**cfg)
    except TypeError as err:
        raise ValueError(f"CLIP model config does not fit {cls.__name__}: {err}") from err
    pre = asdict(PreprocessCfg())
    size = getattr(model.visual, "image_size", None)
    if size is not None:
        pre["size"] = size
    open_clip.set_model_preprocess_cfg(model, pre)
    return model


def _looks_like_path(value: str) -> bool:
    return (os.path.sep in value or "/" in value or os.path.exists(value)
            or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


def build_clip(model: str | Mapping | os.PathLike | None, pretrained: str | os.PathLike | None = None, *,
               image_size: int | None = None, quick_gelu: bool | None = None) -> nn.Module:
    """Build an open_clip CLIP (eval mode, float32) and load its weights.

    Args:
        model: open_clip architecture name ("ViT-B-16"), a config dict (open_clip's JSON schema) or a path
            to such JSON, or None when ``pretrained`` carries its own config (a :func:`save_clip` file or an
            OpenAI TorchScript archive, whose config is inferred from the tensor shapes).
        pretrained: None (random init), a local checkpoint file (see :func:`read_checkpoint`), or an open_clip
            pretrained tag for a named architecture (downloads through open_clip).
        image_size: build the vision tower for this input size; position embeddings of the checkpoint are
            resized (bicubic) to it.
        quick_gelu: force the activation; default: on for OpenAI TorchScript weights, else the config's value
            (a :func:`save_clip` file's config wins over a named architecture's).

    The returned model carries ``alignzeg_cfg`` (the config it was built from) and ``alignzeg_source``
    (``{"model": key, "pretrained": str|None}``).
    """
    state = None
    info: dict[str, Any] = {"format": None, "model_cfg": None}
    tag = None
    ckpt = None
    if pretrained is not None:
        ptext = os.fspath(pretrained)
        is_name = isinstance(model, str) and not _looks_like_path(model)
        if not _looks_like_path(ptext) and is_name:
            import open_clip

            if open_clip.get_pretrained_cfg(model.replace("/", "-"), ptext):
                tag = ptext
            else:
                raise FileNotFoundError(
                    f"pretrained {ptext!r} is neither an existing file nor an open_clip tag for {model!r} "
                    f"(tags: {open_clip.list_pretrained_tags_by_model(model.replace('/', '-'))})")
        else:
            ckpt = Path(ptext)
            state, info = read_checkpoint(ckpt)

    if model is None:
        if ckpt is None:
            raise ValueError("build_clip needs a model name/config unless pretrained is a checkpoint file")
        if info["model_cfg"] is not None:
            cfg, key = copy.deepcopy(info["model_cfg"]), ckpt.stem
        elif info["format"] == "torchscript":
            # OpenAI release archives: architecture from the tensor shapes, heads by OpenAI's width // 64 rule.
            try:
                cfg = config_from_openai_state_dict(state)
            except KeyError as err:
                raise ValueError(f"CLIP checkpoint {ckpt} is TorchScript but not in OpenAI CLIP layout "
                                 f"(no {err}); pass model= an architecture name or config") from err
            key = ckpt.stem
        else:
            # Head counts cannot be read from shapes, so a bare state dict needs its architecture.
            raise ValueError(f"CLIP checkpoint {ckpt} carries no model config (metadata {METADATA_KEY!r}); "
                             f"pass model= an architecture name or config")
    else:
        cfg, key = resolve_model_config(model)

    if quick_gelu is None:
        if info["format"] == "torchscript":
            quick_gelu = True
        elif info["model_cfg"] is not None:
            quick_gelu = bool(info["model_cfg"].get("quick_gelu", False))
        elif tag is not None:
            import open_clip

            quick_gelu = bool(open_clip.get_pretrained_cfg(key, tag).get("quick_gelu", cfg.get("quick_gelu", False)))
        else:
            quick_gelu = bool(cfg.get("quick_gelu", False))
    cfg["quick_gelu"] = bool(quick_gelu)
    if image_size is not None:
        cfg["vision_cfg"]["image_size"] = int(image_size)

    if tag is not None:
        import open_clip

        net = open_clip.create_model(key, pretrained=tag, force_quick_gelu=cfg["quick_gelu"],
                                     force_image_size=image_size)
    else:
        net = _instantiate(cfg)
        if state is not None:
            state = _prepare_state(net, state)
            problem = _fit_report(net, state)
            if problem:
                raise ValueError(f"CLIP checkpoint {ckpt} does not fit architecture {key!r}: {problem}")
            net.load_state_dict(state, strict=True)
    net = net.float().eval()
    net.alignzeg_cfg = cfg
    net.alignzeg_source = {"model": key, "pretrained": None if pretrained is None else os.fspath(pretrained)}
    return net


def save_clip(model: nn.Module, model_cfg: Mapping, path: str | os.PathLike, *,
              extra_metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s state dict as safetensors, with ``model_cfg`` as JSON in the metadata (atomic).

    ``build_clip(None, path)`` rebuilds the model. ``extra_metadata`` adds string entries (provenance).
    """
    from safetensors.torch import save

    from alignzeg.utils import atomic_write_bytes

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    for key in _OPENAI_EXTRA_KEYS:
        tensors.pop(key, None)
    if not str(path).endswith(".safetensors"):
        raise ValueError(f"save_clip writes safetensors; {path} must end in .safetensors")
    meta = {str(k): str(v) for k, v in (extra_metadata or {}).items()}
    meta.update({METADATA_KEY: json.dumps(dict(model_cfg), sort_keys=True), "format": "pt"})
    atomic_write_bytes(path, save(tensors, metadata=meta))
    return path


def clip_tokenizer(model_cfg_or_name: Any):
    """open_clip tokenizer with the context length of a config dict, JSON path, architecture name,
    :func:`save_clip` safetensors file or built model."""
    import open_clip

    src = model_cfg_or_name
    if isinstance(src, nn.Module):
        cfg = getattr(src, "alignzeg_cfg", None)
        if cfg is None:
            return open_clip.tokenizer.SimpleTokenizer(context_length=int(src.context_length))
        src = cfg
    if isinstance(src, (str, os.PathLike)) and os.fspath(src).endswith(".safetensors"):
        _, info = read_checkpoint(src)
        if info["model_cfg"] is None:
            raise ValueError(f"CLIP checkpoint {src} has no {METADATA_KEY!r} metadata to pick a tokenizer from")
        src = info["model_cfg"]
    if isinstance(src, str) and not _looks_like_path(src):
        return open_clip.get_tokenizer(src.replace("/", "-"))
    cfg, _ = resolve_model_config(src)
    text_cfg = cfg["text_cfg"]
    ctx = int(text_cfg.get("context_length", 77))
    if text_cfg.get("hf_tokenizer_name"):
        return open_clip.tokenizer.HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=ctx,
                                               **(text_cfg.get("tokenizer_kwargs") or {}))
    return open_clip.tokenizer.SimpleTokenizer(context_length=ctx, **(text_cfg.get("tokenizer_kwargs") or {}))
