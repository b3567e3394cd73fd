#!/usr/bin/env bash
# Packaging check (issue 15): install jointembed-pg the way a user does and run the main job's core.
#
#   .ci/wheel_check.sh [FLICKR8K_DIR]
#
# 1. builds the sdist and, from it, the wheel with `python -m build` (PEP 517, isolated);
# 2. checks the wheel: no generic top-level packages (training/, export/), head weights,
#    configs, SQL, py.typed, LICENSE and the exporter entry point inside;
# 3. installs the wheel with the [export] extra into a fresh venv in a temp dir outside the
#    checkout (not editable) and, from another working directory with its own
#    JOINTEMBED_HOME, runs `jointembed model build`, indexes 20 real Flickr8K test images and
#    their captions, and asserts that text->image and image->text searches find them.
#
# FLICKR8K_DIR: argument, else $JOINTEMBED_DATA_DIR, else ../shared/data/flickr8k beside the repo.
# PYTHON picks the interpreter (default python3). Needs only the package registries pip is set up for.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
data="${1:-${JOINTEMBED_DATA_DIR:-$repo/../shared/data/flickr8k}}"
if [ ! -f "$data/Flickr8k.token.txt" ] || [ ! -f "$data/Flickr_8k.testImages.txt" ]; then
  echo "wheel_check: no Flickr8K layout at $data (pass FLICKR8K_DIR)" >&2
  exit 1
