#!/usr/bin/env bash
# The Raspberry Pi checks (part of scripts/test.sh, so of CI):
#  1. cross-build captiond for aarch64 (scripts/build-aarch64.sh);
#  2. caption the example images with the default bundle under qemu-user as a Cortex-A72
#     (Pi 4) and a Cortex-A76 (Pi 5) and compare captions and features with the x86-64
#     build (edge/tests/aarch64.rs);
#  3. build the arm64 .deb (scripts/package-deb.sh) and check its contents and its
#     systemd unit (`systemd-analyze verify`).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

arm_bin=$(scripts/build-aarch64.sh | tail -1)
echo "check-aarch64: cross-build done at $((SECONDS - started)) s" >&2

# --workspace, not -p caption-edge: the same feature set as the workspace test build, so
# the x86 captiond it compares with is that build's, not a second build of its dependencies.
CAPTIOND_AARCH64="$arm_bin" cargo test --workspace --test aarch64 -- --ignored --nocapture
echo "check-aarch64: qemu comparison done at $((SECONDS - started)) s" >&2

deb=$(scripts/package-deb.sh | tail -1)
dpkg-deb --info "$deb"
contents=$(dpkg-deb --contents "$deb")
echo "$contents"
for path in ./usr/bin/captiond ./usr/lib/systemd/system/captiond.service \
  ./etc/captiond/captiond.toml ./usr/lib/sysusers.d/captiond.conf \
  ./usr/share/captiond/models/flickr8k-lite1-attention-f16/{manifest.toml,vocab.json,encoder.onnx,decoder.onnx,init.onnx}; do
  grep -q " $path\$" <<<"$contents" || { echo "check-aarch64: $deb lacks $path" >&2; exit 1; }
done
[[ $(dpkg-deb --field "$deb" Architecture) == arm64 ]] || { echo "check-aarch64: not arm64" >&2; exit 1; }

# The unit as installed: unpack the package into a root and verify it there, so that
# ExecStart's binary and the sysusers entry are the packaged ones.
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb --extract "$deb" "$root"
command -v systemd-analyze >/dev/null || {
  SUDO=""; [[ $(id -u) == 0 ]] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq systemd
}
# systemd-analyze resolves the unit's dependencies (sysinit.target, ...) inside --root:
# give it the host's units beside the packaged one (never replacing it).
cp -rn /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
# verify exits 0 on an unknown key (it only warns): any output fails the check.
if ! report=$(systemd-analyze verify --root="$root" captiond.service 2>&1) || [[ -n $report ]]; then
  echo "check-aarch64: systemd-analyze verify captiond.service: $report" >&2
  exit 1
fi
systemd-analyze security --offline=true --root="$root" captiond.service | tail -1
# The postinst's user creation, replayed inside the root: the packaged sysusers entry makes
# a `captiond` system user that is a member of `video`.
grep -q '^ *systemd-sysusers .*captiond\.conf$' <(dpkg-deb --info "$deb" postinst) ||
  { echo "check-aarch64: postinst does not create the user from captiond.conf" >&2; exit 1; }
mkdir -p "$root/etc"
systemd-sysusers --root="$root" captiond.conf
grep -q '^captiond:x:[0-9]*:[0-9]*:.*:/var/lib/captiond:' "$root/etc/passwd" &&
  grep -Eq '^video:x:[0-9]+:(.*,)?captiond(,|$)' "$root/etc/group" ||
  { echo "check-aarch64: sysusers did not make captiond (in video)" >&2; exit 1; }
# The packaged config parses, names the packaged bundle, and the packaged binary loads
# that bundle (checksums included) and captions an image with it.
# As a Pi 5 (Cortex-A76): qemu's default `max` CPU has SVE/SME, which no Pi has and which
# tract 0.23 would pick kernels for (emulated so slowly that one caption took > 9 minutes).
arm=(env TRACT_CPU_AARCH64_OVERRIDE_CPU_PART=0xd0b qemu-aarch64 -cpu cortex-a76
  -L /usr/aarch64-linux-gnu "$root/usr/bin/captiond")
bundle=$("${arm[@]}" check-config "$root/etc/captiond/captiond.toml" | sed -n 's/^bundle = "\(.*\)"$/\1/p')
[[ $bundle == /usr/share/captiond/models/flickr8k-lite1-attention-f16 && -f $root$bundle/manifest.toml ]] ||
  { echo "check-aarch64: the packaged config's bundle '$bundle' is not in the package" >&2; exit 1; }
# One kernel thread: under qemu-user 7.2 the process hangs creating tract's thread pool
# (the first clone never returns; natively and on the threads' own tests it works).
"${arm[@]}" caption --threads 1 --bundle "$root$bundle" examples/images/69710415_5c2bfb1058.jpg
echo "check-aarch64: all checks passed in $((SECONDS - started)) s" >&2
