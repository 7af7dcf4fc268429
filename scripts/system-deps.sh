#!/usr/bin/env bash
# Debian packages the tests use: espeak-ng (real speech), ffmpeg/sox (formats), chromium (web page),
# an aarch64 compiler and qemu (the ARM kernels).
set -euo pipefail
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v sox >/dev/null || need+=(sox)
command -v chromium >/dev/null || need+=(chromium chromium-driver)
# the ARM64 kernels are checked under qemu on other machines (tests/test_kernels_arm.py)
if [ "$(uname -m)" = "x86_64" ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
fi
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
