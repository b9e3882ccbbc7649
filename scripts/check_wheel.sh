#!/usr/bin/env bash
# Install the built wheel as a user would and run it: `imgclf --version`, then a tiny inspect + train on the
# sample the wheel ships. A file left out of the package fails here.
#
# Usage: scripts/check_wheel.sh VENV DIST   (make dist-check)
#
# The fresh environment gets imgclf alone, from the wheel (--no-deps); its dependencies are read from VENV's
# site-packages through a .pth file, so that the check needs no network and no second 5 GB torch. It runs from
# a temporary folder, and fails unless the imgclf it imports is the wheel's.
set -euo pipefail
venv=$(cd "$1" && pwd); dist=$(cd "$2" && pwd)
wheel=$(ls "$dist"/imgclf-*.whl)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$venv/bin/python" -m venv "$work/env"
deps=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
site=$("$work/env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$site/imgclf-dependencies.pth"
"$work/env/bin/python" -m pip install --quiet --no-deps --no-index "$wheel"
cd "$work"
where=$("$work/env/bin/python" -c 'import imgclf; print(imgclf.__file__)')
case "$where" in "$site"/imgclf/*) echo "imgclf imported from the wheel: $where" ;;
  *) echo "error: imgclf was imported from $where, not from the installed wheel" >&2; exit 1 ;; esac
version=$("$work/env/bin/imgclf" --version)
echo "$version"
expected="imgclf $(basename "$wheel" | cut -d- -f2)"
[ "$version" = "$expected" ] || { echo "error: '$version' but the wheel is '$expected'" >&2; exit 1; }
"$work/env/bin/python" - <<'PY'
from importlib.resources import files
for name in ("index.html", "review.html"):
    assert (files("imgclf.serve") / "static" / name).is_file(), f"page asset {name} is not in the wheel"
PY
sample="$work/env/share/imgclf/cifar10-sample"
[ "$(find "$sample" -name '*.jpg' | wc -l)" = 1200 ] || { echo "error: the sample is not complete in $sample" >&2; exit 1; }
"$work/env/bin/imgclf" inspect "$sample" --out "$work/inspect"
"$work/env/bin/imgclf" train "$sample" --out "$work/train" --epochs 1 --workers 1
test -f "$work/train/model/model.json"
echo "wheel check passed: $(basename "$wheel")"
