"""The encoder-decoder: shapes, causality, padding, cache == full forward, and no leak."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from obf.core.config import ModelConfig
from obf.core.vocab import BOS, EOS, N_BYTES, PAD, VOCAB_SIZE, encoder_input
from obf.generate.sampling import SamplingOptions, generate
from obf.model.layers import explicit_attention
from obf.model.network import OmniByteFormer
from obf.runtime.torch_backend import TorchBackend

PATCHES = [1, 2, 4, 8, 16]


def tiny(patch_size: int = 1, **kw) -> OmniByteFormer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset("tiny", patch_size=patch_size, max_src_len=256, max_tgt_len=64, **kw)
    return OmniByteFormer(cfg).eval()


def rand_ids(b, n, generator=None):
    return torch.randint(0, 256, (b, n), generator=generator)


def shift_right(target: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.full_like(target[:, :1], BOS), target[:, :-1]], dim=1)


@pytest.mark.parametrize("p", PATCHES)
def test_shapes(p):
    m = tiny(p)
    src, tgt = rand_ids(3, 37), rand_ids(3, 11)
    logits = m(src, shift_right(tgt))
    assert logits.shape == (3, 11, VOCAB_SIZE)
    mem = m.encode(src)
    grid = math.ceil(37 / p) * p  # one memory row per source byte on the patch grid
    assert mem.k.shape == (1, 3, 2, grid, 32) and mem.mask.shape == (3, grid)
    assert mem.mask.sum(1).tolist() == [37] * 3  # the grid's padding is masked


def test_presets_sizes():
    small = OmniByteFormer(ModelConfig.from_preset("small")).num_params()
    assert 5e6 <= small <= 10e6
    base_cfg = ModelConfig.from_preset("base")
    with torch.device("meta"):
        base = OmniByteFormer(base_cfg).num_params()
    assert 80e6 <= base <= 130e6


@pytest.mark.parametrize("p", [1, 4])
def test_causal_changing_target_t_never_changes_earlier_logits(p):
    m = tiny(p)
    src, tgt = rand_ids(2, 40), rand_ids(2, 20)
    base = m(src, shift_right(tgt))
    for t in (0, 7, 18):
        changed = tgt.clone()
        changed[:, t] = (changed[:, t] + 1) % 256
        out = m(src, shift_right(changed))
        # logits[:, :t+1] predict target[0..t] and may only see target[:t]
        assert torch.equal(out[:, : t + 1], base[:, : t + 1])
        if t + 1 < 20:
            assert not torch.allclose(out[:, t + 1:], base[:, t + 1:])


def test_training_attention_equals_sdpa():
    """On CPU the training forward (gradients on) runs `explicit_attention`, inference runs
    `F.scaled_dot_product_attention`: the same logits, padding and causal masks included."""
    m = tiny(4)
    src, tgt = rand_ids(2, 40), rand_ids(2, 20)
    src[1, 25:] = PAD
    trained = m(src, shift_right(tgt))
    assert trained.requires_grad
    with torch.no_grad():
        inferred = m(src, shift_right(tgt))
    torch.testing.assert_close(trained.detach(), inferred, atol=1e-5, rtol=1e-5)
    # a causal window after a cache (T < N): the newest query sees every key
    q, k, v = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 9, 16), torch.randn(2, 3, 9, 16)
    bottom_right = torch.ones(5, 9, dtype=torch.bool).tril(9 - 5)
    torch.testing.assert_close(explicit_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("p", PATCHES)
def test_padding_does_not_change_unpadded_rows(p, causal):
    """A row batched with longer ones (left-padded to whole patches, as `pad_batch` and `collate`
    pad) scores as it does alone: padding patches are masked and positions are relative."""
    from obf.generate.sampling import pad_batch

    m = tiny(p, causal_encoder=causal)
    short = encoder_input("text", "continue", bytes(range(40, 40 + 21)), 256)
    long_ = encoder_input("image", "continue", bytes(range(100)), 256)
    dec = shift_right(rand_ids(1, 9))
    together = m(torch.from_numpy(pad_batch([short, long_], p)), dec.repeat(2, 1))
    for row, ids in enumerate((short, long_)):
        alone = m(torch.from_numpy(pad_batch([ids], p)), dec)
        torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=1e-5)


def unequal_gains(m: OmniByteFormer) -> OmniByteFormer:
    """Norm gains start at 1, which hides a gain applied in the wrong place: make them differ."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for prm in m.parameters():
            if prm.ndim == 1:
                prm.copy_(torch.rand(prm.shape, generator=g) + 0.5)
    return m


