"""``jointembed model ...``: build, inspect and verify model bundles.

``build`` and the parity part of ``verify`` need the ``[export]`` extra (torch, onnx);
they reach the exporter through its entry point (:mod:`jointembed_pg.model.exporter`), inside
those commands only, so the CLI never names the exporter and stays torch-free.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from .. import paths
from ..model import exporter
from ..model.bundle import BUNDLE_FILES, MANIFEST, Bundle, available_bundles, bundles_dir, resolve
from ..errors import JointEmbedError
from ..progress import heartbeat
from .options import HelpGroup, quiet_stdout


def _export_build():
    """The registered exporter, or a ClickException saying which extra to install."""
    try:
        return exporter.load()
    except exporter.ExporterMissing as e:
        raise click.ClickException(str(e)) from e


@click.group("model", cls=HelpGroup, help="Build, inspect and verify model bundles (ONNX encoders + manifest).")
def model() -> None:
    """Click group mounted as ``jointembed model``."""


@model.command("build")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Training checkpoint (default: the committed training/weights/default.pt).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Bundle directory to write.")
@click.option("--name", help=f"Bundle name under the bundles directory (default: {paths.DEFAULT_BUNDLE}).")
@click.option("--int8", "int8", is_flag=True, help="Also write the int8 variant as <name>-int8.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Flickr8K-layout directory for parity (and int8 evaluation); default ../shared/data/flickr8k.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def build_cmd(checkpoint: Path | None, out: Path | None, name: str | None, int8: bool,
              data_dir: Path | None, force: bool) -> None:
    """Export a checkpoint into a bundle (default: bundles_dir()/default), with a parity check."""
    if out and name:
        raise click.UsageError("give either --out or --name, not both")
    try:
        target = out or bundles_dir() / (name or paths.DEFAULT_BUNDLE)
    except JointEmbedError as e:
        raise click.ClickException(str(e)) from e
    build = _export_build()
    targets = [target] + ([build.int8_dir(target)] if int8 else [])
    before = [_stamp(p) for p in targets]
    try:  # export.ExportError is a JointEmbedError
        with quiet_stdout(), heartbeat(_building(build, targets, checkpoint, force)):
            path = build.build_default_bundle(target, checkpoint=checkpoint, int8=int8, data_dir=data_dir,
                                              force=force)
    except JointEmbedError as e:
        raise click.ClickException(str(e)) from e
    for p, old in zip([path] + targets[1:], before):
        b = Bundle.load(p, verify=False)
        verb = "up to date" if old is not None and old == _stamp(p) else "wrote"
        click.echo(f"{verb} {p}: {b.model_id}, dim {b.dim}, {b.manifest['precision']}, {_quality_line(b.manifest)}")


def _building(build, targets: list[Path], checkpoint: Path | None, force: bool) -> str:
    """Progress label naming the bundles this build writes: ``building bundle default-int8``
    when only the int8 sibling is new (the fp32 bundle is current and kept)."""
    names = [t.name for t in targets]
    current = getattr(build, "bundle_is_current", None)
    if len(targets) > 1 and not force and current is not None and current(targets[0], checkpoint):
        names = names[1:]
    return f"building bundle{'s' if len(names) > 1 else ''} {' and '.join(names)}"


def _stamp(bundle_dir: Path):
    """Identity of a bundle's manifest on disk (None if absent): unchanged = nothing rewritten."""
    try:
        st = (Path(bundle_dir) / MANIFEST).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


# The manifest's informational parts (metrics, parity, int8) are not checked by the
# Manifest model (kept as the exporter wrote them): shown here, they are read as untrusted
# JSON -- a string where a number was written, a list where an object was -- never assumed.
def _obj(value) -> dict:
    """``value`` if it is a JSON object, else ``{}``."""
    return value if isinstance(value, dict) else {}


