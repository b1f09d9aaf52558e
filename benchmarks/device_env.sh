# Sourced by the GPU scripts from the repository root: makes craft importable on the device image.
# Its python3 holds torch; the wheels that benchmarks/device_wheels.sh saved in .whl/ (carried to
# the device) go to /tmp/site, ahead on the path. Exits with one line if craft still cannot import.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed"; exit 1; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import craft.cli" || {
    echo "craft does not import here: run 'bash benchmarks/device_wheels.sh' on a machine with the registries and carry .whl"
    exit 1
}
