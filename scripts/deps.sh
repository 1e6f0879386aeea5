#!/bin/sh
# Installs what flowc needs from Debian's packages (Debian 12), only what is
# missing. Run as root (or with sudo available).
set -eu
PKGS="build-essential cmake flex bison llvm-19-dev libopenblas-dev libcriterion-dev pkg-config"
[ "${1:-}" = "--test" ] && PKGS="$PKGS python3-torch python3-numpy valgrind clang-19 libclang-rt-19-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
echo "flowc: installing$missing"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
