# Shared by the launch scripts: the Python to use and a dry-run switch.
# PYTHON defaults to the repository's .venv; DRY_RUN=1 prints commands instead of running them.
# Commands run in the folder the script was started from (work directories and your own
# config files are relative to it); the package is found through PYTHONPATH.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# Long searches: glibc's per-thread malloc arenas fragment as candidates compile on other
# threads (BENCHMARKS.md, memory: 0.28 -> 0.12 MiB of RSS per candidate with 2 arenas).
export MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}"
PYTHON_CHECKED=0
run() {  # (the first command checks that PYTHON has the dependencies: one line, not a traceback)
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; return; fi
  if [ "$PYTHON_CHECKED" = 0 ] && ! "$PYTHON" -c "import absl, ml_collections" 2>/dev/null; then
    echo "error: $PYTHON cannot import metaqnn's dependencies; install them (README: python3 -m venv .venv && .venv/bin/pip install -r requirements.txt) or set PYTHON=/path/to/python" >&2
    exit 2
  fi
  PYTHON_CHECKED=1
  "$@"
}
config_path() {  # a config file as given, else the repository's (configs/x.py from anywhere);
  local file="${1%%:*}"  # (configs/custom.py:ARG passes ARG to its get_config)
  if [ ! -e "$file" ] && [ -e "$ROOT/$file" ]; then echo "$ROOT/$1"; else echo "$1"; fi
}
check_workdir() {  # these scripts once ran in the repository: a search left there is named
  if [[ "$1" != /* ]] && [ ! -e "$1" ] && [ -e "$ROOT/$1/metaqnn.db" ]; then
    echo "note: $1 is new here ($PWD); $ROOT/$1 holds a search: give that path to resume it" >&2
  fi
}
count() {  # $2 as a count >= 1, or one error line naming $1 and exit 2
  [[ "${2-}" =~ ^[1-9][0-9]*$ ]] || { echo "error: $1 must be a whole number >= 1, not '${2-}'" >&2; exit 2; }
}
usage() {  # the comment block at the top of the calling script
  awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0" >&2
  exit 2
}
