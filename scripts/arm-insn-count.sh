#!/usr/bin/env bash
# ARM cost proxy without a Pi: guest instructions executed by the aarch64 build of a
# bundle's encoder (or decoder) under qemu-user, as a Cortex-A72 (Pi 4) and a Cortex-A76
# (Pi 5).
# Repeatable (three runs of the same count agreed within 0.03 %: hash seeds vary what
# loading does), unlike emulated time.
#
#   scripts/arm-insn-count.sh [image] <bundle dir>...
#
# For each bundle, CPU model and precision (PRECISIONS, default "int8 f32") it runs
# `encode_repeat` (runtime/examples) with N = 1 and N = 2 encoder runs and reports the
# difference: the instructions of one encoder run, free of start-up, bundle loading and
# JPEG decoding. STAGE=decoder:<beam> counts one caption's decoding instead (the image
# encoded once, then captioned N times with that beam, 1 being greedy): every decoder
# step, for an attention bundle with its init graph. The counter is QEMU's own insn
# plugin (tests/plugin/insn.c of the Debian qemu 7.2 source, built here against the
# installed qemu-user, inline counting). tract picks its kernels at run time from the
# CPU's features, so the two models may run different code.
set -euo pipefail
cd "$(dirname "$0")/.."
image=examples/images/3537201804_ce07aff237.jpg
if [[ $# -gt 0 && -f $1 ]]; then image=$1; shift; fi
(($#)) || { echo "usage: $0 [image] <bundle dir>..." >&2; exit 2; }

SUDO=""
[[ $(id -u) == 0 ]] || SUDO=sudo
cache="${CAPTION_CACHE:-$HOME/.cache/caption}/qemu-insn-plugin"
plugin="$cache/libinsn.so"
if [[ ! -f $plugin ]]; then
  pkgs=()
  command -v pkg-config >/dev/null && pkg-config --exists glib-2.0 || pkgs+=(libglib2.0-dev pkg-config)
  if ((${#pkgs[@]})); then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}"
  fi
  # The plugin must match the installed qemu-user's plugin API: take it from that
  # version's Debian source.
  version=$(dpkg-query -W -f '${Version}' qemu-user)
  if [[ -z $(apt-cache showsrc qemu 2>/dev/null) ]]; then
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
      $SUDO tee /etc/apt/sources.list.d/caption-deb-src.sources >/dev/null
    $SUDO apt-get update -qq
  fi
  mkdir -p "$cache"
  (cd "$cache" && apt-get source --download-only "qemu=${version%+b*}" >/dev/null)
  origs=("$cache"/qemu_*.orig.tar.xz)
  tar xJf "${origs[0]}" -C "$cache" --wildcards '*/tests/plugin/insn.c' '*/include/qemu/qemu-plugin.h'
  src=("$cache"/qemu-*/tests/plugin/insn.c)
  gcc -O2 -shared -fPIC -o "$plugin" "${src[0]}" \
    -I"${src[0]%/tests/plugin/insn.c}/include/qemu" $(pkg-config --cflags glib-2.0)
fi

scripts/build-aarch64.sh --package-args -p caption-runtime --example encode_repeat >/dev/null
runner="${CARGO_TARGET_DIR_AARCH64:-$PWD/target-aarch64}/aarch64-unknown-linux-gnu/release/examples/encode_repeat"

# qemu-user 7.2 shows the guest the host's /proc/cpuinfo, where tract looks for the CPU
# part to pick its arm64 kernels: pass the boards' part numbers through tract's override.
declare -A part=([cortex-a72]=0xd08 [cortex-a76]=0xd0b)

count() { # cpu bundle n precision -> guest instructions
  local log
  log=$(mktemp)
  TRACT_CPU_AARCH64_OVERRIDE_CPU_PART=${part[$1]} qemu-aarch64 -cpu "$1" -L /usr/aarch64-linux-gnu -plugin "$plugin,inline=on" -d plugin -D "$log" \
    "$runner" "$2" "$image" "$3" "$4" "$stage" >/dev/null
  grep -o 'insns: [0-9]*' "$log" | awk '{print $2}'
  rm -f "$log"
}
auto_choice() { # cpu bundle -> what `auto` runs there, and why
  TRACT_CPU_AARCH64_OVERRIDE_CPU_PART=${part[$1]} qemu-aarch64 -cpu "$1" -L /usr/aarch64-linux-gnu \
    "$runner" "$2" "$image" 0 auto | sed -n 's/^precision //p'
}

stage=${STAGE:-encoder}
case $stage in
  encoder) what="one encoder run" ;;
  decoder:*) what="one caption's decoder steps, beam ${stage#decoder:}" ;;
  *) echo "STAGE must be encoder or decoder:<beam>, got $stage" >&2; exit 2 ;;
esac
# The decoder is float in every bundle: its count does not depend on the encoder's precision.
default_precisions="int8 f32"
[[ $stage == encoder ]] || default_precisions=auto
precisions=${PRECISIONS:-$default_precisions}
echo "image $image; guest instructions of $what (N=2 minus N=1)"
printf '%-32s %-11s %-9s %16s\n' bundle cpu precision instructions
for bundle in "$@"; do
  for cpu in cortex-a72 cortex-a76; do
    echo "$(basename "$bundle") on $cpu: auto runs $(auto_choice "$cpu" "$bundle")"
    for precision in $precisions; do
      one=$(count "$cpu" "$bundle" 1 "$precision")
      two=$(count "$cpu" "$bundle" 2 "$precision")
      per=$((two - one))
      printf '%-32s %-11s %-9s %16d\n' "$(basename "$bundle")" "$cpu" "$precision" "$per"
      echo "{\"bundle\":\"$bundle\",\"cpu\":\"$cpu\",\"precision\":\"$precision\",\"stage\":\"$stage\",\"n1\":$one,\"n2\":$two,\"insns\":$per}"
    done
  done
done
