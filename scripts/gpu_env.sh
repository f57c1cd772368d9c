# Sourced by the GPU scripts: the device machine's environment. Its python3 (3.12) holds
# a CUDA torch; the wheels scripts/gpu_wheels.sh put in .whl/ (carried) fill in the rest.
# Sourced once per visit: a script started by another (gpu_visit.sh's IP2P job) inherits it.
if [ -n "${GPU_ENV_DONE:-}" ]; then return 0; fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
PY=${PY:-python3}
if [ -d .whl ] && [ "${WHEELS:-1}" = 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export GPU_ENV_DONE=1 PY
