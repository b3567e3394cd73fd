"""`jointembed model import`: open_clip and transformers CLIP/SigLIP models as bundles.

Offline: randomly initialised models with the real architecture classes at tiny widths
(tests/_tiny_models.py), saved the way users get them (open_clip hub folder, open_clip
checkpoint file + --arch, transformers save_pretrained folders). Each imported bundle is
compared with the framework's *own* pipeline, written out here (its image transform,
its tokenizer, its encoders, L2-normalised), on real Flickr8K dev images and captions the
importer did not see, plus punctuation, unicode, emoji, HTML entities and texts longer
than the context.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="model import needs the [import] extra (torch, open_clip)")
import jointembed_train._torchvision  # noqa: E402,F401  (before anything imports torchvision)

pytest.importorskip("open_clip")
sys.path.insert(0, str(Path(__file__).parent))
import _tiny_models as tiny  # noqa: E402

from jointembed_pg import Bundle, Store  # noqa: E402
from jointembed_export.import_int8 import DYNAMIC, STATIC  # noqa: E402
from jointembed_pg.errors import BundleError  # noqa: E402

pytestmark = pytest.mark.flickr8k

HOSTILE = [
    "Hello, World!!! (really?)", "a dog &amp; a cat", "&lt;b&gt;bold&lt;/b&gt; &#39;quoted&#39;",
    "it's “curly” ‘quotes’", "café naïve résumé Ångström", "ﬁne ﬂowers", "🐶 a dog and a 🚀 rocket",
    "東京タワー at night", "Ｆｕｌｌ ｗｉｄｔｈ", "tab\there\nnewline", "   spaces   around  ", "I'LL GO, don't STOP",
    "price: $5.99 (50% off)!", "Ἀθῆναι", "مرحبا بالعالم", "नमस्ते", "e\u0301 combining", "ß straße İstanbul",
    "x" * 300, " ".join(["a brown dog runs across the green grass after a red ball"] * 12),
]


def _cos(a, b) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def dev(flickr8k_dir):
    from jointembed_export.data import load_split

    split = load_split(flickr8k_dir, "dev", limit=8)
    return split.images, split.captions[:30] + HOSTILE


def _run_cli(args, home: Path):
    env = dict(os.environ, JOINTEMBED_HOME=str(home))
    env.pop("DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory) -> Path:
    return tiny.save_open_clip_dir(tmp_path_factory.mktemp("oc") / "tiny-clip", tiny.OPEN_CLIP_TINY)


@pytest.fixture(scope="module")
def cli_import(open_clip_dir, flickr8k_dir, tmp_path_factory):
    """``jointembed model import <open_clip folder> --name clip-tiny --int8`` in a fresh home."""
    home = tmp_path_factory.mktemp("home")
    p = _run_cli(["model", "import", open_clip_dir, "--name", "clip-tiny", "--licence", "MIT (test)", "--int8",
                  "--data-dir", flickr8k_dir, "--json"], home)
    assert p.returncode == 0, p.stderr[-3000:]
    return home, json.loads(p.stdout.strip().splitlines()[-1])


def _open_clip_reference(name: str, images, texts, pretrained: str | None = None):
    """open_clip's own pipeline: its transform, tokenizer, encode_*(normalize=True)."""
    import torch
    from PIL import Image

    import open_clip

    model, _, transform = open_clip.create_model_and_transforms(name, pretrained=pretrained)
    tok = open_clip.get_tokenizer(name)
    model.eval()
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(Image.open(p).convert("RGB")) for p in images]),
                                 normalize=True).numpy()
        txt = model.encode_text(tok(texts), normalize=True).numpy()
    return img, txt, model, tok


