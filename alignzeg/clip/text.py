"""Class text embeddings from prompt templates, cached on disk; CLI ``alignzeg text-embed``.

Prompt ensembling as in CLIP (Radford et al., 2021) and ViLD (Gu et al., ICLR 2022): every class name is put
into each template, each prompt embedding is L2-normalised, the embeddings are averaged over templates and the
mean is normalised again. The ``vild`` set is ViLD's 14 templates, also used by ZegCLIP, ZegFormer and OVSeg.

The cache file name is ``sha256`` of (cache key, templates, names); the cache key should name the model and its
weights (:func:`model_cache_key`: architecture key + sha256 of the checkpoint file, or of the text-tower
weights when the model was not loaded from a file). Cache files are safetensors written atomically; the names
and templates are stored in their metadata and checked on every hit.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPLATES", "TextEncoder", "resolve_templates", "model_cache_key", "text_weights_sha256",
           "save_embeddings", "load_embeddings", "add_arguments", "run"]

TEMPLATES: dict[str, list[str]] = {
    "vild": [
        "a photo of a {}.",
        "This is a photo of a {}",
        "There is a {} in the scene",
        "There is the {} in the scene",
        "a photo of a {} in the scene",
        "a photo of a small {}.",
        "a photo of a medium {}.",
        "a photo of a large {}.",
        "This is a photo of a small {}.",
        "This is a photo of a medium {}.",
        "This is a photo of a large {}.",
        "There is a small {} in the scene.",
        "There is a medium {} in the scene.",
        "There is a large {} in the scene.",
    ],
    "single": ["a photo of a {}."],
}

_CACHE_VERSION = 1


def resolve_templates(templates: str | os.PathLike | Sequence[str]) -> list[str]:
    """A template list from a name in :data:`TEMPLATES`, a text file (one template per line) or a list."""
    if isinstance(templates, (str, os.PathLike)):
        key = os.fspath(templates)
        if key in TEMPLATES:
            out = list(TEMPLATES[key])
        elif Path(key).is_file():
            out = [line.strip() for line in Path(key).read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            raise ValueError(f"templates {key!r}: not one of {sorted(TEMPLATES)} and not an existing file")
        where = key
    else:
        out, where = [str(t) for t in templates], "templates"
    if not out:
        raise ValueError(f"{where}: no templates")
    bad = [t for t in out if t.count("{}") != 1]
    if bad:
        raise ValueError(f"{where}: every template needs exactly one '{{}}' placeholder, got {bad[:3]}")
    return out


def text_weights_sha256(clip_model: nn.Module) -> str:
    """sha256 over the text tower's tensors (names, shapes, dtypes and bytes) of an open_clip CLIP."""
    h = hashlib.sha256()
    for name, tensor in sorted(clip_model.state_dict().items()):
        if name.startswith("visual.") or name in ("logit_scale", "logit_bias"):
            continue
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_cache_key(clip_model: nn.Module) -> str:
    """``"<model key>:<sha256>"`` for a model from :func:`alignzeg.clip.model.build_clip`.

    The hash is that of the checkpoint file when the model was loaded from one, else of the text weights.
    """
    from alignzeg.clip.model import file_sha256

    source = getattr(clip_model, "alignzeg_source", None) or {}
    key = source.get("model", type(clip_model).__name__)
    pretrained = source.get("pretrained")
    if pretrained and Path(pretrained).is_file():
        return f"{key}:file-{file_sha256(pretrained)}"
    return f"{key}:text-{text_weights_sha256(clip_model)}"


class TextEncoder:
    """Template-averaged, L2-normalised class embeddings from a CLIP text tower, optionally cached on disk.

    Args:
        clip_model: an open_clip CLIP (``encode_text``); used in eval mode without gradients.
        tokenizer: callable ``list[str] -> LongTensor`` (:func:`alignzeg.clip.model.clip_tokenizer`).
        templates: a :data:`TEMPLATES` name, a file of templates or a list.
        cache_dir: folder for cached embeddings (None: no cache).
        cache_key: names the model and weights in the cache key; default :func:`model_cache_key`
            (computed once, lazily, only when a cache is used).
        batch_size: prompts per ``encode_text`` call.

    ``num_encode_calls`` counts ``encode_text`` calls (a cache hit makes none).
    """

    def __init__(self, clip_model: nn.Module, tokenizer, templates: str | Sequence[str] = "vild",
                 cache_dir: str | os.PathLike | None = None, cache_key: str = "", batch_size: int = 256):
        self.clip_model = clip_model
        self.tokenizer = tokenizer
        self.templates = resolve_templates(templates)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self._cache_key = cache_key
        self.batch_size = int(batch_size)
        self.num_encode_calls = 0

    @property
    def cache_key(self) -> str:
        if not self._cache_key:
            self._cache_key = model_cache_key(self.clip_model)
        return self._cache_key

    def cache_path(self, names: Sequence[str]) -> Path | None:
        if self.cache_dir is None:
            return None
        payload = json.dumps({"version": _CACHE_VERSION, "key": self.cache_key, "templates": self.templates,
                              "names": list(names)}, ensure_ascii=False)
        return self.cache_dir / f"text-{hashlib.sha256(payload.encode('utf-8')).hexdigest()}.safetensors"

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """``N×D`` L2-normalised embeddings of ``prompts`` (float32, CPU)."""
        model = self.clip_model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        outs = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                tokens = self.tokenizer(list(prompts[start:start + self.batch_size])).to(device)
                self.num_encode_calls += 1
                outs.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
        finally:
            model.train(was_training)
        return torch.cat(outs, dim=0)

    def compute(self, names: Sequence[str]) -> torch.Tensor:
        """Embeddings without the cache: ``C×D``."""
        prompts = [t.format(n) for n in names for t in self.templates]
        emb = self.encode_prompts(prompts).view(len(names), len(self.templates), -1)
        return F.normalize(emb.mean(dim=1), dim=-1)

    def embed(self, names: Iterable[str]) -> torch.Tensor:
        """``C×D`` float32 CPU tensor: template-averaged, renormalised class embeddings (cached when enabled)."""
        names = [str(n) for n in names]
        if not names:
            raise ValueError("TextEncoder.embed: empty list of class names")
        path = self.cache_path(names)
        if path is not None and path.is_file():
            try:
                emb, meta = load_embeddings(path)
                if meta.get("names") == names and meta.get("templates") == self.templates:
                    return emb
            except (ValueError, OSError):
                pass  # unreadable cache entry: recompute and overwrite
        emb = self.compute(names)
        if path is not None:
            save_embeddings(path, emb, names, templates=self.templates, key=self.cache_key)
        return emb