def _num(value) -> float | None:
    """``value`` as a float if it is a JSON number (not a bool), else None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fmt(value, spec: str) -> str:
    """A JSON number formatted with ``spec``, else ``"?"``."""
    v = _num(value)
    return "?" if v is None else format(v, spec)


def _quality_line(m: dict) -> str:
    """fp32: the recorded parity; int8: the measured test rsum against fp32."""
    q = _obj(m.get("int8"))
    if "rsum_int8" in q:
        return (f"Flickr8K test rsum {_fmt(q['rsum_int8'], '.2f')} (fp32 {_fmt(q.get('rsum_fp32'), '.2f')}, "
                f"{_fmt(q.get('rsum_delta'), '+.2f')})")
    return "parity " + _parity_line(_obj(m.get("parity")))


def _parity_line(p: dict) -> str:
    if not p:
        return "not recorded"
    if "image_min_cosine" in p:  # an imported bundle: against the framework's own pipeline
        return (f"min cosine vs the framework image {_fmt(p['image_min_cosine'], '.6f')}, text "
                f"{_fmt(p.get('text_min_cosine'), '.6f')}, token ids identical "
                f"{_fmt(100 * (_num(p.get('token_agreement')) or 0), '.1f')}%")
    keys = [k for k in ("image_max_abs_diff", "text_max_abs_diff") if k in p]
    return ", ".join(f"{k.split('_')[0]} {_fmt(p[k], '.2g')}" for k in keys) + f" ({p.get('inputs', '?')})"


def _test_rsum(m: dict) -> float | None:
    """Flickr8K test rsum: measured against fp32 for int8 bundles, from training otherwise."""
    q = _obj(m.get("int8"))
    if "rsum_int8" in q:
        return _num(q["rsum_int8"])
    return _num(_obj(_obj(m.get("metrics")).get("test")).get("rsum"))


@model.command("import")
@click.argument("source")
@click.option("--name", required=True, help="Bundle name under the bundles directory (e.g. clip-b32).")
@click.option("--arch", help="Architecture of a checkpoint file: open_clip:ARCH (e.g. open_clip:ViT-B-32).")
@click.option("--licence", "--license", "licence", default="unknown", show_default=True,
              help="The weights' licence as you know it (recorded in the manifest, not checked).")
@click.option("--int8", "int8", is_flag=True,
              help="Also write an int8 variant as <name>-int8: dynamic for transformer towers, static "
                   "(calibrated on images) for a convolutional image tower.")
@click.option("--calibration-dir", type=click.Path(file_okay=False, path_type=Path),
              help="With --int8 and a convolutional image tower: a folder of images like the ones you will "
                   "index, to calibrate on (default: Flickr8K train images of --data-dir).")
@click.option("--calibration-images", type=click.IntRange(1, 10_000), default=64, show_default=True,
              help="How many calibration images (the first, by file name).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Flickr8K-layout directory for the parity images and captions; default ../shared/data/flickr8k.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--json", "as_json", is_flag=True, help="Print {path, model_id, dim, parity, int8_path} as JSON.")
def import_cmd(source: str, name: str, arch: str | None, licence: str, int8: bool, calibration_dir: Path | None,
               calibration_images: int, data_dir: Path | None, force: bool, as_json: bool) -> None:
    """Import a pretrained open_clip or transformers CLIP/SigLIP model as a bundle.

    SOURCE is an open_clip checkpoint file (with --arch open_clip:ARCH), a folder saved by
    transformers' save_pretrained (CLIPModel, SiglipModel), or a hub name
    (open_clip:ViT-B-32/laion2b_s34b_b79k, hf:openai/clip-vit-base-patch32; needs internet).
    The bundle is checked against the framework's own preprocessing, tokenizer and
    encoders before it is written.
    """
    if name != Path(name).name or name in ("", ".", ".."):
        raise click.UsageError(f"--name must be a plain bundle name, got {name!r}")
    build = _export_build()
    target = paths.bundles_dir() / name
    data_dir = data_dir if data_dir is not None else paths.default_data_dir()
    try:
        with quiet_stdout(), heartbeat(f"importing {source} as {name}"):
            kw = {"calibration_dir": calibration_dir, "calibration_n": calibration_images} if int8 else {}
            path = build.import_model(source, target, arch=arch, licence=licence, data_dir=data_dir,
                                      force=force, int8=int8, **kw)
    except JointEmbedError as e:
        raise click.ClickException(str(e)) from e
    b = Bundle.load(path, verify=False)
    parity = _obj(b.manifest.get("parity"))
    out = {"path": str(path), "model_id": b.model_id, "dim": b.dim, "parity": parity,
           "int8_path": str(build.int8_dir(path)) if int8 else None}
    if as_json:
        click.echo(json.dumps(out))
        return
    click.echo(f"wrote {path}: {b.model_id}, dim {b.dim}, min cosine vs the framework "
               f"image {_fmt(parity.get('image_min_cosine'), '.6f')} text {_fmt(parity.get('text_min_cosine'), '.6f')}, "
               f"token ids identical {_fmt(_num(parity.get('token_agreement')) and 100 * parity['token_agreement'], '.1f')}%")
    if int8:
        q = _obj(Bundle.load(build.int8_dir(path), verify=False).manifest.get("int8"))
        click.echo(f"wrote {build.int8_dir(path)} (int8: image {q.get('image_method')}, text {q.get('text_method')}; "
                   f"min cosine vs fp32 image {_fmt(q.get('image_min_cosine_vs_fp32'), '.4f')} "
                   f"text {_fmt(q.get('text_min_cosine_vs_fp32'), '.4f')})")


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of {name, path, model_id, dim, precision, "
                                                      "test_rsum, source, licence, error}.")
def list_cmd(as_json: bool) -> None:
    """The bundles under the bundles directory (<home>/bundles, or $JOINTEMBED_BUNDLES): name, model id,
    dim, precision, test rsum, source."""
    rows = []
    for name in available_bundles():
        path = paths.bundles_dir() / name
        try:
            b = Bundle.load(path, verify=False)
        except JointEmbedError as e:
            rows.append({"name": name, "path": str(path), "model_id": None, "dim": None, "precision": None,
                         "test_rsum": None, "source": None, "licence": None, "error": str(e)})
            continue
        src = _obj(b.manifest.get("source"))
        rows.append({"name": name, "path": str(path), "model_id": b.model_id, "dim": b.dim,
                     "precision": b.manifest["precision"], "test_rsum": _test_rsum(b.manifest),
                     "source": (f"{src.get('framework')}:{src.get('architecture')}" if src else "jointembed"),
                     "licence": src.get("licence") if src else None, "error": None})
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no bundles under {paths.bundles_dir()} (build one with `jointembed model build`)")
        return
    width = max(4, max(len(r["name"]) for r in rows))
    click.echo(f"{'name':<{width}}  {'model_id':<20} {'dim':>4}  {'precision':<9} {'test rsum':>9}  source")
    for r in rows:
        if r["error"]:
            click.echo(f"{r['name']:<{width}}  invalid: {r['error']}")
            continue
        rsum = f"{r['test_rsum']:.2f}" if r["test_rsum"] is not None else "n/a"
        src = r["source"] + (f" (licence: {r['licence']})" if r["licence"] else "")
        click.echo(f"{r['name']:<{width}}  {r['model_id']:<20} {r['dim']:>4}  {r['precision']:<9} {rsum:>9}  {src}")


@model.command("info")
@click.argument("bundle", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def info_cmd(bundle: str | None, as_json: bool) -> None:
    """Show a bundle's manifest (default bundle if none is named)."""
    try:
        b = Bundle.load(bundle, verify=False)
    except JointEmbedError as e:
        raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(json.dumps(b.manifest, indent=2, sort_keys=True))
        return
    m = b.manifest
    test = _obj(_obj(m.get("metrics")).get("test"))
    rows = [("path", b.path), ("model_id", b.model_id), ("dim", b.dim), ("distance", m["distance"]),
            ("normalized", m["normalized"]), ("precision", m["precision"]), ("quantizer", m.get("quantizer")),
            ("max_tokens", b.max_tokens), ("image size", b.image_spec.size),
            ("test rsum (training)", test.get("rsum", "n/a")), ("quality", _quality_line(m))]
    if _obj(m.get("int8")):
        rows.append(("int8 method", _obj(m.get("int8")).get("method", "?")))
    src = _obj(m.get("source"))
    if src:
        rows += [("source", f"{src.get('framework')}:{src.get('architecture')} ({src.get('weights')})"),
                 ("licence (as stated)", src.get("licence")), ("pad_to", _obj(_obj(m.get("preprocess")).get("text")).get("pad_to"))]
    rows += [(f"file {n}", f"{m['files'][n]['bytes']} bytes, sha256 {m['files'][n]['sha256'][:12]}")
             for n in BUNDLE_FILES]
    for k, v in rows:
        click.echo(f"{k:>20}: {v}")


