#!/usr/bin/env bash
# Installs the Debian packages that building and testing Harpoon Meter needs,
# when any is missing. Runs apt-get as root, or through sudo.
set -euo pipefail

packages=(build-essential cmake pkg-config liburing-dev liblmdb-dev libjansson-dev libssl-dev
          libcriterion-dev python3 lmdb-utils clang libclang-rt-14-dev faketime
          libcurl4-openssl-dev openssl libpq-dev postgresql
          libsqlite3-dev redis-server python3-matplotlib)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null; then
  sudo=(sudo)
else
  echo "install-deps: missing packages ${missing[*]}; run this script as root or install sudo" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