def save_embeddings(path: str | os.PathLike, embeddings: torch.Tensor, names: Sequence[str], *,
                    templates: Sequence[str] = (), key: str = "") -> Path:
    """Write ``C×D`` embeddings atomically as ``.safetensors`` (names etc. in metadata) or ``.pt`` (a dict)."""
    from alignzeg.utils import atomic_write_bytes

    path = Path(path)
    emb = embeddings.detach().to("cpu", torch.float32).contiguous()
    if emb.ndim != 2 or emb.shape[0] != len(names):
        raise ValueError(f"{path}: embeddings of shape {tuple(emb.shape)} do not match {len(names)} names")
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        meta = {"names": json.dumps(list(names), ensure_ascii=False),
                "templates": json.dumps(list(templates), ensure_ascii=False), "key": key}
        data = save({"embeddings": emb}, metadata=meta)
    elif path.suffix in (".pt", ".pth"):
        import io

        buf = io.BytesIO()
        torch.save({"embeddings": emb, "names": list(names), "templates": list(templates), "key": key}, buf)
        data = buf.getvalue()
    else:
        raise ValueError(f"{path}: output must end in .safetensors or .pt")
    atomic_write_bytes(path, data)
    return path


def load_embeddings(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """Read what :func:`save_embeddings` wrote: ``(C×D tensor, {"names", "templates", "key"})``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text embeddings {path} do not exist")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as fh:
                meta = fh.metadata() or {}
                emb = fh.get_tensor("embeddings")
            info = {"names": json.loads(meta.get("names", "[]")),
                    "templates": json.loads(meta.get("templates", "[]")), "key": meta.get("key", "")}
        except Exception as err:
            raise ValueError(f"text embeddings {path} are not readable: {err}") from err
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            emb = obj["embeddings"]
            info = {"names": list(obj["names"]), "templates": list(obj.get("templates", [])),
                    "key": obj.get("key", "")}
        except Exception as err:
            raise ValueError(f"text embeddings {path} are not readable: {err}") from err
    if emb.ndim != 2 or emb.shape[0] != len(info["names"]):
        raise ValueError(f"text embeddings {path}: shape {tuple(emb.shape)} vs {len(info['names'])} names")
    return emb, info


# --------------------------------------------------------------------------------------------------
# CLI: alignzeg text-embed
# --------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="open_clip architecture name (ViT-B-16) or model-config JSON; may be omitted when "
                             "--pretrained is a safetensors file written by convert-clip / pretrain-clip")
    parser.add_argument("--pretrained", default=None,
                        help="local checkpoint (.pt TorchScript, .pt/.pth/.bin state dict, .safetensors) or "
                             "an open_clip tag")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--names-file", help="text file with one class name per line")
    names.add_argument("--split", help="split name or split JSON path (its full class list is embedded)")
    parser.add_argument("--templates", default="vild",
                        help=f"template set ({', '.join(TEMPLATES)}) or a file with one template per line")
    parser.add_argument("--out", required=True, help="output file, .safetensors or .pt")
    parser.add_argument("--cache-dir", default=None, help="optional embedding cache folder")
    parser.add_argument("--seen-too", action="store_true",
                        help="with --split and --cache-dir: also cache the seen vocabulary (what training uses)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)


def _read_names(args) -> list[str]:
    if args.names_file:
        path = Path(args.names_file)
        if not path.is_file():
            raise FileNotFoundError(f"--names-file {path} does not exist")
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not names:
            raise ValueError(f"--names-file {path} holds no class names")
        return names
    from alignzeg.splits import load_split

    return list(load_split(args.split).classes)


def run(args) -> int:
    from alignzeg.clip.model import build_clip, clip_tokenizer

    if args.model is None and args.pretrained is None:
        raise SystemExit("alignzeg text-embed: give --model and/or --pretrained")
    names = _read_names(args)
    model = build_clip(args.model, args.pretrained).to(args.device)
    tokenizer = clip_tokenizer(model)
    encoder = TextEncoder(model, tokenizer, templates=args.templates, cache_dir=args.cache_dir,
                          batch_size=args.batch_size)
    emb = encoder.embed(names)
    if args.seen_too:
        if not (args.split and args.cache_dir):
            raise SystemExit("alignzeg text-embed: --seen-too needs --split and --cache-dir")
        from alignzeg.splits import load_split

        encoder.embed(list(load_split(args.split).seen))
    save_embeddings(args.out, emb, names, templates=encoder.templates, key=encoder.cache_key)
    print(f"wrote {args.out}: {emb.shape[0]} classes x {emb.shape[1]} dims, {len(encoder.templates)} templates "
          f"({encoder.num_encode_calls} encode calls)")
    return 0
