#!/usr/bin/env bash
# Build the project's virtualenv from PyPI: ROS 2 wheels, torch, the rest; build ood_msgs with colcon;
# install ood_monitor editable. Idempotent: each step leaves a stamp keyed by the files it depends on.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${OOD_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
STAMPS=$VENV/.stamps

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
digest() { cat "$@" | sha256sum | cut -c1-16; }
done_step() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
mark_step() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

key=$(digest constraints.txt requirements.txt)
if done_step pip "$key"; then
  say "python packages up to date"
else
  say "installing pinned python packages (torch from constraints.txt, ROS 2 wheels, the rest)"
  python -m pip install -q --upgrade -c constraints.txt pip 'setuptools<80' wheel
  python -m pip install -q -c constraints.txt torch torchvision
  python -m pip install -q -c constraints.txt -r requirements.txt
  # declares the GUI opencv-python (a second cv2 over the headless one): its real needs are installed above
  python -m pip install -q -c constraints.txt --no-deps imagecorruptions
  mark_step pip "$key"
fi

python scripts/fix_rosidl_cmake.py "$VENV"

export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
key=$(digest ood_msgs/CMakeLists.txt ood_msgs/package.xml ood_msgs/msg/*.msg "$STAMPS/pip")
if done_step msgs "$key" && [ -f install/ood_msgs/share/ood_msgs/package.xml ]; then
  say "ood_msgs already built"
else
  say "building ood_msgs with colcon"
  rm -rf build/ood_msgs install/ood_msgs
  colcon --log-base log build --paths ood_msgs --build-base build --install-base install \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python"
  mark_step msgs "$key"
fi

key=$(digest setup.py setup.cfg package.xml)
if done_step package "$key" && python -c "import ood_monitor" 2>/dev/null; then
  say "ood_monitor already installed (editable)"
else
  say "installing ood_monitor (editable)"
  python -m pip install -q --no-deps --no-build-isolation -e .
  mark_step package "$key"
fi
say "ready: . scripts/env.sh"
