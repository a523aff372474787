#!/usr/bin/env bash
# Sets up kdst: system tools (espeak-ng, sox, flac; as root also Slurm for the cluster
# tests), tools/venv with the pinned Python dependencies, and kdst itself in editable mode with its
# extras: test, espnet (ESPnet teachers) and hf (Hugging Face teachers, transformers).
#
# Idempotent: a second run with everything present only checks and returns in
# seconds.  Delete tools/venv to start over.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$root/tools/venv
python=${PYTHON:-python3}
system_tools=(espeak-ng sox flac)

log() { echo "[install] $*" >&2; }

install_system_tools() {
  local missing=() tool
  for tool in "${system_tools[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing system tools: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${missing[@]}" >/dev/null
  else
    log "missing system tools: ${missing[*]}"
    log "install them, then run this script again:"
    log "  Debian/Ubuntu: sudo apt-get install espeak-ng sox flac"
    log "  Fedora/RHEL:   sudo dnf install espeak-ng sox flac"
    log "  macOS:         brew install espeak-ng sox flac"
    exit 1
  fi
}

# Optional: Slurm for the cluster tests, which start their own single-node cluster from
# these binaries (test/slurm_cluster.py; no service is configured).  Installed only as
# root with apt; anything else just means those tests are skipped, never a failed install.
slurm_packages=(slurmctld slurmd slurm-client munge)
install_slurm_for_tests() {
  local missing=0 tool
  for tool in slurmctld slurmd sbatch munged; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing=1
  done
  [ "$missing" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "Slurm is not installed: the Slurm tests will be skipped (Debian/Ubuntu, as root:" \
      "apt-get install ${slurm_packages[*]})"
    return 0
  fi
  log "installing Slurm for the cluster tests: ${slurm_packages[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${slurm_packages[@]}" >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "${slurm_packages[@]}" >/dev/null 2>&1 ||
      log "could not install ${slurm_packages[*]}: the Slurm tests will be skipped"
  fi
}

# What the venv was built from; a change to any of these re-runs pip.
fingerprint() {
  cat "$root/setup.cfg" "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1
}

install_python_packages() {
  local stamp=$venv/.kdst-installed want
  want=$(fingerprint)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c 'import kdst' 2>/dev/null; then
    log "tools/venv is up to date"
    return 0
  fi
  if [ ! -x "$venv/bin/python" ]; then
    log "creating tools/venv with $($python --version 2>&1)"
    "$python" -m venv "$venv"
  fi
  log "installing Python packages (torch is large: the first run takes minutes)"
  # pip 26 refuses any PyPI package that declares a git URL, even under an extra nobody asks for:
  # espnet's dependency ci_sdr does (padertorch, extra "all"), so pip stays below 26.
  "$venv/bin/python" -m pip install -q 'pip>=23,<26'
  "$venv/bin/python" -m pip install -q --progress-bar off -e "$root[test,espnet,hf]"
  echo "$want" >"$stamp"
}

start=$SECONDS
install_system_tools
install_slurm_for_tests
install_python_packages
log "done in $((SECONDS - start)) s; activate with: . $venv/bin/activate"
