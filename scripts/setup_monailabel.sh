#!/usr/bin/env bash
# Create (once) a SEPARATE virtual environment for MONAI Label 0.8.5 and install monai_mcx into it.
#
# Why a separate venv: MONAI Label 0.8.5 pulls pydicom-seg, which needs pydicom<3 and numpy<2, and
# sam2 (a source-only package); the core stack (.venv) uses pydicom 3 and numpy 2. highdicom (monai_mcx's DICOM SEG
# writer, which the app uses to store labels in a DICOMweb server) is pinned to 0.22.0, the last release that runs on
# pydicom 2 (0.23 needs pydicom>=3); pip check then reports monai_mcx's highdicom>=0.28, which is expected (the SEG
# path the app uses is tested with 0.22.0 by tests/test_monailabel_orthanc.py). Recipe:
# ../shared/reference/monailabel-recipe.md (install "lean" variant, monailabel with --no-deps, SAM off).
#
#   scripts/setup_monailabel.sh            # venv in <repo>/.venv-monailabel
#   MCX_MONAILABEL_VENV=/path scripts/setup_monailabel.sh
#   PYTHON=python3.11 scripts/setup_monailabel.sh
#
# Idempotent: a stamp file in the venv records what was installed; the script reinstalls only when this
# script or setup.cfg changed (or with --force). Prints progress; any failure stops it with a message.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${MCX_MONAILABEL_VENV:-$ROOT/.venv-monailabel}"
STAMP="$VENV/.monai_mcx-monailabel-installed"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

say() { echo "[setup-monailabel] $*"; }
die() { echo "[setup-monailabel] ERROR: $*" >&2; exit 1; }
trap 'die "failed at line $LINENO (command: $BASH_COMMAND)"' ERR

WANT="$(cat "${BASH_SOURCE[0]}" "$ROOT/setup.cfg" | sha256sum | cut -d' ' -f1)"
if [ "$FORCE" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
    say "up to date: $VENV"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV (with $PY: $("$PY" --version 2>&1))"
    "$PY" -m venv "$VENV" || die "cannot create the venv with $PY"
fi
PIP=(pip_install)
# pip through a filter that drops the local index's "... is ignored" noise; pip's exit status is kept
pip_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off "$@" 2>&1 \
        | { grep -v -e "is ignored: it is neither" -e "dependency resolver does not currently" \
                    -e "requires sam2" -e "highdicom>=0.28" || true; }
    return "${PIPESTATUS[0]}"
}
rm -f "$STAMP"

T0=$SECONDS
say "1/4 torch==2.14.1 torchvision==0.29.1 (from the local wheels / index, ~1 min)"
"${PIP[@]}" -q "torch==2.14.1" "torchvision==0.29.1"

say "2/4 monailabel==0.8.5 --no-deps (skips sam2, a source-only package; SAM stays off)"
"${PIP[@]}" -q --no-deps "monailabel==0.8.5"

say "3/4 monailabel's dependencies (lean list, pydicom<3 for pydicom-seg; numpy drops to 1.x) and monai_mcx's (~2-5 min)"
"${PIP[@]}" -q "pydicom<3" \
    "monai[ignite,itk,nibabel,pillow,psutil,skimage,torchvision,tqdm]>=1.4.0" \
    "uvicorn>=0.29.0" "pydantic>=2.7.0" "pydantic-settings>=2.2.1" "python-dotenv>=1.0.1" "fastapi>=0.110.2" \
    "python-multipart>=0.0.9" "httpx>=0.27.0" "schedule>=1.2.1" "dicomweb-client[gcp]>=0.59.1" "timeloop>=1.0.2" \
    "expiringdict>=1.2.2" "expiring_dict>=1.1.0" "cachetools>=5.3.3" "watchdog>=4.0.0" "pydicom>=2.4.4" \
    "pydicom-seg>=0.4.1" "pynetdicom>=2.0.2" "pynrrd>=1.0.0" "numpymaxflow>=0.0.7" "girder-client>=3.2.3" \
    "ninja>=1.11.1.1" "einops>=0.7.0" "pyyaml>=6.0.1" "filelock>=3.11.0" "passlib>=1.7.4" "pyjwt>=2.8.0" \
    "bcrypt>=4.1.2" "shapely>=2.0.4" "requests>=2.31.0" "requests-toolbelt>=1.0.0" "urllib3>=2.2.1" \
    scikit-learn scipy "google-auth>=2.29.0" \
    "pytorch-ignite>=0.4.11" fire tqdm tensorboard matplotlib "highdicom==0.22.0"

say "4/4 monai_mcx (editable, --no-deps: its dependencies are the ones above)"
"${PIP[@]}" -q --no-deps -e "$ROOT"

say "checking imports"
"$VENV/bin/python" - <<'EOF' || die "import check failed (see the traceback above)"
import monailabel, monai, torch, torchvision, pydicom, numpy
import monailabel.main, monailabel.interfaces.app  # noqa: F401  (server + app base class)
from monailabel.datastore.utils import convert  # noqa: F401  (imports pydicom_seg: needs pydicom<3)
import monai_mcx.networks, monai_mcx.transforms.io  # noqa: F401
import highdicom, monai_mcx.dicom.seg  # noqa: F401  (the app's DICOM SEG writer for DICOMweb labels)
print(f"[setup-monailabel]   monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"pydicom {pydicom.__version__}, highdicom {highdicom.__version__}, numpy {numpy.__version__}")
EOF
"$VENV/bin/python" -m pip check 2>&1 | grep -v -e "requires sam2" -e "highdicom>=0.28" | sed 's/^/[setup-monailabel]   pip check: /' || true

echo "$WANT" > "$STAMP"
say "done in $((SECONDS - T0)) s: $VENV"
say "start the server with: $VENV/bin/python -m monailabel.main start_server --app $ROOT/monailabel_app --studies <dir> --conf zoo_source github --conf sam2 false --host 127.0.0.1 --port 8000"
