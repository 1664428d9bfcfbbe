#!/usr/bin/env bash
# Install the Debian packages qscope needs to build, test and run.
# Idempotent: apt-get runs only when a package is missing.
set -euo pipefail

pkgs=(
  build-essential pkg-config
  libncurses-dev libreadline-dev
  libopenblas-openmp-dev liblapacke-dev
  liblua5.4-dev libcmocka-dev libjansson-dev libpcre2-dev
  python3-sentencepiece tmux
)

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#pkgs[@]} packages present"
  exit 0
fi

echo "deps: missing: ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=sudo
  else
    echo "deps: not root and no passwordless sudo; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "deps: installed ${missing[*]}"
