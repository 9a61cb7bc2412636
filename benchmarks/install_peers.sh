#!/usr/bin/env bash
# Virtual environments for the peers part of the benchmark (python -m benchmarks.run --peers),
# under benchmarks/.venvs (gitignored). Nothing here enters promptnucseg's own install.
#
#   bash benchmarks/install_peers.sh                 # all of them
#   bash benchmarks/install_peers.sh instanseg cellpose
#
# instanseg and cellpose reuse this interpreter's torch (a .pth file points their venvs at its
# site-packages), so they run on the very torch our model runs on. TIAToolbox pins an older
# torch, so HoVer-Net gets a venv of its own with that torch (TORCH_WHEEL: a local wheel, else
# PyPI's). StarDist needs TensorFlow (tensorflow-cpu, ~250 MB) in its own venv.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENVS="${PEER_VENVS:-$HERE/.venvs}"
PY="${PYTHON:-python}"
SITE="$("$PY" -c 'import site; print(site.getsitepackages()[0])')"
mkdir -p "$VENVS"
want=("$@")
[ ${#want[@]} -gt 0 ] || want=(instanseg cellpose hovernet stardist)

venv() {  # venv NAME [share]: make it once; "share" points it at this interpreter's packages
  local dir="$VENVS/$1"
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  if [ "${2:-}" = share ]; then
    echo "$SITE" > "$("$dir/bin/python" -c 'import site; print(site.getsitepackages()[0])')/_promptnucseg_base.pth"
  fi
  echo "$dir/bin/pip"
}

for peer in "${want[@]}"; do
  echo "== $peer"
  case "$peer" in
    instanseg) "$(venv peers share)" install -q "instanseg-torch>=0.1" ;;
    cellpose) "$(venv cellpose3 share)" install -q "cellpose>=3.1,<4" ;;  # 4.x is Cellpose-SAM; the U-Net is 3.x
    hovernet)
      pip="$(venv tiatoolbox)"
      if [ -n "${TORCH_WHEEL:-}" ]; then "$pip" install -q "$TORCH_WHEEL"; fi
      "$pip" install -q "tiatoolbox>=1.5" ;;
    stardist) "$(venv stardist)" install -q tensorflow-cpu "stardist>=0.9" ;;
    *) echo "unknown peer $peer: choose from instanseg cellpose hovernet stardist" >&2; exit 2 ;;
  esac
done
