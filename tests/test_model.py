"""model.py: logits vs transformers' Qwen3 (the oracle), HF checkpoint round trips, KV cache, packing, errors.
Only the transformers parity tests need transformers; they skip without it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model as M
from model import KVCache, Qwen3Config, build_model, load_pretrained, save_pretrained


def tiny(nh=4, nkv=2, hd=16, tied=True, yarn=False, **kw) -> Qwen3Config:
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32} if yarn else None
    return Qwen3Config(vocab_size=101, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hd, tie_word_embeddings=tied,
                       rope_theta=10000.0, rope_scaling=rope, max_position_embeddings=128, **kw)


def hf_twin(model: M.Qwen3):
    """transformers' Qwen3ForCausalLM with the same config and weights."""
    transformers = pytest.importorskip("transformers", reason="the parity oracle needs transformers")
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**model.config.to_dict())).eval()
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf


def logits(model: M.Qwen3, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.lm_head(model(ids))


# GQA ratios 1, 2, 4; tied and untied; head_dim != hidden/heads; YaRN with positions past the original 32
@pytest.mark.parametrize("nh,nkv,hd,tied,yarn", [(4, 4, 24, True, False), (4, 2, 16, False, False),
                                                  (8, 2, 24, True, False), (4, 1, 16, False, True)])
def test_logits_match_transformers(nh, nkv, hd, tied, yarn):
    model = build_model(tiny(nh, nkv, hd, tied, yarn), "cpu", torch.float32, seed=0).eval()
    ids = torch.randint(0, 101, (2, 100), generator=torch.Generator().manual_seed(0))
    ours, ref = logits(model, ids), hf_twin(model)(ids).logits
    assert ref.abs().max() > 0.1  # not a trivially small comparison
    assert (ours - ref).abs().max().item() <= 1e-4
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied


def test_yarn_changes_long_positions():
    """YaRN must actually act (same weights, different RoPE => different logits beyond the original context)."""
    plain = build_model(tiny(yarn=False), "cpu", torch.float32, seed=0).eval()
    yarn = build_model(tiny(yarn=True), "cpu", torch.float32, seed=0).eval()
    ids = torch.randint(0, 101, (1, 100), generator=torch.Generator().manual_seed(1))
    assert (logits(plain, ids) - logits(yarn, ids)).abs().max() > 1e-3


def test_config_layouts_and_unsupported_fields():
    d = tiny(yarn=True).to_dict()
    assert Qwen3Config.from_dict(d) == tiny(yarn=True)
    new = {k: v for k, v in d.items() if k not in ("rope_theta", "rope_scaling")}
    new["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                              "rope_theta": 10000.0}
    assert Qwen3Config.from_dict(new) == tiny(yarn=True)
    harmless = {**d, "torch_dtype": "bfloat16", "use_cache": True, "initializer_range": 0.02, "max_window_layers": 28}
    assert Qwen3Config.from_dict(harmless) == tiny(yarn=True)
    for key, value in [("model_type", "llama"), ("attention_bias", True), ("use_sliding_window", True),
                       ("hidden_act", "gelu"), ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0}),
                       ("quantization_config", {"bits": 4})]:
        with pytest.raises(ValueError, match=key if key != "rope_scaling" else "dynamic"):
            Qwen3Config.from_dict({**d, key: value})


