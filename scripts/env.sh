# Sourced by the scripts: puts the project's tools (current git-annex) first on PATH.
if [ -x "$(pwd)/target/tools/venv/bin/git-annex" ]; then
    export PATH="$(pwd)/target/tools/venv/bin:$PATH"
fi
