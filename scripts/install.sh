#!/usr/bin/env bash
# Installs everything streamrank needs into the repository, idempotently:
#   .venv/   Python env with the pinned packages (constraints.txt) and streamrank itself (editable)
#   .jars/   Flink Kafka connector + Kafka broker jars from Maven Central (jvm/pom.xml)
# A rerun with nothing changed takes a second or two: each half is stamped with the hash of
# the files that define it.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  for p in python3.11 python3.12 python3.10 python3; do
    if command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then
      echo "$p"; return
    fi
  done
  echo "install: need Python 3.10-3.12 (apache-flink 2.2 wheels); set PYTHON=/path/to/python" >&2
  exit 1
}

command -v java >/dev/null || { echo "install: java (17+) not found on PATH" >&2; exit 1; }
command -v mvn >/dev/null || { echo "install: mvn not found on PATH (fetches the jars)" >&2; exit 1; }

# --- Python side ---------------------------------------------------------------------------
py_stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  PY=$(pick_python)
  say "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ "$(cat .venv/.streamrank-stamp 2>/dev/null)" != "$py_stamp" ]; then
  say "installing Python packages (first time: torch+CUDA wheels, a few GB, a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install --progress-bar on -c constraints.txt -e '.[test]'
  .venv/bin/python -m pip check
  echo "$py_stamp" > .venv/.streamrank-stamp
else
  say "Python packages up to date"
fi

# --- JVM side --------------------------------------------------------------------------------
jar_stamp=$(sha256sum jvm/pom.xml | cut -c1-16)
if [ "$(cat .jars/.stamp 2>/dev/null)" != "$jar_stamp" ]; then
  say "fetching Flink Kafka connector and Kafka broker jars with Maven"
  rm -rf .jars
  mvn -q -B -f jvm/pom.xml package
  echo "$jar_stamp" > .jars/.stamp
else
  say "jars up to date"
fi
say "ready: .venv/bin/streamrank --help"