@model.command("verify")
@click.argument("bundle", required=False)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint the bundle was exported from (default: the committed one).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Flickr8K-layout directory for the parity inputs.")
def verify_cmd(bundle: str | None, checkpoint: Path | None, data_dir: Path | None) -> None:
    """Check a bundle's checksums, then re-run ONNX-vs-PyTorch parity if torch is installed."""
    try:
        b = Bundle.load(bundle, verify=True)
    except JointEmbedError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{b.path}: manifest and sha256 of {len(BUNDLE_FILES)} files OK ({b.model_id})")
    if b.meta.source is not None:  # imported (or heads on imported towers): its reference was checked when written
        p = _obj(b.manifest.get("parity"))
        again = "model build --checkpoint ... --force" if "image_max_abs_diff" in p else "model import ... --force"
        click.echo(f"imported from {b.meta.source['framework']}:{b.meta.source['architecture']}; parity when "
                   f"written: {_parity_line(p)} (re-run: jointembed {again})")
        return
    try:
        build = exporter.load()
    except exporter.ExporterMissing as e:
        click.echo(f"parity skipped: {e}")
        return
    try:  # export.ExportError is a JointEmbedError
        report = build.verify_parity(resolve(bundle), checkpoint=checkpoint, data_dir=data_dir)
    except JointEmbedError as e:
        raise click.ClickException(f"parity FAILED: {e}") from e
    click.echo(f"parity OK: {_parity_line(report)}, tolerance {report.get('atol', 'none (int8)')}")
