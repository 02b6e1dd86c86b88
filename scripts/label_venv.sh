#!/usr/bin/env bash
# Builds, once, the MONAI Label server's own venv and prints its path on stdout (all else on stderr).
#
#   scripts/label_venv.sh            # build or reuse; prints e.g. /work/main/.label_venv
#
# MONAI Label pins packages that clash with the bundle's .venv (it moves numpy to 1.26), so the
# server gets a venv of its own: $PERCEPTGUIDE_LABEL_VENV, default <repo>/.label_venv (git-ignored).
# A stamp file holds the pins, the Python version and the hash of pyproject.toml: while they are
# unchanged the venv is reused as it is; a changed pin or dependency list reinstalls over it.
#
# Measured facts behind the pins (docs/label.md has the figures):
# - torch==2.13.0 is installed FIRST and named again with monailabel, so pip takes the CPU build
#   lying on this disk and never a CUDA build from the registry.
# - monailabel 0.8.5 requires torchvision (monai[torchvision] and sam2). The registry's
#   torchvision 0.28.0 links libtorch_cuda.so, absent from the CPU torch, so `import torchvision`
#   fails there ("operator torchvision::nms does not exist"). The server and this app never
#   import it (only MONAI Label's own BundleInferTask, DeepEdit and SAM2 tasks do, and the app
#   uses none of them), so it stays installed but unused.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PERCEPTGUIDE_LABEL_VENV:-$REPO/.label_venv}"
PYTHON="${PYTHON:-python3}"

TORCH_PIN="torch==2.13.0"
LABEL_PINS=(
    "monailabel==0.8.5"
    "monai==1.6.1"
    "torchvision==0.28.0"
    "pydicom==2.4.4"
    "dicomweb-client==0.59.1"
    "pynetdicom==2.0.2"
    # MONAI Label's own pins need numpy 1.x; onnx would otherwise move it to 2.x
    "numpy<2"
)

# the bundle's extras: ONNX Runtime makes the server's backend auto the bare command's
BUNDLE_EXTRAS="[onnx]"
STAMP="$VENV/.perceptguide_label_stamp"
WANT="$TORCH_PIN ${LABEL_PINS[*]} bundle$BUNDLE_EXTRAS | $("$PYTHON" --version 2>&1) | $(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"

mkdir -p "$VENV"
# Two callers (a user's server and the test suite) may build at once: one builds, the other waits.
exec 9>"$VENV/.build.lock"
flock 9

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "$VENV"
    exit 0
fi

pip_install() {
    # pip warns once per package about this machine's partial local indexes; keep real errors.
    "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
}

started=$SECONDS
echo "label_venv: building $VENV (about 4-7 minutes the first time)" >&2
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV" >&2
pip_install --upgrade pip
pip_install "$TORCH_PIN"
pip_install "$TORCH_PIN" "${LABEL_PINS[@]}"
# The bundle's own dependencies; its code is taken from the repo via PYTHONPATH at start, so one
# venv can serve any checkout of the repo.
pip_install "$TORCH_PIN" "numpy<2" -e "$REPO$BUNDLE_EXTRAS"
"$VENV/bin/python" - >&2 <<'EOF'
import monai
import monailabel
import numpy
import onnxruntime
import torch

assert torch.__version__.startswith("2.13.0") and not torch.cuda.is_available(), torch.__version__
print(f"label_venv: monailabel {monailabel.__version__}, monai {monai.__version__}, "
      f"torch {torch.__version__}, numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
EOF
echo "$WANT" >"$STAMP"
echo "label_venv: built in $((SECONDS - started)) s" >&2
echo "$VENV"
