# Shared by scripts/dev, scripts/serve and scripts/test: make .venv and install one pinned requirements file
# into it — requirements.txt (what runs the hub) unless REQUIREMENTS names another (requirements-dev.txt: tests
# and tools on top). Sourced, not run. Re-installs only when that file (or a file it includes) changed since its
# last install; pip's own progress is shown, so a first install is never a silent minute.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQUIREMENTS="${REQUIREMENTS:-requirements.txt}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "Creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# One stamp per requirements file; requirements-dev.txt includes requirements.txt, so both count for it.
stamp=".venv/.installed-${REQUIREMENTS//\//_}.sha"
want="$(cat "$REQUIREMENTS" $(sed -n 's/^-r[[:space:]]*//p' "$REQUIREMENTS") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing $REQUIREMENTS into .venv (once; again only when it changes)…"
  # Every package pip collects or installs is printed as it goes; "already satisfied" lines are left out.
  set +e
  .venv/bin/pip install --disable-pip-version-check --progress-bar on -r "$REQUIREMENTS" \
    | grep --line-buffered -v '^Requirement already satisfied'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then echo "pip could not install $REQUIREMENTS (exit $status)" >&2; exit "$status"; fi
  echo "$want" > "$stamp"
fi
export PATH="$ROOT/.venv/bin:$PATH"