def test_checkpoint_round_trips_with_transformers(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the parity oracle needs transformers")
    model = build_model(tiny(tied=False, yarn=True), "cpu", torch.float32, seed=0).eval()
    ids = torch.randint(0, 101, (2, 40), generator=torch.Generator().manual_seed(0))
    save_pretrained(model, tmp_path / "ours", max_shard_size=40_000)  # several shards + index
    files = sorted(p.name for p in (tmp_path / "ours").iterdir())
    assert "model.safetensors.index.json" in files and sum(f.endswith(".safetensors") for f in files) > 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (hf(ids).logits - logits(model, ids)).abs().max() <= 1e-5
    hf.save_pretrained(tmp_path / "hf")
    back = load_pretrained(tmp_path / "hf")
    assert (logits(back, ids) - logits(model, ids)).abs().max() <= 1e-5
    assert (logits(load_pretrained(tmp_path / "ours"), ids) - logits(model, ids)).abs().max() == 0


def test_tied_checkpoint_with_or_without_lm_head(tmp_path):
    from safetensors.torch import load_file, save_file
    model = build_model(tiny(tied=True), "cpu", torch.float32, seed=0)
    save_pretrained(model, tmp_path / "a")
    assert "lm_head.weight" not in load_file(tmp_path / "a" / "model.safetensors")
    first = load_pretrained(tmp_path / "a")
    sd = {k: v.clone() for k, v in model.state_dict().items()}  # lm_head.weight stored explicitly
    save_file(sd, tmp_path / "a" / "model.safetensors")
    for loaded in (first, load_pretrained(tmp_path / "a")):
        assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
        assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_save_replaces_existing_and_a_crash_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    a = build_model(tiny(), "cpu", torch.float32, seed=0)
    b = build_model(tiny(), "cpu", torch.float32, seed=1)
    save_pretrained(a, tmp_path / "ck")
    save_pretrained(b, tmp_path / "ck")
    assert torch.equal(load_pretrained(tmp_path / "ck").lm_head.weight, b.lm_head.weight)
    import safetensors.torch

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        save_pretrained(a, tmp_path / "ck")
    assert torch.equal(load_pretrained(tmp_path / "ck").lm_head.weight, b.lm_head.weight)
    with pytest.raises(OSError):
        save_pretrained(a, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_cached_decoding_from_ragged_prefixes_equals_full_forward():
    cfg = tiny(nh=4, nkv=2)
    model = build_model(cfg, "cpu", torch.float32, seed=0).eval()
    B, T, lens = 3, 16, torch.tensor([5, 2, 9])
    ids = torch.randint(0, 101, (B, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)  # (B, T, H)
        cache = KVCache(cfg, pages=B * T // 4, page_size=4, device="cpu", dtype=torch.float32)
        cache.view(torch.arange(1, B * T // 4 + 1).view(B, T // 4), torch.zeros(B, dtype=torch.long))  # own pages
        h = model(ids[:, :9], cache=cache)  # right-padded prefill: row b's real prompt is ids[b, :lens[b]]
        cache.lengths = lens.clone()
        rows = torch.arange(B)
        assert (h[rows, lens - 1] - full[rows, lens - 1]).abs().max() <= 1e-5
        for _ in range(T - 9):  # one token at a time; every row at its own position
            pos = cache.lengths.clone()
            out = model(ids[rows, pos][:, None], cache=cache)  # (B, 1, H)
            assert (out[:, 0] - full[rows, pos]).abs().max() <= 1e-5
        assert cache.lengths.tolist() == (lens + T - 9).tolist()
        with pytest.raises(ValueError, match="KV cache overflow"):
            model(ids[:, :T], cache=cache)


def test_rows_share_prompt_pages():
    cfg = tiny()
    model = build_model(cfg, "cpu", torch.float32, seed=0).eval()
    ids = torch.randint(0, 101, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = KVCache(cfg, pages=8, page_size=4, device="cpu", dtype=torch.float32)
        cache.view(torch.tensor([[1, 2], [3, 4]]), torch.zeros(2, dtype=torch.long))
        model(ids[:, :6], cache=cache)  # prompt 0: 6 tokens on pages 1, 2; prompt 1: 5 real tokens on pages 3, 4
        before = [b.clone() for b in cache.k]
        # two samples of prompt 1 share its full page 3; each gets its own copy of the partial page 4
        cache.copy_page(4, 5)
        cache.copy_page(4, 6)
        cache.view(torch.tensor([[3, 5, 0], [3, 6, 0], [1, 2, 7]]), torch.tensor([5, 5, 6]), end=6)
        nxt = torch.tensor([[7], [9], [3]])
        out = model(nxt, cache=cache)[:, 0]
        for r, (row, n) in enumerate([(1, 5), (1, 5), (0, 6)]):
            ref = model(torch.cat([ids[row, :n], nxt[r]])[None])[0, -1]
            assert (out[r] - ref).abs().max() <= 1e-5
        assert cache.lengths.tolist() == [6, 6, 7]
        ps = cache.page_size  # the shared page and the prompt's partial page were read, never written
        assert all(torch.equal(a[:, 3 * ps:5 * ps], b[:, 3 * ps:5 * ps]) for a, b in zip(cache.k, before))


def test_packed_documents_equal_separate_runs():
    model = build_model(tiny(), "cpu", torch.float32, seed=0).eval()
    sizes = [5, 7, 4]
    ids = torch.randint(0, 101, (1, sum(sizes)), generator=torch.Generator().manual_seed(0))
    doc_ids = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))[None]
    with torch.no_grad():
        packed = model(ids, doc_ids=doc_ids)
        separate = torch.cat([model(part) for part in ids.split(sizes, dim=1)], dim=1)
    assert (packed - separate).abs().max() <= 1e-5
    assert M.doc_positions(doc_ids).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]]


def test_gradient_checkpointing_gives_the_same_gradients():
    model = build_model(tiny(), "cpu", torch.float32, seed=0).train()
    ids = torch.randint(0, 101, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.gradient_checkpointing = ckpt
        model.lm_head(model(ids)).logsumexp(-1).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_bad_checkpoints_raise_clear_errors(tmp_path):
    from safetensors.torch import load_file, save_file
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    model = build_model(tiny(tied=False), "cpu", torch.float32, seed=0)
    ck = tmp_path / "ck"
    save_pretrained(model, ck)
    cfg = json.loads((ck / "config.json").read_text())
    (ck / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type.*llama"):
        load_pretrained(ck)
    (ck / "config.json").write_text(json.dumps(cfg))
    sd = load_file(ck / "model.safetensors")
    save_file({k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}, ck / "model.safetensors")
    with pytest.raises(ValueError, match=r"(?s)ck does not match.*Missing key.*model.layers.1.mlp.up_proj.weight"):
        load_pretrained(ck)
    save_file({**sd, "model.norm.weight": torch.ones(63), "extra": torch.ones(1)}, ck / "model.safetensors")
    for load in (load_pretrained, lambda p: load_pretrained(p, device="meta")):
        with pytest.raises(ValueError, match=r"(?s)Unexpected key.*extra.*size mismatch for model.norm.weight"):
            load(ck)
    save_file(sd, ck / "model.safetensors")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors.*truncated"):
        load_pretrained(ck)


def test_meta_load_validates_without_loading(tmp_path):
    cfg = tiny(tied=False)
    save_pretrained(build_model(cfg, seed=0), tmp_path / "ck", max_shard_size=20_000)
    assert load_pretrained(tmp_path / "ck", device="meta").config.hidden_size == cfg.hidden_size
    root = Path(__file__).parents[1]  # the preflight train.sh runs
    r = subprocess.run([sys.executable, root / "model.py", "--check", tmp_path / "ck"], capture_output=True, text=True)
    assert r.returncode == 0 and "complete Qwen3 checkpoint (2 layers, hidden 64)" in r.stdout, r.stderr
    shard = sorted((tmp_path / "ck").glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])  # truncated shard
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_pretrained(tmp_path / "ck", device="meta")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=shard.name):
        load_pretrained(tmp_path / "ck", device="meta")


def test_doc_block_mask_equals_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    from model import doc_block_mask
    g = torch.Generator().manual_seed(0)
    for T, block in ((300, 16), (256, 32), (77, 16)):  # ragged documents, padding runs, a partial last block
        rows = [torch.repeat_interleave(torch.arange(20), torch.randint(1, 60, (20,), generator=g))[:T] for _ in "ab"]
        doc = torch.stack([torch.cat([r, torch.full((T - len(r),), 99)]) for r in rows])
        ref = create_block_mask(lambda b, h, q, k, d=doc: (k <= q) & (d[b, q] == d[b, k]), 2, None, T, T, device="cpu",
                                BLOCK_SIZE=block)
        ours = doc_block_mask(doc, block)
        assert torch.equal(ours.to_dense(), ref.to_dense())
        assert torch.equal(ours.full_kv_num_blocks, ref.full_kv_num_blocks)  # full blocks skip the mask_mod


MEMORY_SCRIPT = """
import resource, sys, torch
sys.path.insert(0, {root!r})
from model import doc_block_mask
doc = torch.repeat_interleave(torch.arange(8), 4096)[None]  # T = 32768, 8 documents
doc_block_mask(doc[:, :1024])  # warm-up: imports and first-call allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
mask = doc_block_mask(doc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_doc_block_mask_memory_at_32k():
    # create_block_mask uncompiled holds ~10 bytes per (query, key) pair: 10 GiB at T = 32K (measured: 0.30 / 0.77 /
    # 2.65 / 10.15 GiB at 4K / 8K / 16K / 32K); built at block level the mask costs a few MiB
    r = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT.format(root=str(Path(__file__).parents[1]))],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split()[-1]) < 64  # MiB of peak growth
