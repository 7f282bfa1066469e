#!/usr/bin/env bash
# Build tfship's container images with no container registry: everything comes from Debian's packages
# and the Python package index.
#
#   tfship-test-base      Debian bookworm (debootstrap minbase) + python3, imported with FROM scratch
#   tfship-model-server   docker/model-server.Dockerfile on that base, tfship installed offline
#                         (pip --no-index) from a wheelhouse filled on this machine
#
# Usage: docker/build-test-images.sh [base|server|all|wheelhouse]   (default: all; wheelhouse: fill it, print its path)
#        TFSHIP_PLATFORM=linux/arm64 docker/build-test-images.sh        (another architecture, under QEMU emulation)
# Exit status: 0 built (or up to date), 1 failed, 75 Debian's packages or the package index could not be
# reached (nothing to build from).
#
# Cached outside the checkout in ${TFSHIP_TEST_CACHE:-~/.cache/tfship-test}: the root file system tar
# (keyed by suite and package list) and the wheelhouse (keyed by tfship's dependency list). Each image
# carries a label with the hash of its inputs; an image whose inputs did not change is not rebuilt.
#
# Environment: TFSHIP_TEST_CACHE (cache folder), TFSHIP_DEBIAN_MIRROR (debootstrap's mirror; default:
# the first source of the suite in this machine's apt sources), TFSHIP_BASE_IMAGE, TFSHIP_SERVER_IMAGE
# (image names), PYTHON (the Python whose pip fills the wheelhouse; default .venv/bin/python),
# TFSHIP_PLATFORM (linux/amd64 or linux/arm64; default: this machine's), TFSHIP_BINFMT_DIR (where binfmt_misc
# is mounted; default /proc/sys/fs/binfmt_misc).
#
# The platform: by default this machine's, and then names and cache keys are the plain ones above. For the
# other one (linux/arm64 on an x86 machine, linux/amd64 on an arm64 one) the images are tagged with the
# architecture (tfship-test-base:arm64, tfship-model-server:arm64), the root file system, the wheelhouse,
# logs and build contexts have names of their own, and everything that runs that architecture's programs
# (debootstrap's second stage, every RUN of the image builds) runs under QEMU user emulation, which must
# be registered with binfmt_misc with the F flag (Debian: qemu-user-static and binfmt-support). The script
# checks that and says what to install; it installs nothing itself. Emulated builds are slow: see README.md.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${TFSHIP_TEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tfship-test}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
SUITE=bookworm  # its python3 is 3.11: the wheels below are cp311
# What TensorFlow's manylinux wheels need beyond minbase (libstdc++ and libgcc are already there):
# OpenMP for onnxruntime, CA certificates for anything that talks TLS.
PACKAGES=python3,python3-venv,libgomp1,ca-certificates
LABEL=org.tfship.inputs
# The wheels are for the target's architecture: x86_64 (linux/amd64) or aarch64 (linux/arm64). pip
# --platform does not widen manylinux_2_X to older glibc versions by itself: list them all. Bookworm has
# glibc 2.36.
docker_arch() {  # linux/amd64 | linux/arm64 for a machine name (uname -m) or a Docker platform
    case "$1" in
        x86_64 | amd64 | linux/amd64) echo amd64 ;;
        aarch64 | arm64 | linux/arm64 | linux/arm64/v8) echo arm64 ;;
        *) return 1 ;;
    esac
}
HOST_ARCH=$(docker_arch "$(uname -m)") || { echo "build-test-images: no manylinux wheels for $(uname -m)" >&2; exit 1; }
DEB_ARCH=$(docker_arch "${TFSHIP_PLATFORM:-linux/$HOST_ARCH}") \
    || { echo "build-test-images: TFSHIP_PLATFORM=$TFSHIP_PLATFORM is not one of linux/amd64, linux/arm64" >&2; exit 1; }
PLATFORM="linux/$DEB_ARCH"  # Docker's name; DEB_ARCH is Debian's (and Docker's architecture field)
case "$DEB_ARCH" in
    amd64) ARCH=x86_64; PLATFORMS=(manylinux2014_x86_64 manylinux2010_x86_64 manylinux1_x86_64) ;;
    arm64) ARCH=aarch64; PLATFORMS=(manylinux2014_aarch64) ;;
esac
for minor in $(seq 17 36); do PLATFORMS+=("manylinux_2_${minor}_${ARCH}"); done
# This machine's platform keeps the plain names (and the caches and images made before platforms were a
# choice); another platform gets its own: SUFFIX is in every file name, the images are tagged with it.
if [[ "$DEB_ARCH" == "$HOST_ARCH" ]]; then
    FOREIGN=0 SUFFIX="" BASE_DEFAULT=tfship-test-base SERVER_DEFAULT=tfship-model-server PLATFORM_ARGS=()
