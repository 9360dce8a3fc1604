"""CLIP weights by pretrained tag (``"RN50"``/``"ViT-B-16"`` + ``"openai"``): the file in the open_clip /
Hugging Face cache, or downloaded when online. Offline (``HF_HUB_OFFLINE=1``, set before Python starts) an
uncached tag fails at once with :class:`ClipWeightsUnavailable` naming the alternatives."""

from __future__ import annotations

import os
from pathlib import Path

import open_clip
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from csdn.clip.checkpoints import ClipWeightsInvalid
from csdn.errors import ClipWeightsError


class ClipWeightsUnavailable(ClipWeightsError, RuntimeError):
    """Named pretrained weights are neither cached nor downloadable (offline)."""


def hub_offline() -> bool:
    """True when the Hugging Face hub is switched off (``HF_HUB_OFFLINE=1`` when Python started)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _alternatives(arch: str) -> str:
    return (
        f"Use instead: a local weights file, ClipSource(arch={arch!r}, pretrained='/path/to/weights.safetensors' "
        f"or '.pt'); an open_clip folder, ClipSource(arch={arch!r}, pretrained='local-dir:/path/to/folder'); "
        "or the embedded tiny CLIP, csdn.clip.tiny_clip(...) with arch 'csdn-tiny-rn' or 'csdn-tiny-vit'. "
        "To fill the cache, run once online (without HF_HUB_OFFLINE=1)."
    )


def cached_pretrained(arch: str, tag: str, cache_dir: str | None = None) -> Path | None:
    """The cached weights file of an open_clip (arch, tag), or None when it is not in the cache."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        known = open_clip.list_pretrained_tags_by_model(arch)
        raise ClipWeightsInvalid(
            f"{tag!r} is neither a file, a 'local-dir:' folder nor a pretrained tag of {arch!r} "
            f"(known tags: {known or 'none'})"
        )
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME] if not filename else [filename]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            hit = try_to_load_from_cache(repo_id=repo_id, filename=name, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    if cfg.get("url"):
        candidate = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(cfg["url"])
        if candidate.is_file():
            return candidate
    return None


def tag_weights(arch: str, tag: str, cache_dir: str | None) -> Path:
    """The weights file of (arch, tag): cached, else downloaded (offline: :class:`ClipWeightsUnavailable`)."""
    cached = cached_pretrained(arch, tag, cache_dir)
    if cached is not None:
        return cached
    if hub_offline():
        raise ClipWeightsUnavailable(
            f"CLIP weights {arch}/{tag} are not in the local cache and the hub is offline (HF_HUB_OFFLINE=1). "
            + _alternatives(arch)
        )
    try:
        return Path(open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, tag), cache_dir=cache_dir))
    except Exception as error:
        message = f"could not download CLIP weights {arch}/{tag}: {error}. "
        raise ClipWeightsUnavailable(message + _alternatives(arch)) from error
