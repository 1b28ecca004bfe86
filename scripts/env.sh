# Source me: activates the venv and the colcon install of ood_msgs (POSIX sh compatible).
OOD_ROOT=${OOD_ROOT:-$(cd "$(dirname "${BASH_SOURCE:-$0}")/.." 2>/dev/null && pwd)}
[ -f "$OOD_ROOT/scripts/env.sh" ] || OOD_ROOT=$PWD
. "$OOD_ROOT/.venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VIRTUAL_ENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
COLCON_CURRENT_PREFIX="$OOD_ROOT/install" . "$OOD_ROOT/install/setup.sh"
# ament_python puts node executables in lib/<package> (what `ros2 run` searches); make them commands too
export PATH="$VIRTUAL_ENV/bin:$VIRTUAL_ENV/lib/ood_monitor:$PATH"
export RMW_IMPLEMENTATION=${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export ROS_AUTOMATIC_DISCOVERY_RANGE=${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