else
    FOREIGN=1 SUFFIX="-$DEB_ARCH" BASE_DEFAULT="tfship-test-base:$DEB_ARCH" SERVER_DEFAULT="tfship-model-server:$DEB_ARCH"
    PLATFORM_ARGS=(--platform "$PLATFORM")  # the image's architecture, and the base the classic builder accepts
fi
BASE_IMAGE="${TFSHIP_BASE_IMAGE:-$BASE_DEFAULT}"
SERVER_IMAGE="${TFSHIP_SERVER_IMAGE:-$SERVER_DEFAULT}"
# The build backend (pyproject.toml [build-system]): tfship is built inside the image, offline.
BUILD_REQUIREMENTS=("setuptools>=77" "wheel")

export DOCKER_BUILDKIT=0  # the classic builder: FROM scratch + ADD and local bases need no pull, no frontend image
START=$SECONDS

say() { printf '[build-test-images %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
die() { say "error: $*"; exit 1; }
unreachable() { say "error: $*"; exit 75; }
sha() { sha256sum | cut -c1-16; }

# -- another architecture: QEMU user emulation through binfmt_misc, checked, never installed here -----
check_emulation() {
    ((FOREIGN)) || return 0
    local qemu=qemu-$ARCH entry="${TFSHIP_BINFMT_DIR:-/proc/sys/fs/binfmt_misc}/qemu-$ARCH" fix
    fix="install Debian's qemu-user-static and binfmt-support (apt-get install qemu-user-static binfmt-support)"
    fix+=", or if they are installed: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc && update-binfmts --enable $qemu"
    [[ -f "$entry" ]] || die "building for $PLATFORM on this $HOST_ARCH machine needs QEMU emulation and $entry is missing: $fix"
    [[ "$(head -1 "$entry")" == enabled ]] \
        || die "building for $PLATFORM needs QEMU emulation and $qemu is disabled in binfmt_misc: update-binfmts --enable $qemu"
    # F (fix binary): the interpreter is opened when registered, so it also runs inside chroots and containers.
    grep -q '^flags:.*F' "$entry" \
        || die "building for $PLATFORM needs $qemu registered with the F flag ($entry has '$(grep '^flags' "$entry")'):" \
               "install Debian's qemu-user-static, whose binfmt entries have it"
}

image_inputs() {  # the inputs hash an existing image was built from, or nothing
    docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$1" 2>/dev/null || true
}

remove_replaced() {  # the image a rebuild untagged, unless something still uses it
    local old_id="$1" name="$2"
    if [[ -n "$old_id" && "$old_id" != "$(docker image inspect --format '{{.Id}}' "$name")" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true
    fi
}

# -- debootstrap's mirror: from this machine's apt sources, never written into the repository --------
debian_mirror() {
    if [[ -n "${TFSHIP_DEBIAN_MIRROR:-}" ]]; then echo "$TFSHIP_DEBIAN_MIRROR"; return; fi
    local files=() file
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f "$file" ]] && files+=("$file")
    done
    ((${#files[@]})) || die "no apt sources on this machine: set TFSHIP_DEBIAN_MIRROR to a Debian mirror URL"
    python3 "$ROOT/docker/debian_mirror.py" "$SUITE" "${files[@]}" || true
}

older_rootfs() {  # root file systems of this architecture other than $1 (find's further arguments act on them)
    local keep="$1"; shift
    if ((FOREIGN)); then
        find "$CACHE" -maxdepth 1 -name "rootfs-*-$DEB_ARCH-*.tar" ! -path "$keep" "$@"
    else
        find "$CACHE" -maxdepth 1 -name "rootfs-*.tar" ! -name "rootfs-*-amd64-*" ! -name "rootfs-*-arm64-*" ! -path "$keep" "$@"
    fi
}

# -- (a) the base image: debootstrap minbase + python3 ---------------------------------------------
build_base() {
    local key rootfs mirror
    key=$(printf '%s|minbase|%s\n' "$SUITE" "$PACKAGES" | sha)
    rootfs="$CACHE/rootfs-$SUITE$SUFFIX-$key.tar"
    if [[ ! -f "$rootfs" ]]; then
        command -v debootstrap >/dev/null || {
            say "installing debootstrap (apt-get)"
            apt-get update -q >&2 && apt-get install -y -q debootstrap >&2
        }
        mirror=$(debian_mirror)
        [[ -n "$mirror" ]] || unreachable "no '$SUITE' source in the apt sources: set TFSHIP_DEBIAN_MIRROR"
        local target="$CACHE/rootfs$SUFFIX.partial" log="$CACHE/debootstrap$SUFFIX.log"
        rm -rf "$target" && mkdir -p "$target"
        if ((FOREIGN)); then
            # Two stages: the first only downloads and unpacks (no $DEB_ARCH program runs); the second runs the
            # packages' maintainer scripts inside the new root, each program under QEMU emulation.
            say "debootstrap --arch=$DEB_ARCH --foreign --variant=minbase $SUITE from $mirror (then its second stage, emulated)"
            debootstrap --arch="$DEB_ARCH" --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$target" "$mirror" >"$log" 2>&1 \
                || { tail -20 "$log" >&2; unreachable "debootstrap could not fetch $SUITE $DEB_ARCH from $mirror (log: $log)"; }
            say "debootstrap --second-stage under QEMU (several minutes)"
            chroot "$target" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 \
                || { tail -20 "$log" >&2; die "debootstrap's second stage failed in $target under emulation (log: $log)"; }
        else
            say "debootstrap --variant=minbase $SUITE from $mirror (a few minutes, once per machine)"
            debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$target" "$mirror" >"$log" 2>&1 \
                || { tail -20 "$log" >&2; unreachable "debootstrap could not build $SUITE from $mirror (log: $log)"; }
        fi
        rm -rf "$target"/var/lib/apt/lists/* "$target"/var/cache/apt/*.bin "$target"/var/cache/apt/archives/*.deb
        tar --numeric-owner --xattrs -C "$target" -cf "$rootfs.partial" .
        mv "$rootfs.partial" "$rootfs"
        older_rootfs "$rootfs" -delete  # older package lists
        rm -rf "$target"
        say "root file system: $rootfs ($(du -h "$rootfs" | cut -f1))"
    fi
    local inputs
    inputs=$( { cat "$ROOT/docker/test-base.Dockerfile"; sha256sum "$rootfs"; } | sha)
    if [[ "$(image_inputs "$BASE_IMAGE")" == "$inputs" ]]; then
        say "$BASE_IMAGE is up to date"
        return
    fi
    local context="$CACHE/base-context$SUFFIX"
    rm -rf "$context" && mkdir -p "$context"
    ln "$rootfs" "$context/rootfs.tar" 2>/dev/null || cp "$rootfs" "$context/rootfs.tar"
    local old_id
    old_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)
    say "building $BASE_IMAGE (FROM scratch + ADD rootfs.tar)"
    docker build --quiet "${PLATFORM_ARGS[@]}" --label "$LABEL=$inputs" -t "$BASE_IMAGE" -f "$ROOT/docker/test-base.Dockerfile" \
        "$context" >/dev/null
    rm -rf "$context"
    remove_replaced "$old_id" "$BASE_IMAGE"
    say "$BASE_IMAGE built"
}

# -- (b) the wheelhouse: tfship's dependencies for cp311 manylinux on this architecture -------------
requirements() {
    "$PYTHON" - "$ROOT/pyproject.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as handle:
    print("\n".join(tomllib.load(handle)["project"]["dependencies"]))
EOF
}

fill_wheelhouse() {  # prints the wheelhouse's path
    [[ -x "$PYTHON" ]] || die "$PYTHON not found: run 'make install' first (or set PYTHON)"
    local reqs key wheelhouse
    reqs=$(requirements)
    key=$( { echo "$reqs"; printf '%s\n' "${BUILD_REQUIREMENTS[@]}" "${PLATFORMS[@]}"; } | sha)
    wheelhouse="$CACHE/wheelhouse-cp311-$ARCH-$key"
    if [[ ! -f "$wheelhouse/requirements.txt" ]]; then
        local partial="$wheelhouse.partial"
        rm -rf "$partial" && mkdir -p "$partial"
        echo "$reqs" >"$partial/requirements.in"
        local platform_args=()
        for platform in "${PLATFORMS[@]}"; do platform_args+=(--platform "$platform"); done
        say "filling the wheelhouse for cp311 manylinux $ARCH (about 1 GB once; TensorFlow is most of it)"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --dest "$partial" --only-binary=:all: \
            --python-version 3.11 --implementation cp --abi cp311 "${platform_args[@]}" \
            -r "$partial/requirements.in" "${BUILD_REQUIREMENTS[@]}" >&2 \
            || unreachable "pip download failed: is the package index reachable?"
        mv "$partial/requirements.in" "$partial/requirements.txt"  # written last: marks a complete wheelhouse
        rm -rf "$wheelhouse" && mv "$partial" "$wheelhouse"
        # Older dependency lists of this architecture (the other architecture's wheelhouse stays).
        find "$CACHE" -maxdepth 1 -name "wheelhouse-*-$ARCH-*" ! -name '*.partial' ! -path "$wheelhouse" -exec rm -rf {} +
        say "wheelhouse: $wheelhouse ($(du -sh "$wheelhouse" | cut -f1))"
    fi
    echo "$wheelhouse"
}

# -- (c) the server image ---------------------------------------------------------------------------
build_server() {
    local wheelhouse context base_id inputs old_id
    wheelhouse=$(fill_wheelhouse)
    context="$CACHE/server-context$SUFFIX"
    rm -rf "$context" && mkdir -p "$context/docker"
    # The context holds what docker/model-server.Dockerfile copies from a checkout, plus the wheels.
    (cd "$ROOT" && cp -r --parents pyproject.toml README.md tfship exporter serving client "$context/")
    find "$context" -name __pycache__ -type d -prune -exec rm -rf {} +
    cp -al "$wheelhouse" "$context/docker/wheelhouse" 2>/dev/null || cp -r "$wheelhouse" "$context/docker/wheelhouse"
    base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) \
        || die "$BASE_IMAGE is missing: run '$0 base' first"
    inputs=$( { echo "$base_id"; cat "$ROOT/docker/model-server.Dockerfile";
                cd "$context" && find . -type f ! -path './docker/wheelhouse/*' -print0 | sort -z | xargs -0 sha256sum;
                basename "$wheelhouse"; } | sha)
    if [[ "$(image_inputs "$SERVER_IMAGE")" == "$inputs" ]]; then
        say "$SERVER_IMAGE is up to date"
        rm -rf "$context"
        return
    fi
    old_id=$(docker image inspect --format '{{.Id}}' "$SERVER_IMAGE" 2>/dev/null || true)
    say "building $SERVER_IMAGE for $PLATFORM on $BASE_IMAGE (pip install --no-index from the wheelhouse)"
    local attempt status
    for attempt in 1 2; do
        set +e  # the build's own status is read below, not by errexit
        docker build "${PLATFORM_ARGS[@]}" --label "$LABEL=$inputs" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg PIP_NO_INDEX=1 \
            -t "$SERVER_IMAGE" -f "$ROOT/docker/model-server.Dockerfile" "$context" 2>&1 \
            | tee "$CACHE/server-build$SUFFIX.log" \
            | while IFS= read -r line; do printf '    %4ds %s\n' "$((SECONDS - START))" "$line"; done >&2
        status=${PIPESTATUS[0]}
        set -e
        # The engine's storage failing to record the finished image ("failed to get digest sha256:..."), not the
        # Dockerfile: the same build again succeeds, from the layers already built.
        [[ "$status" != 0 && "$attempt" == 1 ]] && grep -q 'failed to get digest sha256:' "$CACHE/server-build$SUFFIX.log" || break
        say "the Docker engine's storage failed to record $SERVER_IMAGE; building it again"
    done
    [[ "$status" == 0 ]] || die "docker build of $SERVER_IMAGE failed (log: $CACHE/server-build$SUFFIX.log)"
    rm -rf "$context"
    remove_replaced "$old_id" "$SERVER_IMAGE"
    # The classic builder leaves the install stage behind as an untagged image (the layer cache of the
    # next build). Keep the newest only: its id is the last one printed before the final stage starts.
    local stage previous
    stage=$(awk '/^Step [0-9]+\/[0-9]+ : FROM /{n++} n == 1 && $1 == "--->" {id = $2} END {print id}' "$CACHE/server-build$SUFFIX.log")
    previous=$(cat "$CACHE/install-stage$SUFFIX.id" 2>/dev/null || true)
    if [[ -n "$previous" && "$previous" != "$stage" ]]; then
        docker image rm "$previous" >/dev/null 2>&1 || true
    fi
    [[ -n "$stage" ]] && echo "$stage" >"$CACHE/install-stage$SUFFIX.id"
    say "$SERVER_IMAGE built"
}

main() {
    local what="${1:-all}"
    # Build contexts are copies; never leave one behind (a failed build included).
    trap 'rm -rf "$CACHE/base-context$SUFFIX" "$CACHE/server-context$SUFFIX"' EXIT
    docker info >/dev/null 2>&1 || die "no Docker engine answers ('docker info' failed)"
    [[ "$what" == wheelhouse ]] || check_emulation
    mkdir -p "$CACHE"
    case "$what" in
        base) build_base ;;
        server) build_server ;;
        all) build_base; build_server ;;
        wheelhouse) fill_wheelhouse; return ;;
        *) die "usage: $0 [base|server|all|wheelhouse]" ;;
    esac
    say "done for $PLATFORM in $((SECONDS - START))s"
}

main "$@"
