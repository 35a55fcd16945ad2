"""Text alignment through the metric registry: prompts of held-out or seen pairs, the digits
they name, the digit-halves extractor, caption accuracy and the halves' FID, and a sample
pass on captions that gives the same rows on any number of processes."""

import pytest
import torch

from scorelab.data.captions import encode_prompts, evaluation_prompts, read_prompts
from scorelab.data.pairs import (SEEN, UNSEEN, MNIST5kPairsDataModule, caption,
                                 digits_named)
from scorelab.metrics import build_metric
from scorelab.metrics.caption import caption_accuracy
from scorelab.metrics.digit_classifier import load_digit_classifier
from scorelab.metrics.evaluation import gather_union, sample_features
from scorelab.metrics.features import DigitHalfFeatures, feature_spec
from scorelab.metrics.sample_pass import SampleEvaluation
from test_pairs import named


def test_every_caption_names_its_digits_and_other_text_names_none():
    g = torch.Generator().manual_seed(0)
    for a in range(10):
        for b in range(10):
            for _ in range(6):
                text = caption(a, b, g)
                assert digits_named(text) == named(text) == (a, b), text
    for text in ("a 3 on the left", "3 and 4", "left 3, left 4", "left 3 4, right 5", "",
                 "a 12 on the left and a 7 on the right"):
        assert digits_named(text) is None, text
    both = MNIST5kPairsDataModule.named_digits(["left 1, right 2", "seven right, three left"])
    assert both.tolist() == [[1, 2], [3, 7]]
    assert MNIST5kPairsDataModule.named_digits(["left 1, right 2", "a cat"]) is None


def test_prompts_come_from_the_held_out_or_seen_pairs_or_a_file(tmp_path):
    dm = MNIST5kPairsDataModule(size=20)
    unseen, seen = dm.prompts(60, "unseen"), dm.prompts(60, "seen")
    assert {digits_named(c) for c in unseen} <= UNSEEN
    assert {digits_named(c) for c in seen} <= set(SEEN)
    assert evaluation_prompts(dm, None, 7, seed=3) == evaluation_prompts(dm, "unseen", 7, 3)
    assert evaluation_prompts(dm, "unseen", 7, 3) != evaluation_prompts(dm, "unseen", 7, 4)
    file = tmp_path / "p.txt"
    file.write_text("left 1, right 2\n\n  seven right, three left \n")
    assert evaluation_prompts(dm, str(file), 3) == ["left 1, right 2",
                                                    "seven right, three left",
                                                    "left 1, right 2"]
    with pytest.raises(ValueError, match="prompts=train: neither a file nor a split"):
        evaluation_prompts(dm, "train", 3)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no prompt"):
        read_prompts(tmp_path / "empty.txt")
    ids = encode_prompts(dm.tokenizer.state_dict(), ["left 1, right 2", "left zebra, right 2"])
    assert ids.shape == (2, dm.context) and ids[1, 2] == 2            # the unknown token


def test_caption_accuracy_and_half_fid_of_real_canvases_through_the_registry():
    dm = MNIST5kPairsDataModule(size=200)
    x, _ = dm.load().tensors
    assert feature_spec("auto", dm.name)["name"] == "digit_halves"
    ex = DigitHalfFeatures(shape=dm.shape)
    feats, logits = ex(x)
    assert feats.shape == (200, 256) and logits.shape == (200, 20)
    accuracy = build_metric("caption_accuracy")
    got = accuracy.compute({"features": feats, "logits": logits, "digits": dm.digits}, None)
    direct = caption_accuracy(load_digit_classifier(), (x + 1) / 2, dm.digits)
    assert got["caption_accuracy"] == pytest.approx(direct["caption_accuracy"], abs=0.02)
    assert got["caption_accuracy"] > 0.9
    swapped = accuracy.compute({"logits": logits, "digits": dm.digits.flip(1)}, None)
    assert swapped["caption_accuracy"] < 0.2
    # the right digits on the wrong sides: not the caption, but both its digits
    assert swapped["order_free_accuracy"] == pytest.approx(got["order_free_accuracy"])
    assert swapped["order_free_accuracy"] >= got["caption_accuracy"]
    half = build_metric("half_fid")
    reference, where = half.reference(dm, ex, None)
    assert "mnist5k_digits" in where                # the 28x28 runs' reference file
    real = half.compute({"features": feats}, reference)["half_fid"]
    noise = half.compute({"features": ex(torch.rand(200, 1, 28, 56) * 2 - 1)[0]},
                         reference)["half_fid"]
    assert real < 3 and noise > 30 * real
    with pytest.raises(ValueError, match="reads 1x28x56 canvases"):
        DigitHalfFeatures(shape=(1, 28, 28))
    assert accuracy.skip_reason(type("D", (), {"shape": (1, 28, 28)})()) is not None