def test_cli_import_of_an_open_clip_folder_matches_open_clip(cli_import, open_clip_dir, dev):
    home, out = cli_import
    bundle = Bundle.load(out["path"])
    m = bundle.manifest
    assert m["schema_version"] == 2 and m["preprocess"]["image"]["resize"] == "shortest"
    assert "pad_to" not in m["preprocess"]["text"]                 # causal CLIP text: any length
    from jointembed_export.imported import sha256_of

    assert m["source"] == {"framework": "open_clip", "architecture": f"local-dir:{open_clip_dir}",
                           "weights": f"local-dir:{open_clip_dir}", "licence": "MIT (test)",
                           "weights_sha256": sha256_of([open_clip_dir / "open_clip_model.safetensors"])}
    images, texts = dev
    ref_img, ref_txt, _, _ = _open_clip_reference(f"local-dir:{open_clip_dir}", images, texts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                              # truncation warnings (long texts)
        img, txt = bundle.encode_images(images), bundle.encode_texts(texts)
    assert _cos(img, ref_img).min() >= 0.9999
    assert _cos(txt, ref_txt).min() >= 0.9999
    # the int8 sibling: dynamic quantisation, its agreement with fp32 recorded and close
    int8 = Bundle.load(out["int8_path"])
    assert int8.manifest["precision"] == "int8" and int8.manifest["source"] == m["source"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _cos(int8.encode_images(images), img).min() > 0.99
        assert _cos(int8.encode_texts(texts), txt).min() > 0.99
    q = int8.manifest["int8"]                                        # a ViT image tower: dynamic, no calibration
    assert (q["image_method"], q["text_method"], q["calibration"]) == (DYNAMIC, DYNAMIC, None)
    listed = json.loads(_run_cli(["model", "list", "--json"], home).stdout)
    row = next(r for r in listed if r["name"] == "clip-tiny")
    assert row["source"].startswith("open_clip:") and row["licence"] == "MIT (test)"


def test_clip_tokenizer_json_gives_open_clip_ids(flickr8k_dir):
    """open_clip's SimpleTokenizer vs our tokenizer.json on 5,000 captions + hostile texts."""
    from tokenizers import Tokenizer

    import open_clip
    from jointembed_export.clip_tokenizer import framework_ids, simple_tokenizer_json
    from jointembed_train.data import load_flickr8k

    tok = open_clip.get_tokenizer("ViT-B-32")
    ours = Tokenizer.from_str(simple_tokenizer_json(tok))
    ours.enable_truncation(77)
    texts = load_flickr8k(flickr8k_dir).captions[:5000] + HOSTILE
    same = sum(ours.encode(t).ids == framework_ids(tok, t, 77) for t in texts)
    print(f"token ids identical on {same}/{len(texts)} = {100 * same / len(texts):.3f}%")
    assert same / len(texts) >= 0.995
    assert all(ours.encode(t).ids == framework_ids(tok, t, 77) for t in HOSTILE[-2:])  # truncation keeps EOT


def test_imported_bundle_is_indexed_and_searched_through_sql(cli_import, dev, pg_dsn):
    bundle = Bundle.load(cli_import[1]["path"])
    images, texts = dev
    with Store(pg_dsn) as store:
        coll = store.collection("imported", bundle=bundle)
        assert coll.add_images(images).written == len(images)
        assert coll.add_texts(texts[:10]).written == 10
        for p in images[:3]:                                         # an image finds itself first
            assert coll.search(Path(p), k=1, target="image", exact=True)[0].key == str(Path(p).resolve())
        hits = coll.search(texts[0], k=3)                            # a text searches the images
        assert len(hits) == 3 and {h.key for h in hits} <= {str(Path(p).resolve()) for p in images}
        with store.transaction() as conn:                            # the vectors in Postgres are the bundle's
            got = conn.execute("SELECT count(*) FROM pg_indexes WHERE schemaname = 'jointembed'").fetchone()[0]
        assert got >= 2


def test_open_clip_checkpoint_file_without_causal_mask_pads_to_the_context(tmp_path, dev, flickr8k_dir):
    """--arch open_clip:ARCH + a checkpoint in open_clip's own format (state_dict, module. prefix);
    a text tower without causal mask (MobileCLIP's) computes on the padding: pad_to 77."""
    import torch

    from jointembed_export.import_bundle import import_model

    names = tiny.register_open_clip(tmp_path / "cfg")
    ckpt = tiny.save_open_clip(names["nocausal"], tmp_path / "nc.pt")
    out = import_model(ckpt, tmp_path / "bundle", arch=f"open_clip:{names['nocausal']}", data_dir=flickr8k_dir)
    bundle = Bundle.load(out)
    assert bundle.manifest["preprocess"]["text"]["pad_to"] == 77
    images, texts = dev
    ref_img, ref_txt, model, tok = _open_clip_reference(names["nocausal"], images, texts, str(ckpt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, mask = bundle.tokenizer.encode(texts[:2])
        assert ids.shape == (2, 77)
        assert _cos(bundle.encode_images(images), ref_img).min() >= 0.9999
        assert _cos(bundle.encode_texts(texts), ref_txt).min() >= 0.9999
        # the ingest path (batches of similar length) keeps the fixed length too
        assert _cos(bundle.encode_texts_by_length(texts, batch_size=8), ref_txt).min() >= 0.9999
    # why pad_to: the same caption without the padding embeds differently in this tower
    with torch.no_grad():
        full = tok(texts[:1])
        n = int((full[0] != 0).sum())
        x = model.text
        emb = x.token_embedding(full[:, :n]) + x.positional_embedding[:n]
        pooled = x.ln_final(x.transformer(emb))[torch.arange(1), full[:, :n].argmax(-1)] @ x.text_projection
        short = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    assert _cos(short, ref_txt[:1]).min() < 0.9999


def test_transformers_clip_folder_matches_transformers(tmp_path, dev, flickr8k_dir):
    import torch
    import transformers
    from PIL import Image

    from jointembed_export.import_bundle import import_model

    folder = tiny.save_hf_clip(tmp_path / "clip")
    bundle = Bundle.load(import_model(folder, tmp_path / "bundle", data_dir=flickr8k_dir))
    assert bundle.manifest["source"]["architecture"] == "CLIPModel"
    assert bundle.manifest["preprocess"]["image"]["crop"] == "center"   # transformers floors the offsets
    images, texts = dev
    model = transformers.CLIPModel.from_pretrained(folder).eval()
    proc = transformers.CLIPImageProcessorPil.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        px = torch.from_numpy(proc(images=[Image.open(p).convert("RGB") for p in images],
                                   return_tensors="np")["pixel_values"])
        ref_img = torch.nn.functional.normalize(model.get_image_features(pixel_values=px).pooler_output, dim=-1)
        t = tok(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        ref_txt = torch.nn.functional.normalize(model.get_text_features(**t).pooler_output, dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _cos(bundle.encode_images(images), ref_img.numpy()).min() >= 0.9999
        assert _cos(bundle.encode_texts(texts), ref_txt.numpy()).min() >= 0.9999


def test_transformers_siglip_folder_squashes_and_pads_to_64(tmp_path, dev, flickr8k_dir):
    import torch
    import transformers
    from PIL import Image

    from jointembed_export.data import load_split
    from jointembed_export.import_bundle import import_model

    folder = tiny.save_hf_siglip(tmp_path / "siglip", load_split(flickr8k_dir, "train", limit=400).captions)
    bundle = Bundle.load(import_model(folder, tmp_path / "bundle", data_dir=flickr8k_dir))
    m = bundle.manifest
    assert m["preprocess"]["image"]["resize"] == "squash" and m["preprocess"]["text"]["pad_to"] == 64
    images, texts = dev
    model = transformers.SiglipModel.from_pretrained(folder).eval()
    proc = transformers.SiglipImageProcessorPil.from_pretrained(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        px = torch.from_numpy(proc(images=[Image.open(p).convert("RGB") for p in images],
                                   return_tensors="np")["pixel_values"])
        ref_img = torch.nn.functional.normalize(model.get_image_features(pixel_values=px).pooler_output, dim=-1)
        ids = tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="pt")["input_ids"]
        ref_txt = torch.nn.functional.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _cos(bundle.encode_images(images), ref_img.numpy()).min() >= 0.9999
        assert _cos(bundle.encode_texts(texts), ref_txt.numpy()).min() >= 0.9999


def test_schema_1_runtime_rule_refuses_imported_fields(cli_import, tmp_path):
    """A manifest that says schema 1 but needs schema-2 rules is refused, naming the field."""
    import shutil

    d = tmp_path / "b"
    shutil.copytree(cli_import[1]["path"], d)
    m = json.loads((d / "manifest.json").read_text())
    m["schema_version"] = 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="needs schema_version 2"):
        Bundle.load(d, verify=False)


def test_checkpoint_file_without_arch_is_a_one_line_error(tmp_path):
    ckpt = tmp_path / "weights.pt"
    ckpt.write_bytes(b"not really")
    p = _run_cli(["model", "import", ckpt, "--name", "x"], tmp_path)
    assert p.returncode == 1 and "--arch open_clip:ARCH" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("size", [224, 64])
def test_runtime_preprocessing_is_torchvision_pixel_for_pixel(dev, size, tmp_path):
    """``resize: shortest`` + ``crop: center_round`` = open_clip's eval transform (torchvision
    Resize + CenterCrop, bicubic) exactly, on Flickr8K photos and on sizes where our own
    ``shorter_side`` rule differs (large: Pillow reducing_gap; 303x227: longer side rounded
    vs truncated; odd crop margins)."""
    from PIL import Image

    photo = Image.open(dev[0][0]).convert("RGB")
    extra = []
    for w, h in [(1001, 667), (303, 227), (227, 303), (640, 97)]:
        extra.append(tmp_path / f"{w}x{h}.png")
        photo.resize((w, h), Image.Resampling.BICUBIC).save(extra[-1])

    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from jointembed_pg.model.preprocess import ImageSpec, load

    transform = open_clip.image_transform(size, is_train=False)
    spec = ImageSpec(size=size, resize="shortest", crop="center_round", mean=OPENAI_DATASET_MEAN,
                     std=OPENAI_DATASET_STD)
    old = ImageSpec(size=size, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
    images = list(dev[0]) + extra
    ref = [transform(Image.open(p).convert("RGB")).numpy() for p in images]
    assert max(float(np.abs(load(p, spec) - r).max()) for p, r in zip(images, ref)) == 0.0
    assert max(float(np.abs(load(p, old) - r).max()) for p, r in zip(images, ref)) > 0.01


def test_runtime_squash_is_transformers_siglip_pil_processor(dev):
    import transformers
    from PIL import Image

    from jointembed_pg.model.preprocess import ImageSpec, load

    proc = transformers.SiglipImageProcessorPil(size={"height": 224, "width": 224})
    spec = ImageSpec(size=224, resize="squash", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    images, _ = dev
    ref = proc(images=[Image.open(p).convert("RGB") for p in images], return_tensors="np")["pixel_values"]
    ours = np.stack([load(p, spec) for p in images])
    assert float(np.abs(ours - ref).max()) < 1e-5      # float rounding of rescale/normalise only


# --------------------------------------------------------------------------- int8 of conv towers
@pytest.fixture(scope="module")
def resnet_import(tmp_path_factory, flickr8k_dir):
    """open_clip's ModifiedResNet (RN50's classes, tiny) as a checkpoint, imported with int8
    calibrated on 8 Flickr8K train images."""
    from jointembed_export.import_bundle import import_model

    tmp = tmp_path_factory.mktemp("rn")
    names = tiny.register_open_clip(tmp / "cfg")
    ckpt = tiny.save_open_clip(names["resnet"], tmp / "rn.pt")
    out = import_model(ckpt, tmp / "rn", arch=f"open_clip:{names['resnet']}", data_dir=flickr8k_dir, int8=True,
                       calibration_n=8)
    return out, out.with_name(out.name + "-int8")


def test_int8_of_a_convolutional_image_tower_is_static_and_calibrated(resnet_import, dev):
    """RN-style image tower: static QDQ int8 convolutions (dynamic quantisation leaves Conv
    fp32), ranges from the calibration images; the text tower stays dynamic."""
    import onnx

    fp32_dir, int8_dir = resnet_import
    fp32, int8 = Bundle.load(fp32_dir), Bundle.load(int8_dir)
    q = int8.manifest["int8"]
    assert (q["image_method"], q["text_method"]) == (STATIC, DYNAMIC)
    assert q["calibration"] == "8 Flickr8K train images"
    graph = onnx.load(str(int8_dir / "image.onnx")).graph
    made_by = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) > 10 and all(made_by[n.input[0]].op_type == "DequantizeLinear"       # activations
                                   and made_by[n.input[1]].op_type == "DequantizeLinear"    # weights
                                   for n in convs)
    weights = {t.name: t for t in graph.initializer}
    w = weights[made_by[convs[0].input[1]].input[0]]
    assert w.data_type == onnx.TensorProto.INT8 and len(weights[made_by[convs[0].input[1]].input[1]].dims) == 1
    images, texts = dev
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _cos(int8.encode_images(images), fp32.encode_images(images)).min() > 0.98
        assert _cos(int8.encode_texts(texts), fp32.encode_texts(texts)).min() > 0.99
    assert q["image_min_cosine_vs_fp32"] > 0.98


def test_static_int8_without_calibration_images_is_refused(resnet_import, tmp_path):
    from jointembed_export import ExportError
    from jointembed_export.import_int8 import quantize_bundle

    with pytest.raises(ExportError, match="needs calibration images: give --calibration-dir"):
        quantize_bundle(resnet_import[0], tmp_path / "q", data_dir=None)
    assert not (tmp_path / "q").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    with pytest.raises(ExportError, match="no image files"):
        quantize_bundle(resnet_import[0], tmp_path / "q", calibration_dir=empty)


# --------------------------------------------------------------------------- external data
@pytest.fixture(scope="module")
def external_import(open_clip_dir, flickr8k_dir, tmp_path_factory):
    """The open_clip folder of ``cli_import`` imported with a 100 kB external-data threshold
    (stands in for protobuf's 2 GiB: ViT-H/bigG towers)."""
    from jointembed_export.import_bundle import import_model

    return import_model(open_clip_dir, tmp_path_factory.mktemp("ext") / "ext", data_dir=flickr8k_dir,
                        int8=True, external_threshold=100_000)


def test_tower_over_the_threshold_gets_one_external_data_file(external_import, cli_import, dev):
    import onnx

    for d in (external_import, external_import.with_name(external_import.name + "-int8")):
        names = sorted(p.name for p in d.iterdir())
        assert names == ["image.onnx", "image.onnx.data", "manifest.json", "text.onnx", "text.onnx.data",
                         "tokenizer.json"]
        files = json.loads((d / "manifest.json").read_text())["files"]
        from jointembed_pg.model.bundle import sha256_file

        for name in ("image.onnx.data", "text.onnx.data"):
            assert files[name] == {"sha256": sha256_file(d / name), "bytes": (d / name).stat().st_size}
        for g in ("image.onnx", "text.onnx"):                        # over the threshold: weights moved out
            assert (d / g).stat().st_size + (d / (g + ".data")).stat().st_size > 100_000
            assert (d / (g + ".data")).stat().st_size > 50_000
        graph = onnx.load(str(d / "image.onnx"), load_external_data=False).graph
        assert {e.value for t in graph.initializer for e in t.external_data if e.key == "location"} \
            == {"image.onnx.data"}
    single, ext = Bundle.load(cli_import[1]["path"]), Bundle.load(external_import)
    assert not any(p.suffix == ".data" for p in single.path.iterdir())
    images, texts = dev
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(ext.encode_images(images), single.encode_images(images), atol=1e-6)
        np.testing.assert_allclose(ext.encode_texts(texts), single.encode_texts(texts), atol=1e-6)


def _copy_bundle(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_tampered_or_linked_external_data_is_refused(external_import, cli_import, tmp_path):
    data = "image.onnx.data"
    d = _copy_bundle(external_import, tmp_path / "tampered")          # same size, one byte changed
    with open(d / data, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match="image.onnx.data: sha256 differs"):
        Bundle.load(d)
    d = _copy_bundle(external_import, tmp_path / "linked")            # a symlink to identical bytes
    (d / data).rename(tmp_path / "elsewhere.data")
    (d / data).symlink_to(tmp_path / "elsewhere.data")
    with pytest.raises(BundleError, match="image.onnx.data is a symlink"):
        Bundle.load(d)
    d = _copy_bundle(external_import, tmp_path / "hardlinked")        # a hard link to a file elsewhere
    os.link(d / data, tmp_path / "other.data")
    with pytest.raises(BundleError, match="hard links"):
        Bundle.load(d, verify=False)
    d = _copy_bundle(external_import, tmp_path / "swapped")           # checked at load, swapped before use
    b = Bundle.load(d)
    (d / data).rename(tmp_path / "swapped.data")
    (d / data).symlink_to(tmp_path / "swapped.data")
    with pytest.raises(BundleError, match="is a symlink"):
        b.encode_pixels(np.zeros((1, 3, 64, 64), np.float32))
    d = _copy_bundle(cli_import[1]["path"], tmp_path / "stray")       # a data file the manifest does not list
    (d / data).write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="not listed in"):
        Bundle.load(d)


def test_external_data_threshold_env_is_checked(monkeypatch):
    from jointembed_export import ExportError
    from jointembed_export.external_data import DEFAULT_THRESHOLD, THRESHOLD_ENV, threshold_bytes

    monkeypatch.delenv(THRESHOLD_ENV, raising=False)
    assert threshold_bytes() == DEFAULT_THRESHOLD < 2**31
    monkeypatch.setenv(THRESHOLD_ENV, "123456")
    assert threshold_bytes() == 123456 and threshold_bytes(999) == 999
    monkeypatch.setenv(THRESHOLD_ENV, "lots")
    with pytest.raises(ExportError, match="expected a number of bytes"):
        threshold_bytes()


def test_calibration_images_come_from_the_folder_given(tmp_path, dev):
    """--calibration-dir: the first N image files by name; links and other files are skipped."""
    import shutil

    from jointembed_export.import_int8 import calibration_images

    images, _ = dev
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, p in enumerate(images[:3]):
        shutil.copyfile(p, folder / f"{i:02d}.jpg")
    (folder / "notes.txt").write_text("not an image")
    (folder / "03.jpg").symlink_to(images[3])
    got, note = calibration_images(None, folder, n=2)
    assert [p.name for p in got] == ["00.jpg", "01.jpg"] and note == "2 images of calib/"
    got, _ = calibration_images(None, folder, n=10)
    assert [p.name for p in got] == ["00.jpg", "01.jpg", "02.jpg"]