fi
data="$(cd "$data" && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/jointembed-wheel.XXXXXX")"
# As root the embedded server runs as its own OS user, which must reach the venv's server
# binaries and the data dir under $work (mktemp makes it 0700); jointembed never loosens it.
if [ "$(id -u)" = 0 ]; then chmod 711 "$work"; fi
venv="$work/venv"
cleanup() {
  if [ -x "$venv/bin/jointembed" ]; then
    (cd "$work" && JOINTEMBED_HOME="$work/home" "$venv/bin/jointembed" server stop >/dev/null 2>&1) || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
t0=$SECONDS
step() { echo "wheel_check [$((SECONDS - t0)) s] $*"; }

# --- 1. build ------------------------------------------------------------------------------
step "building sdist + wheel"
"$python" -m venv "$work/build-env"
pip_quiet() {  # pip's own chatter goes to a log, shown only when it fails
  "$@" >"$work/pip.log" 2>&1 || { tail -40 "$work/pip.log" >&2; exit 1; }
}
pip_quiet "$work/build-env/bin/python" -m pip install build
"$work/build-env/bin/python" -m build --outdir "$work/dist" "$repo" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
wheels=("$work"/dist/jointembed_pg-*.whl)
wheel="${wheels[0]}"
step "built $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

# --- 2. what is inside ----------------------------------------------------------------------
"$work/build-env/bin/python" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
assert tops == {"jointembed_pg", "jointembed_train", "jointembed_export"}, f"top-level names: {sorted(tops)}"
need = ["jointembed_train/weights/default.pt", "jointembed_train/configs/default.json", "jointembed_pg/py.typed",
        "jointembed_pg/sql/migrations/001_schema.sql", "jointembed_export/build.py",
        *(f"jointembed_pg/{sub}/__init__.py" for sub in ("cli", "model", "ingest", "search", "evaluation", "sync", "server", "distributed")),
        "jointembed_pg/cli/options.py", "jointembed_pg/ingest/sandbox.py"]
missing = [n for n in need if n not in names]
assert not missing, f"missing from the wheel: {missing}"
info = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
eps = zipfile.ZipFile(sys.argv[1]).read(info[0]).decode()
assert "[jointembed_pg.exporters]" in eps and "default = jointembed_export.build" in eps, eps
assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "LICENSE not in the wheel"
print(f"wheel_check: wheel OK ({len(names)} files; top-level {sorted(tops)})")
EOF

# --- 3. fresh venv, user install --------------------------------------------------------------
step "installing the wheel with [export] into a fresh venv"
"$python" -m venv "$venv"
# the README's line, as written, from the directory that holds dist/ (as the checkout does)
(cd "$work" && pip_quiet "$venv/bin/python" -m pip install "$(ls dist/jointembed_pg-*.whl)[export]")
mkdir -p "$work/cwd"
cd "$work/cwd"  # not the checkout: nothing may be imported from it
unset PYTHONPATH DATABASE_URL JOINTEMBED_BUNDLES JOINTEMBED_PGDATA JOINTEMBED_DATA_DIR
export JOINTEMBED_HOME="$work/home"
je="$venv/bin/jointembed"
"$venv/bin/python" - "$repo" <<'EOF'
import sys, pathlib, jointembed_pg, jointembed_train, jointembed_export
repo = pathlib.Path(sys.argv[1]).resolve()
for m in (jointembed_pg, jointembed_train, jointembed_export):
    assert repo not in pathlib.Path(m.__file__).resolve().parents, f"{m.__name__} imported from the checkout"
print("wheel_check: imports come from", pathlib.Path(jointembed_pg.__file__).parent.parent)
EOF

step "jointembed model build"
"$je" model build --data-dir "$data"
# capture first: `| grep -q` closes the pipe early and, under pipefail, races the writer
info="$("$je" model info)"
grep -q "model_id: je-" <<<"$info" || { echo "wheel_check: model info shows no model_id" >&2; exit 1; }

# 20 real test images and their captions (Flickr8K token format)
head -n 20 "$data/Flickr_8k.testImages.txt" | tr -d '\r' | sed "s|^|$data/images/|" >"$work/images.txt"
"$venv/bin/python" - "$data" "$work" <<'EOF'
import sys, pathlib
data, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
names = {pathlib.Path(p).name for p in (work / "images.txt").read_text().split()}
lines = [l for l in (data / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines()
         if l.split("#", 1)[0] in names]
(work / "captions.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
assert len(names) == 20 and len(lines) >= 20, (len(names), len(lines))
EOF
step "indexing 20 images and $(wc -l <"$work/captions.token.txt") captions"
mapfile -t images <"$work/images.txt"
"$je" index images "${images[@]}" --collection wheelcheck --json >"$work/index_images.json"
"$je" index texts "$work/captions.token.txt" --collection wheelcheck --json >"$work/index_texts.json"

# text -> image: the first caption of image 0 must find image 0 in the top 5
query="$(head -n 1 "$work/captions.token.txt" | cut -f2)"
"$je" search text "$query" -k 5 --collection wheelcheck --json >"$work/t2i.jsonl"
# image -> text: image 0 must get one of its own captions in the top 5
"$je" search image "${images[0]}" -k 5 --collection wheelcheck --json >"$work/i2t.jsonl"
"$venv/bin/python" - "$work" <<'EOF'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
images = work.joinpath("images.txt").read_text().split()
t2i = [json.loads(l) for l in work.joinpath("t2i.jsonl").read_text().splitlines() if l.strip()]
i2t = [json.loads(l) for l in work.joinpath("i2t.jsonl").read_text().splitlines() if l.strip()]
assert len(t2i) == 5 and all(h["modality"] == "image" for h in t2i), t2i
assert {pathlib.Path(h["key"]).name for h in t2i} <= {pathlib.Path(p).name for p in images}, t2i
assert pathlib.Path(images[0]).name in {pathlib.Path(h["key"]).name for h in t2i}, t2i
assert len(i2t) == 5 and all(h["modality"] == "text" for h in i2t), i2t
assert any(h["key"].split("#")[0] == pathlib.Path(images[0]).name for h in i2t), i2t
d = [h["distance"] for h in t2i]
assert d == sorted(d), d
print(f"wheel_check: search OK (t2i top hit {pathlib.Path(t2i[0]['key']).name} at {t2i[0]['distance']:.4f}; "
      f"i2t top caption {i2t[0]['text']!r})")
EOF
step "passed"
