"""Issue 16: the multi-codebook quantizer, partial fine-tuning on cached intermediate
activations (exactness of the split network, export parity of a fine-tuned top), the
leave-topic-out split, and the EfficientNet-Lite export trap."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jointembed_export.build import build_bundle  # noqa: E402
from jointembed_export.parity import PARITY_ATOL, load_pixels, torch_image, torch_text  # noqa: E402
from jointembed_pg.model.bundle import Bundle  # noqa: E402
from jointembed_train import backbones, checkpoint, encoders, midcache  # noqa: E402
from jointembed_train.config import TrainConfig  # noqa: E402
from jointembed_train.data import Corpus, load_flickr8k  # noqa: E402
from jointembed_train.features import tokenize  # noqa: E402
from jointembed_train.model import JointHeads  # noqa: E402
from jointembed_train.quantizer import ProductQuantizer  # noqa: E402
from jointembed_train.topics import split_images, topic_images  # noqa: E402


# ---------------------------------------------------------------- product quantizer

def test_product_quantizer_shapes_and_config():
    q = ProductQuantizer(8, 16, 32, beta=1.0, tau=0.5)
    z = torch.nn.functional.normalize(torch.randn(5, 32), dim=1)
    assert q.assign(z).shape == (5, 8, 16)
    assert torch.allclose(q.assign(z).sum(-1), torch.ones(5, 8))
    assert q(z).shape == (5, 32) and q.hard_codes(z).shape == (5, 8)
    heads = JointHeads(TrainConfig(quantizer=True, quant_subspaces=8, codebook_size=16, embed_dim=32))
    assert isinstance(heads.quantizer, ProductQuantizer) and heads.quantizer.codebook.shape == (8, 16, 4)
    with pytest.raises(ValueError, match="divisible"):
        ProductQuantizer(3, 16, 32)


def test_product_quantizer_hard_limit_is_nearest_codeword_per_subspace():
    torch.manual_seed(0)
    q = ProductQuantizer(4, 8, 12, beta=1.0, tau=1e-6)
    z = torch.randn(20, 12)
    want = torch.empty_like(z)
    for n in range(20):  # slow reference: brute force per row and subspace
        for m in range(4):
            sub = z[n, 3 * m:3 * m + 3]
            d = [float(((sub - q.codebook[m, k].detach()) ** 2).sum()) for k in range(8)]
            want[n, 3 * m:3 * m + 3] = q.codebook[m, int(np.argmin(d))]
    torch.testing.assert_close(q.hard_quantize(z), want, rtol=0, atol=0)
    torch.testing.assert_close(q(z), want, rtol=0, atol=1e-5)
    q.set_tau(100.0)  # hot: far from any single codeword
    assert float((q(z) - want).abs().max()) > 1e-2


@pytest.mark.parametrize("straight_through", [False, True])
def test_product_quantizer_gradients_flow(straight_through):
    torch.manual_seed(0)
    q = ProductQuantizer(4, 8, 16, beta=0.5, tau=0.1, straight_through=straight_through).train()
    z = torch.randn(6, 16, requires_grad=True)
    (q(z) * torch.randn(6, 16)).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert q.codebook.grad is not None and q.codebook.grad.abs().sum() > 0


# ---------------------------------------------------------------- partial fine-tuning

def _perturbed_top_checkpoint(tmp_path: Path) -> Path:
    """A partial-mode checkpoint whose unfrozen tops (image blocks 14-15 + conv head, text layers
    4-5) differ clearly from the pretrained weights."""
    torch.manual_seed(0)
    cfg = TrainConfig(mode="partial", head="mlp", head_hidden=64, embed_dim=32,
                      image_unfrozen_blocks=3, text_unfrozen_layers=2, quantizer=True, quant_subspaces=4,
                      codebook_size=16, tau_end=0.05, quant_beta=0.5)
    from jointembed_train.partial import Tops

    ib, tb = backbones.load_image_backbone(), backbones.load_text_backbone()
    tops = Tops(ib.net, tb.bert, 3, 2)
    with torch.no_grad():
        for _, p in tops.trainable_named():
            p.add_(0.05 * torch.randn_like(p) * (p.std() if p.numel() > 1 else 1.0))
    info = {"finetuned_backbones": {k: v for k, v in tops.state_tensors().items()}}
    return checkpoint.save(checkpoint.from_heads(cfg, JointHeads(cfg), {"dev": {}, "test": {}}, info),
                           tmp_path / "partial.pt")


def test_split_network_equals_full_network(flickr8k_dir: Path):
    """Training on the caches computes exactly the backbones' function (no approximation)."""
    corpus = load_flickr8k(flickr8k_dir)
    pix = torch.from_numpy(load_pixels(corpus.image_paths[:3]))
    ib, tb = backbones.load_image_backbone(), backbones.load_text_backbone()
    caps = corpus.captions[:4] + ["a"]
    ids, mask = tokenize(caps, 128)
    with torch.no_grad():
        mid = midcache.image_stem_to(ib.net, pix, midcache.IMAGE_CUT)
        assert mid.shape == (3, 192, 7, 7)
        torch.testing.assert_close(midcache.image_top_from(ib.net, mid, midcache.IMAGE_CUT), ib(pix),
                                   rtol=0, atol=1e-6)
        hs = tb.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[midcache.TEXT_CUT]
        n = mask.sum(1)
        packed = torch.cat([hs[j, :int(n[j])] for j in range(len(caps))])
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), n.cumsum(0)])
        h, m = midcache.pad_tokens(packed, offsets, torch.tensor([4, 0, 2, 1, 3]))
        got = midcache.text_top_from(tb.bert, h, m, midcache.TEXT_CUT)
        torch.testing.assert_close(got, tb(ids, mask)[[4, 0, 2, 1, 3]], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_partial_finetuned_export_parity_on_real_images(tmp_path: Path, flickr8k_dir: Path):
    ckpt = _perturbed_top_checkpoint(tmp_path)
    out = build_bundle(ckpt, tmp_path / "bundle", data_dir=flickr8k_dir)
    man = json.loads((out / "manifest.json").read_text())
    assert man["parity"]["inputs"].startswith("flickr8k test")
    assert max(man["parity"]["image_max_abs_diff"], man["parity"]["text_max_abs_diff"]) <= PARITY_ATOL
    assert man["quantizer"] == {"K": 16, "M": 4, "tau_end": 0.05, "beta": 0.5}
    # the fine-tuned tops are really in the bundle: pretrained tops give other embeddings
    ck = checkpoint.load(ckpt)
    bundle = Bundle.load(out)
    pix = load_pixels(load_flickr8k(flickr8k_dir).image_paths[:4])
    onnx = bundle.encode_pixels(pix)
    np.testing.assert_allclose(onnx, torch_image(encoders.image_encoder(ck), pix), rtol=0, atol=PARITY_ATOL)
    ck.info = {}
    assert np.abs(onnx - torch_image(encoders.image_encoder(ck), pix)).max() > 1e-2
    ids, mask = bundle.tokenizer.encode(["a dog runs on the grass", "two people ride bikes"])
    assert np.abs(bundle.encode_texts(["a dog runs on the grass", "two people ride bikes"])
                  - torch_text(encoders.text_encoder(ck), ids, mask)).max() > 1e-2


def test_unknown_finetuned_tensor_is_refused(tmp_path: Path):
    cfg = TrainConfig(embed_dim=16)
    ck = checkpoint.from_heads(cfg, JointHeads(cfg), {}, {"finetuned_backbones": {
        "image": {"net._blocks.99.weight": torch.zeros(1)}}})
    with pytest.raises(ValueError, match="unknown tensors"):
        encoders.image_encoder(ck)


def test_partial_training_on_small_corpus(flickr8k_dir: Path, tmp_path: Path):
    """Both stages run, the unfrozen tops change, the checkpoint exports through encoders
    and reproduces the training path's test embeddings."""
    from jointembed_train.partial import train_partial

    torch.set_num_threads(2)
    full = load_flickr8k(flickr8k_dir)
    keep = full.splits["train"][:40]
    sel = np.isin(full.caption_image_ids, keep)
    remap = {int(o): n for n, o in enumerate(keep)}
    corpus = Corpus([full.image_paths[i] for i in keep], [c for c, s in zip(full.captions, sel) if s],
                    np.array([remap[int(i)] for i in full.caption_image_ids[sel]], np.int64),
                    {"train": np.arange(24), "dev": np.arange(24, 40), "test": np.arange(24, 40)})
    cfg = TrainConfig(mode="partial", epochs=2, batch_size=16, lr=2e-3, warmup_epochs=0.0, head="mlp",
                      head_hidden=64, embed_dim=32, image_unfrozen_blocks=2, text_unfrozen_layers=1,
                      finetune_epochs=2, backbone_lr=1e-3, finetune_head_lr=1e-3, finetune_evals=1)
    ck = train_partial(cfg, corpus, tmp_path / "run", tmp_path / "cache", progress=False)
    assert set(ck.metrics) == {"dev", "test", "test_topic"}
    assert (tmp_path / "run" / "best.pt").is_file()
    assert [h["at"] for h in ck.info["history"]] == ["stage1 epoch 1", "stage1 epoch 2", "stage2 step 14/14"]
    if ck.info["selection"].endswith("(stage2 step 14/14)"):
        fb = ck.info["finetuned_backbones"]
        assert {k.split(".")[2] for k in fb["image"] if k.startswith("net._blocks")} == {"15"}
        assert {k.split(".")[3] for k in fb["text"]} == {"5"}
        pre = backbones.load_image_backbone().state_dict()
        assert any(not torch.equal(v, pre[k]) for k, v in fb["image"].items())
    enc = encoders.image_encoder(checkpoint.load(tmp_path / "run" / "best.pt"))
    test_paths = [corpus.image_paths[i] for i in corpus.splits["test"]]
    u = torch_image(enc, load_pixels(test_paths))
    from jointembed_pg.metrics import retrieval_metrics

    txt = encoders.text_encoder(checkpoint.load(tmp_path / "run" / "best.pt"))
    rows = np.nonzero(np.isin(corpus.caption_image_ids, corpus.splits["test"]))[0]
    ids, mask = tokenize([corpus.captions[i] for i in rows], 128)
    v = torch_text(txt, ids.numpy(), mask.numpy())
    m = retrieval_metrics(u, v, corpus.caption_image_ids[rows] - 24)
    assert abs(m["rsum"] - ck.metrics["test"]["rsum"]) < 1e-6


# ---------------------------------------------------------------- leave-topic-out

def test_leave_topic_out_split(flickr8k_dir: Path):
    corpus = load_flickr8k(flickr8k_dir)
    hit = topic_images(corpus, "snow_bike_horse")
    assert {s: int(hit[corpus.splits[s]].sum()) for s in ("train", "dev", "test")} == \
        {"train": 876, "dev": 148, "test": 134}
    out = split_images(corpus, "train", "snow_bike_horse", inside=False)
    assert len(out) == 6000 - 876 and not hit[out].any()
    with pytest.raises(ValueError, match="unknown topic"):
        topic_images(corpus, "nope")


# ---------------------------------------------------------------- export trap

@pytest.mark.parametrize("name", sorted(backbones.IMAGE_BACKBONES))
def test_backbone_keeps_relu6_not_swish(name):
    """``set_swish(memory_efficient=False)`` swaps EfficientNet-Lite's ReLU6 for Swish and
    silently wrecks the model (rsum ~24, issue 16): every loaded backbone must be ReLU6."""
    net = backbones.load_image_backbone(name=name).net
    x = torch.tensor([-1.0, 3.0, 7.0])
    torch.testing.assert_close(net._swish(x), torch.tensor([0.0, 3.0, 6.0]))
    net.set_swish(memory_efficient=False)  # what the trap does
    assert not torch.allclose(net._swish(x), torch.tensor([0.0, 3.0, 6.0]))
