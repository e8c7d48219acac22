# Sourced by scripts/install-deps: an S3 server for tests/s3.rs (moto's, from PyPI) in
# target/tools/venv, as target/tools/venv/bin/moto_server. Quiet when it is there already.
if [ ! -x target/tools/venv/bin/moto_server ]; then
    echo "install-deps: installing moto[server] (S3 test server) from PyPI into target/tools/venv" >&2
    [ -x target/tools/venv/bin/python ] || python3 -m venv target/tools/venv >&2
    target/tools/venv/bin/python -m pip install --quiet --disable-pip-version-check 'moto[server]' >&2 ||
        echo "install-deps: moto[server] unavailable; tests/s3.rs will not run" >&2
fi
