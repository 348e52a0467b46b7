#!/usr/bin/env bash
# Make the local stand-in for the Dockerfile's public base (python:3.11.14-slim-bookworm) where no
# container registry is reachable: a Debian bookworm minbase with Debian's Python 3.11, made with
# debootstrap from deb.debian.org and imported into podman's storage as $1.
#
#   tools/image-base.sh localhost/imgpipe-base:bookworm-py3.11
#
# The root filesystem is cached as .cache/image-base/rootfs-<suite>-<key>.tar (the key covers the suite,
# the packages and `revision`: bump it when the way the tree is made changes),
# so a second run only re-imports it, and nothing at all happens when the image already exists.
# Needs root (debootstrap, podman's root storage).
set -euo pipefail

image=${1:?usage: tools/image-base.sh IMAGE}
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="$repo/.cache/image-base"
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3 and python3-venv: /usr/bin/python3 and `python3 -m venv` (ensurepip), which the Dockerfile's
# build stage uses to install uv; ca-certificates for HTTPS to PyPI.
packages=python3,python3-venv,ca-certificates
revision=1
key=$(printf '%s\n' "$suite" "$packages" "$revision" | sha256sum | cut -c1-12)
tarball="$cache/rootfs-$suite-$key.tar"

for tool in podman debootstrap; do
    command -v "$tool" > /dev/null || { echo "$tool is missing: apt-get install -y podman buildah runc debootstrap" >&2; exit 1; }
done
[[ $(id -u) == 0 ]] || { echo "tools/image-base.sh needs root (debootstrap, podman's root storage)" >&2; exit 1; }

if podman image exists "$image"; then
    echo "base $image: already in podman's storage"
    exit 0
fi

if [[ ! -f $tarball ]]; then
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    echo "base $image: debootstrap $suite ($packages) into $root"
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" \
        > "$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log"; exit 1; }
    # What an image does not need: apt's package lists and downloads, docs, man pages, locales.
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

# The slim base's environment, as far as the Dockerfile relies on it.
echo "base $image: import $tarball"
podman import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --quiet "$tarball" "$image" > /dev/null
