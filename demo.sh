#!/usr/bin/env bash
# Sets up from nothing and runs the default demo: CoolMomentum (tuned, and at the paper's
# settings), SGD and schedule-free AdamW on Fashion-MNIST, each at the optimizer study's tuned
# setting (about 6 minutes on 2 CPU cores). Extra arguments go to `coolmomentum compare`.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -z "${COOLMOMENTUM_DATA:-}" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo"
    echo "Installing Fashion-MNIST (Debian package dataset-fashion-mnist)..."
    $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "Fashion-MNIST is needed: no apt-get here. Put the four IDX files" >&2
    echo "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz," >&2
    echo "t10k-labels-idx1-ubyte.gz, from github.com/zalandoresearch/fashion-mnist) in a folder" >&2
    echo "and set COOLMOMENTUM_DATA to it, then rerun." >&2
    exit 1
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[experiments]"
exec .venv/bin/coolmomentum compare "$@"
