#!/usr/bin/env bash
# Build the engbot image from the repository root's Dockerfile.
#
#   docker/build.sh                         # engbot:<version from pyproject.toml> and engbot:latest
#   docker/build.sh registry.example/engbot:1.2 [docker build options...]
#   IMAGE=myorg/engbot TAG=dev docker/build.sh --no-cache
#
# Environment:
#   IMAGE, TAG         image name and tag (an IMAGE[:TAG] first argument wins)
#   DOCKER             the docker-compatible CLI (default: docker; podman, or this machine's
#                      shared/container/docker.sh, work too)
#   LLAMA_CMAKE_ARGS   llama.cpp build flags (default in the Dockerfile: every x86-64 CPU variant,
#                      chosen at run time); -DGGML_NATIVE=OFF alone builds one portable AVX2 variant
#   DROP_CPU_VARIANTS  CPU variants left out (Dockerfile default: sapphirerapids, see there); set it
#                      empty to keep them all
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/pyproject.toml" | head -n1)

image=${IMAGE:-engbot}
tags=()
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then   # a first argument that is not an option: IMAGE[:TAG]
  ref=$1
  shift
  if [[ ${ref##*/} == *:* ]]; then tags=("$ref"); else image=$ref; fi
fi
if [ ${#tags[@]} -eq 0 ]; then
  if [ -n "${TAG:-}" ]; then tags=("$image:$TAG"); else tags=("$image:${version:-latest}" "$image:latest"); fi
fi

docker_cli=${DOCKER:-docker}
# The Dockerfile needs BuildKit (RUN --mount=type=cache): the default since Docker 23; older Docker needs this
export DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-1}
args=(build -f "$root/Dockerfile")
for t in "${tags[@]}"; do args+=(-t "$t"); done
[ -z "${LLAMA_CMAKE_ARGS:-}" ] || args+=(--build-arg "LLAMA_CMAKE_ARGS=$LLAMA_CMAKE_ARGS")
[ -z "${DROP_CPU_VARIANTS+set}" ] || args+=(--build-arg "DROP_CPU_VARIANTS=$DROP_CPU_VARIANTS")
revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || true)
args+=(--label "org.opencontainers.image.version=$version")
[ -z "$revision" ] || args+=(--label "org.opencontainers.image.revision=$revision")

echo "building ${tags[*]} with $docker_cli" >&2
start=$SECONDS
$docker_cli "${args[@]}" "$@" "$root"
echo "built ${tags[*]} in $((SECONDS - start)) s" >&2
