"""Text conditioning's building blocks: the word tokenizer, the text encoder and
cross-attention (masking, batching, the identity at initialisation)."""

import pytest
import torch

from scorelab.models.text import (PAD, START, UNKNOWN, TextEncoder, WordTokenizer,
                                  masked_mean, null_captions)
from scorelab.nets.attention import CrossAttention

CAPTIONS = ["a 3 on the left and a 7 on the right", "seven right, three left",
            "the left digit is 4, the right one 9"]


def test_tokenizer_builds_its_vocabulary_counts_unknown_words_and_cuts_to_the_context():
    tok = WordTokenizer.from_captions(CAPTIONS, context=8)
    assert tok.vocab == sorted(tok.vocab) and "seven" in tok.vocab and "," not in tok.vocab
    ids, unknown, cut = tok.encode(["Seven right, three LEFT!", "a 5 on the left", ""])
    assert ids.shape == (3, 8) and (ids[:, 0] == START).all()
    assert tok.decode(ids[0]) == "seven right three left"
    assert ids[1, 2] == UNKNOWN and unknown == 1 and cut == 0       # "5" is not in CAPTIONS
    assert torch.equal(ids[2], null_captions(1, 8)[0])              # the empty caption
    long, _, cut = tok.encode(["a 3 on the left and a 7 on the right"])
    assert cut == 1 and (long != PAD).sum() == 8
    again = WordTokenizer.from_state_dict(tok.state_dict())
    assert torch.equal(again.encode(CAPTIONS)[0], tok.encode(CAPTIONS)[0])
    with pytest.raises(ValueError, match="context must be at least 2"):
        WordTokenizer(["a"], context=1)


def test_text_encoder_ignores_padding_and_encodes_a_batch_as_one_by_one():
    torch.manual_seed(0)
    tok = WordTokenizer.from_captions(CAPTIONS, context=12)
    enc = TextEncoder(len(tok), context=12, dim=32, depth=2, heads=4).eval()
    ids, _, _ = tok.encode(CAPTIONS)
    tokens, mask, pooled = enc(ids)
    assert tokens.shape == (3, 12, 32) and torch.equal(mask, ids != PAD)
    # other ids under the mask: the real tokens and the pooled vector do not move
    noisy = torch.where(mask, ids, torch.randint(3, len(tok), ids.shape))
    tokens2, _, pooled2 = enc(noisy, mask)
    torch.testing.assert_close(tokens2[mask], tokens[mask])
    torch.testing.assert_close(pooled2, pooled)
    for i, caption in enumerate(CAPTIONS):
        one = enc(tok.encode([caption])[0])
        torch.testing.assert_close(one[0][0][mask[i]], tokens[i][mask[i]], rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(one[2][0], pooled[i], rtol=1e-5, atol=1e-5)
    # one word changed: the encoding changes
    other = enc(tok.encode(["seven right, seven left"])[0])[2]
    assert (other - pooled[1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="its context is 12"):
        enc(ids[:, :8])


@pytest.mark.parametrize("image", [False, True])
def test_cross_attention_starts_as_the_identity_and_never_sees_masked_tokens(image):
    torch.manual_seed(0)
    block = CrossAttention(16, 8, heads=4, norm="group" if image else "layer")
    h = torch.randn(3, 16, 4, 4) if image else torch.randn(3, 5, 16)
    context = torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1] * 6]).bool()
    torch.testing.assert_close(block(h, context, mask), h)     # zero-initialised output
    torch.nn.init.normal_(block.out.weight)
    out = block(h, context, mask)
    assert (out - h).abs().max() > 1e-3
    masked_changed = torch.where(mask[..., None], context, torch.randn(3, 6, 8) * 100)
    torch.testing.assert_close(block(h, masked_changed, mask), out)
    real_changed = context.clone()
    real_changed[1, 0] += 1
    assert (block(h, real_changed, mask)[1] - out[1]).abs().max() > 1e-4
    for i in range(3):      # one row at a time, as in the batch
        torch.testing.assert_close(block(h[i:i + 1], context[i:i + 1], mask[i:i + 1])[0],
                                   out[i], rtol=1e-5, atol=1e-5)


def test_cross_attention_with_position_tells_places_apart():
    # one feature everywhere: without position every place reads the caption alike; with it,
    # the places read it differently
    torch.manual_seed(0)
    h = torch.randn(1, 16, 1, 1).expand(2, 16, 4, 8).contiguous()
    context, mask = torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)
    for position in (False, True):
        block = CrossAttention(16, 8, heads=4, norm="group", position=position)
        torch.nn.init.normal_(block.out.weight)
        out = block(h, context, mask)
        spread = (out - out[..., :1, :1]).abs().amax()
        assert (spread > 1e-3) == position
    with pytest.raises(ValueError, match="not divisible by 4"):
        CrossAttention(6, 8, heads=2, norm="group", position=True)


def test_masked_mean_averages_the_real_tokens():
    tokens = torch.arange(12.0).reshape(1, 4, 3)
    mask = torch.tensor([[True, False, True, False]])
    torch.testing.assert_close(masked_mean(tokens, mask), (tokens[0, 0] + tokens[0, 2])[None] / 2)