@pytest.mark.parametrize("p", [4, 16])
def test_long_context_windows_see_exactly_their_own_context(p):
    """One causal encoder pass over chunks serves every window as if it were encoded alone;
    bytes after a window's start never change its logits; extra left padding changes nothing."""
    from obf.data.objectives import Example, Window, collate, continue_chunk

    torch.manual_seed(0)
    m = unequal_gains(OmniByteFormer(ModelConfig.from_preset("tiny", patch_size=p, max_src_len=1024, max_tgt_len=32,
                                                            causal_encoder=True)).eval())
    data = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)
    exs = [continue_chunk(data, 900, "binary", 1024, 32, 8, 0),  # context cut to fit 1,024 ids
           continue_chunk(data, 5, "binary", 1024, 32, 3, 1),
           continue_chunk(data[:40], 0, "text", 1024, 32, 4, 2)]  # the file ends in its 2nd window
    assert [len(e.earlier) + 1 for e in exs] == [8, 3, 2] and len(exs[0].src) == 1024
    b = collate(exs)  # padded to a multiple of 8, not of P = 16: the model aligns the grid itself
    ids = [torch.from_numpy(a) for a in (b.src, b.dec, b.rows, b.visible)]
    with torch.no_grad():
        got = m(*ids)
        n = 0
        for e in exs:
            for start, tgt, *_ in (*e.earlier, Window(len(e.src), e.tgt, len(e.src))):
                alone = collate([Example(e.src[:start], tgt, "continue", e.modality, 0)], multiple=p)
                ref = m(torch.from_numpy(alone.src), torch.from_numpy(alone.dec))
                torch.testing.assert_close(got[n, :len(tgt)], ref[0, :len(tgt)], atol=2e-5, rtol=2e-5)
                n += 1
        changed = ids[0].clone()
        cut = int(b.visible[2])  # the start of chunk 0's third window: change every byte after it
        changed[0, cut:] = (changed[0, cut:] + 1) % 256
        after = m(changed, *ids[1:])
        torch.testing.assert_close(after[:3], got[:3])
        assert not torch.allclose(after[3], got[3])
        rest = collate(exs[1:])  # 72 ids: off the grid of P = 16, which `encode` pads to on the left
        assert rest.src.shape[1] == 72
        alone = m(*(torch.from_numpy(a) for a in (rest.src, rest.dec, rest.rows, rest.visible)))
        torch.testing.assert_close(alone, got[8:], atol=2e-5, rtol=2e-5)
        pad = torch.full((3, p), PAD)  # one more patch of padding on the left
        torch.testing.assert_close(m(torch.cat([pad, ids[0]], 1), ids[1], ids[2], ids[3] + p), got,
                                   atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("p", PATCHES)
def test_cached_steps_equal_full_forward(p):
    m = tiny(p)
    src, tgt = rand_ids(3, 50), rand_ids(3, 30)
    dec = shift_right(tgt)
    with torch.no_grad():
        full = m(src, dec)
        mem = m.encode(src)
        cache = m.empty_cache(3)
        steps = []
        for t in range(30):
            logits, cache = m.decode_step(dec[:, t:t + 1], mem, cache)
            steps.append(logits)
        stepped = torch.cat(steps, dim=1)
        # several ids at once after a cache gives the same too
        l1, c1 = m.decode_step(dec[:, :12], mem, m.empty_cache(3))
        l2, _ = m.decode_step(dec[:, 12:], mem, c1)
    assert (stepped - full).abs().max().item() < 1e-4
    assert (torch.cat([l1, l2], 1) - full).abs().max().item() < 1e-4
    assert cache.k.shape == (1, 3, 2, 30, 32)


@pytest.mark.parametrize("p", PATCHES)
def test_in_place_cache_steps_equal_full_forward(p):
    """The generator's preallocated cache (written in place, one-query attention) gives the
    same logits as the full forward, with padded sources in the batch. The norm gains are made
    unequal first, so folding them into the step's weights (`StepWeights`) is checked too."""
    m = tiny(p)
    with torch.no_grad():
        for name, prm in m.named_parameters():
            if "norm" in name:
                prm.uniform_(0.5, 1.5)
    src, tgt = rand_ids(3, 50), rand_ids(3, 30)
    src[1, 20:] = PAD  # a shorter source: its padding must stay masked in cross-attention
    dec = shift_right(tgt)
    with torch.no_grad():
        full = m(src, dec)
        mem = m.encode(src)
        weights = m.step_weights()
        cache = m.static_cache(3, capacity=32)
        steps = []
        for t in range(30):
            logits, cache = m.decode_step(dec[:, t:t + 1], mem, cache, weights)
            steps.append(logits)
        again, _ = m.decode_step(dec[:, :1], mem, m.static_cache(3))  # builds its own StepWeights
    assert cache.length == 30 and cache.k.shape == (1, 3, 2, 32, 32)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < 1e-4
    assert torch.equal(again, steps[0])
    with pytest.raises(ValueError, match="one id per step"):
        m.decode_step(dec[:, :2], mem, m.static_cache(3))
    full_cache = m.static_cache(3, capacity=1)
    _, full_cache = m.decode_step(dec[:, :1], mem, full_cache)
    with pytest.raises(ValueError, match="full"):
        m.decode_step(dec[:, :1], mem, full_cache)


def test_bf16_backend_steps_match_fp32_with_fp32_attention_on_cpu():
    """bf16 weights on CPU keep the decode step's attention (cache and cross K/V) in fp32; its
    logits stay within bf16 rounding of the fp32 model's, through a padded batch."""
    m = tiny(4)
    src = rand_ids(3, 50)
    src[1, 20:] = PAD
    full, half = TorchBackend(m), TorchBackend(m, precision="bf16")
    assert half.dtype == torch.bfloat16 and half.attn_dtype == torch.float32
    mem_f, mem_h = full.encode(src.numpy()), half.encode(src.numpy())
    assert mem_h.k.dtype == torch.float32
    cache_f, cache_h = full.init_cache(mem_f), half.init_cache(mem_h)
    assert cache_h.k.dtype == torch.float32
    tokens = np.full(3, BOS)
    for _ in range(20):
        lf, cache_f = full.step(tokens, mem_f, cache_f)
        lh, cache_h = half.step(tokens, mem_h, cache_h)
        assert lh.dtype == np.float32 and np.abs(lh - lf).max() < 0.1
        tokens = lf.argmax(-1)


def test_no_leak_random_bytes_stay_near_8_bits():
    """A tiny model trained on uniformly random bytes must not beat 8 bits per byte on held-out data.

    The seed implementation's decoder saw the bytes it was scored on and reached 0.03 bpb here.
    """
    torch.manual_seed(0)
    m = OmniByteFormer(ModelConfig.from_preset("tiny", max_src_len=128, max_tgt_len=64)).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        src = torch.cat([torch.tensor([[259, 264]]).repeat(16, 1), rand_ids(16, 62, g)], 1)
        tgt = rand_ids(16, 63, g)
        loss = F.cross_entropy(m(src, shift_right(tgt)).flatten(0, 1), tgt.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    train_bits = loss.item() / math.log(2)
    m.eval()
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        src = torch.cat([torch.tensor([[259, 264]]).repeat(64, 1), rand_ids(64, 62, g)], 1)
        tgt = rand_ids(64, 63, g)
        held = F.cross_entropy(m(src, shift_right(tgt)).flatten(0, 1), tgt.flatten()).item() / math.log(2)
    assert held >= 7.9, f"held-out {held:.3f} bits/byte: the decoder sees what it predicts"
    assert train_bits < 8.3  # it did learn the byte range, so the test can tell


def test_sampling_is_reproducible_and_emits_only_bytes():
    m = tiny(4)
    backend = TorchBackend(m)
    ctx = [b"hello world", b"", bytes(range(200))]
    mods = ["text", "binary", "image"]
    opts = SamplingOptions(max_bytes=150, temperature=1.5, top_k=0, top_p=1.0, seed=7, stop_at_eos=False)
    a = generate(backend, ctx, mods, opts=opts)
    b = generate(backend, ctx, mods, opts=opts)
    assert a == b
    assert [len(x) for x in a] == [150, 150, 150]  # crosses the 64-byte decoder window twice
    c = generate(backend, ctx, mods, opts=SamplingOptions(max_bytes=150, temperature=1.5, seed=8, stop_at_eos=False),)
    assert c != a
    for o in (dict(temperature=0.0), dict(temperature=0.8, top_k=5), dict(temperature=1.0, top_p=0.5)):
        out = generate(backend, ctx, mods, opts=SamplingOptions(max_bytes=40, seed=1, **o))
        assert all(isinstance(x, bytes) and len(x) <= 40 for x in out)


def test_greedy_batch_equals_one_by_one():
    m = tiny(2)
    backend = TorchBackend(m)
    ctx = [b"abc" * 30, b"z", bytes(range(256))]
    mods = ["text", "text", "binary"]
    opts = SamplingOptions(max_bytes=80)
    together = generate(backend, ctx, mods, opts=opts)
    for i in range(3):
        assert generate(backend, [ctx[i]], [mods[i]], opts=opts) == [together[i]]


def test_mask_non_bytes_only_bytes_or_eos():
    from obf.generate.sampling import mask_non_bytes, sample

    logits = np.zeros((4, VOCAB_SIZE), dtype=np.float32)
    logits[:, N_BYTES + 5:] = 50.0  # huge mass on special ids
    ids = sample(mask_non_bytes(logits), SamplingOptions(temperature=1.0), np.random.default_rng(0))
    assert (ids < N_BYTES).all()
    logits[:, EOS] = 100.0  # EOS far ahead: sampled while rows stop at it, never once they don't
    assert (sample(mask_non_bytes(logits), SamplingOptions(), np.random.default_rng(0)) == EOS).all()
    ids = sample(mask_non_bytes(logits, keep_eos=False), SamplingOptions(temperature=1.0), np.random.default_rng(0))
    assert (ids < N_BYTES).all()


def test_layout_input_reaches_every_decoder_path():
    """With `layout_input` the place ids change the logits (the embedding is wired in), no ids
    means `NO_PLACE` everywhere, and the growing cache and the in-place step, given each
    position's ids, give the full forward's logits."""
    from obf.formats.places import NO_BYTE, NO_PLACE

    m = tiny(4, layout_input=True)
    with torch.no_grad():
        m.place_embed.weight.normal_(0, 0.5)  # unequal rows, as after training
    src, tgt = rand_ids(2, 40), rand_ids(2, 20)
    dec = shift_right(tgt)
    places = torch.stack([torch.randint(0, 17, (2, 20)), torch.randint(0, NO_BYTE + 1, (2, 20)),
                          torch.randint(0, NO_BYTE + 1, (2, 20))], dim=-1)  # (B, T, 3)
    with torch.no_grad():
        placed = m(src, dec, places=places)
        plain = m(src, dec)
        none = m(src, dec, places=torch.from_numpy(NO_PLACE).expand(2, 20, 3))
        mem = m.encode(src)
        cache, grown = m.static_cache(2), m.empty_cache(2)
        steps, grows = [], []
        for t in range(20):
            logits, cache = m.decode_step(dec[:, t:t + 1], mem, cache, places=places[:, t:t + 1])
            steps.append(logits)
            logits, grown = m.decode_step(dec[:, t:t + 1], mem, grown, places=places[:, t:t + 1])
            grows.append(logits)
    assert (placed - plain).abs().max().item() > 1e-2
    assert torch.allclose(plain, none)
    assert (torch.cat(steps, 1) - placed).abs().max().item() < 1e-4
    assert (torch.cat(grows, 1) - placed).abs().max().item() < 1e-4
    assert tiny(4, layout_input=False).place_embed is None  # a model without it has no such weights