def test_a_sample_pass_on_captions_carries_the_digits_on_any_number_of_processes():
    """Sample i gets prompt i's token ids and digits; three processes' shards gathered in
    index order equal one process, and the caption metrics read the digits row."""
    dm = MNIST5kPairsDataModule(size=20)
    prompts = dm.prompts(11, "unseen")
    ids, digits = encode_prompts(dm.tokenizer.state_dict(), prompts), dm.named_digits(prompts)
    seen_ids = []

    def conditions(index):
        return ids[index], {"digits": digits[index]}

    def sample_fn(m, y, gen):
        seen_ids.append(y)
        return torch.rand(m, 1, 28, 56, generator=gen) * 2 - 1, 1

    ex = DigitHalfFeatures()
    single, _ = sample_features(sample_fn, {"digit_halves": ex}, 11, 4, 2, "cpu",
                                conditions=conditions)
    assert torch.equal(torch.cat(seen_ids), ids)
    assert torch.equal(single["digits"], digits)
    shards = [sample_features(sample_fn, {"digit_halves": ex}, 11, 4, 2, "cpu", 0, r, 3,
                              conditions=conditions)[0] for r in range(3)]
    joined = gather_union({k: torch.cat([s[k] for s in shards]) for k in single}, None)
    for key in single:
        assert torch.equal(joined[key], single[key]), key
    ev = SampleEvaluation({"caption_accuracy": build_metric("caption_accuracy"),
                           "accuracy": build_metric("accuracy")}, dm, implicit=("accuracy",))
    values = ev.compute(gather_union(single, None))
    assert set(values) == {"caption_accuracy", "left_accuracy", "right_accuracy",
                           "order_free_accuracy"}
    assert ev.computed == ["caption_accuracy"]


def _images(folder, n=6):
    from PIL import Image

    folder.mkdir(parents=True)
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(sub / f"img{i}.png")
    return sorted(folder.rglob("*.png"))


def test_an_image_folder_reads_captions_from_sidecars_or_a_jsonl(tmp_path):
    import json

    from scorelab.data.base import DataMissingError
    from scorelab.data.images import ImageFolderDataModule

    files = _images(tmp_path / "side")
    for i, f in enumerate(files):
        f.with_suffix(".txt").write_text(f"picture number {i} \n")
    dm = ImageFolderDataModule(root=str(tmp_path / "side"), image_size=8, captions=True,
                               context=6, batch_size=2, val_fraction=0.34)
    assert dm.captions == [f"picture number {i}" for i in range(6)] and dm.num_classes == 0
    x, ids = dm.load()[3]
    assert x.shape == (3, 8, 8) and dm.tokenizer.decode(ids) == "picture number 3"
    dm.setup("fit")
    val = {dm.captions[i] for i in dm.val_set.indices}
    assert set(dm.prompts(5, "unseen")) == val and not set(dm.prompts(8, "seen")) & val
    assert evaluation_prompts(dm, None, 3) == dm.prompts(3, "unseen", 1)

    files = _images(tmp_path / "table")
    rows = [{"file": str(f.relative_to(tmp_path / "table")), "text": f"red {i}"}
            for i, f in enumerate(files)]
    (tmp_path / "table/captions.jsonl").write_text("\n".join(map(json.dumps, rows[1:])))
    with pytest.raises(DataMissingError, match="no caption for 1 image"):
        ImageFolderDataModule(root=str(tmp_path / "table"), captions=True)
    (tmp_path / "table/captions.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    dm = ImageFolderDataModule(root=str(tmp_path / "table"), captions=True, image_size=8)
    assert dm.captions == [f"red {i}" for i in range(6)]
    (tmp_path / "side/b/img0.txt").unlink()
    with pytest.raises(DataMissingError, match="img0.png has no caption"):
        ImageFolderDataModule(root=str(tmp_path / "side"), captions=True)
    with pytest.raises(ValueError, match="context, 2 tokens .* shorter than 6 captions"):
        ImageFolderDataModule(root=str(tmp_path / "table"), captions=True, context=2).load()