def test_dit_with_text_starts_silent_then_reads_each_caption_as_in_a_batch():
    """DiT with captions: at initialisation the text changes nothing (zero-initialised
    cross-attention and pooled projection); once trained-like weights are in, a word
    changes the output, y = None is the empty caption, and a batch of mixed-length
    captions gives what each caption gives alone."""
    from scorelab.nets.dit import DiT

    torch.manual_seed(0)
    tok = WordTokenizer.from_captions(CAPTIONS, context=12)
    net = DiT((1, 8, 16), patch=4, hidden=32, depth=2, heads=4,
              text=dict(vocab_size=len(tok), context=12, dim=16, depth=1, heads=2)).eval()
    x, t = torch.randn(3, 1, 8, 16), torch.rand(3)
    ids = tok.encode(CAPTIONS)[0]
    silent = net(x, t, None)
    torch.testing.assert_close(net(x, t, ids), silent)
    for p in net.parameters():          # stand-in for training: every weight nonzero
        torch.nn.init.normal_(p, std=0.05) if p.requires_grad else None
    out = net(x, t, ids)
    torch.testing.assert_close(net(x, t, null_captions(3, 12)), net(x, t, None))
    changed = tok.encode(["seven right, seven left"])[0]
    assert (net(x[1:2], t[1:2], changed) - out[1:2]).abs().max() > 1e-4
    for i in range(3):
        torch.testing.assert_close(net(x[i:i + 1], t[i:i + 1], ids[i:i + 1])[0], out[i],
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="class labels or on text, not both"):
        DiT((1, 8, 16), patch=4, hidden=32, depth=1, heads=4, num_classes=10,
            text=dict(vocab_size=5, context=4, dim=8, depth=1, heads=2))


def test_unet_with_text_cross_attends_where_asked_and_keeps_its_class_form():
    """The UNet with captions: cross-attention at the chosen resolutions and in the middle,
    silent at initialisation; a word changes the output once the weights are nonzero; a
    batch equals its captions one by one. Without text its state_dict keys are those of
    before (class-conditional checkpoints load unchanged)."""
    from scorelab.nets.unet import UNet

    torch.manual_seed(0)
    tok = WordTokenizer.from_captions(CAPTIONS, context=12)
    kw = dict(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
              dropout=0.0)
    net = UNet((1, 8, 8), text=dict(vocab_size=len(tok), context=12, dim=16, depth=1,
                                    heads=2), cross_attention_resolutions=(8, 4), **kw).eval()
    crosses = [m for m in net.modules() if isinstance(m, CrossAttention)]
    assert len(crosses) == 1 + 2 + 1 + 1        # encoder 8 and 4, middle, decoder 4 and 8
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    ids = tok.encode(CAPTIONS)[0]
    torch.testing.assert_close(net(x, t, ids), net(x, t, None))
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.2)
    out = net(x, t, ids)
    changed = tok.encode(["seven right, seven left"])[0]
    assert (net(x[1:2], t[1:2], changed) - out[1:2]).abs().max() > 1e-3
    for i in range(3):
        torch.testing.assert_close(net(x[i:i + 1], t[i:i + 1], ids[i:i + 1])[0], out[i],
                                   rtol=1e-5, atol=1e-5)
    plain = UNet((1, 8, 8), num_classes=10, **kw)
    assert not any("cross" in k or "text" in k for k in plain.state_dict())


def test_a_prompt_is_encoded_once_per_sampling_call():
    from scorelab.models.text_encoders import encode_text
    tok = WordTokenizer.from_captions(CAPTIONS, context=12)
    enc = TextEncoder(len(tok), context=12, dim=16, depth=1, heads=2).eval()
    calls = []
    enc.register_forward_hook(lambda *_: calls.append(1))
    ids = tok.encode(CAPTIONS)[0]
    with torch.no_grad():
        first = encode_text(enc, ids)
        assert encode_text(enc, ids) is first and len(calls) == 1
        ids[0, 1] = UNKNOWN                                   # an in-place edit re-encodes
        assert not torch.equal(encode_text(enc, ids)[0], first[0]) and len(calls) == 2
        encode_text(enc, ids.clone())
        assert len(calls) == 3
    with torch.inference_mode():
        frozen = ids.clone()
        assert encode_text(enc, frozen) is encode_text(enc, frozen) and len(calls) == 4
    encode_text(enc, ids)                                     # under autograd: no cache
    assert len(calls) == 5
    assert "_encoded" not in str(enc.state_dict().keys())


def test_a_frozen_clip_keeps_the_encodings_of_captions_it_has_seen(tmp_path):
    pytest.importorskip("transformers")
    from tiny_clip import tiny_clip

    from scorelab.models.clip_text import ClipTextEncoder, ClipTokenizer

    tok = ClipTokenizer.from_pretrained(str(tiny_clip(tmp_path / "clip")), context=20)
    state = tok.state_dict()
    plain = ClipTextEncoder(state["model_config"], 20, tok.empty(), str(tmp_path / "clip"))
    kept = ClipTextEncoder(state["model_config"], 20, tok.empty(), cache=3)
    kept.load_state_dict(plain.state_dict())
    calls = []
    kept.model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    ids = tok.encode(CAPTIONS[:2] + [""] + CAPTIONS[:1])[0]   # a repeat and the null caption
    for batch in (ids, ids[[3, 1]], tok.encode([CAPTIONS[2]])[0]):
        want, got = plain(batch), kept(batch)
        mask = want[1]
        torch.testing.assert_close(got[0][mask], want[0][mask], rtol=1e-5, atol=1e-5)
        assert torch.equal(got[1], mask)
        torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-5)
    assert calls == [3, 1]          # 3 distinct captions, then all kept, then one new
    assert len(kept._cache) == 3    # the least recently used went out
    with pytest.raises(ValueError, match=">= 0 captions"):
        ClipTextEncoder(state["model_config"], 20, tok.empty(), cache=-1)
