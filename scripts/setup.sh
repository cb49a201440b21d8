#!/usr/bin/env bash
# Build .venv with the pinned tree, install Detectron2 (hash-checked) and the test peers.
# Idempotent: a second run only checks. Used by `make setup`, `make run` and CI.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
VENV=.venv
D2_VERSION=0.7.2
D2_SHA256=491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561
STAMP=$VENV/.setup-stamp

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

need_venv=1
if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements/lock.txt ] && [ "$STAMP" -nt scripts/setup.sh ] && [ "$STAMP" -nt pyproject.toml ]; then
  need_venv=0
fi

if [ "$need_venv" = 1 ]; then
  command -v "$PY" >/dev/null || PY=python3
  "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
  [ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
  say "installing the pinned tree (torch from this machine's disk; first run takes a few minutes)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade "pip<27"
  "$VENV/bin/pip" install -q --disable-pip-version-check -c requirements/lock.txt \
      -r requirements/base.txt -r requirements/dev.txt
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if ! "$VENV/bin/python" -c 'import detectron2' 2>/dev/null; then
    # Detectron2's authors publish no wheel on PyPI. sal-detectron2 carries Detectron2's Python code
    # (2024 main branch), tagged for CPython 3.10 only; its compiled _C never loads and box-only
    # Cascade R-CNN does not need it. We check the wheel's hash before installing it.
    say "installing Detectron2 (sal-detectron2==$D2_VERSION, sha256 checked)"
    tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.10 -d "$tmp" "sal-detectron2==$D2_VERSION"
    echo "$D2_SHA256  $(ls "$tmp"/*.whl)" | sha256sum -c --quiet -
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.10 --target "$SITE" --upgrade "$(ls "$tmp"/*.whl)"
    rm -rf "$tmp" "$SITE/tools"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  "$VENV/bin/python" -c 'import detectron2, torch, pynetdicom, highdicom; print("detectron2", detectron2.__version__, "torch", torch.__version__)'
  touch "$STAMP"
fi

# Real peers for the tests: DCMTK, dicom3tools (dciodvfy), Orthanc with its DICOMweb plugin, Chromium for the
# dashboard test, and PostgreSQL with HAProxy for the cluster tests (Debian keeps initdb/postgres in
# /usr/lib/postgresql/VERSION/bin, off PATH; dicom_node/testing.py looks there).
missing=()
command -v storescu >/dev/null || missing+=(dcmtk)
command -v dciodvfy >/dev/null || missing+=(dicom3tools)
command -v Orthanc >/dev/null || missing+=(orthanc)
ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || missing+=(orthanc-dicomweb)
command -v chromium >/dev/null || missing+=(chromium)
{ command -v postgres >/dev/null || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; } || missing+=(postgresql)
command -v haproxy >/dev/null || missing+=(haproxy)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  say "installing test peers from Debian: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
say "ready"
