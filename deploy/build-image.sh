#!/bin/sh
# Builds the kvstore container image: kvd as a static binary (CGO_ENABLED=0),
# then the image FROM scratch around it (the Dockerfile at the repository
# root copies what this script puts in .image/). kvctl is the same binary
# under a second name: kvd acts as kvctl when called so.
#
#   deploy/build-image.sh [TAG]        default tag: kvstore
set -eu
cd "$(dirname "$0")/.."
tag=${1:-kvstore}
rm -rf .image
mkdir -p .image/bin .image/data
CGO_ENABLED=0 GOOS=linux go build -trimpath -ldflags='-s -w' -o .image/bin/kvd ./cmd/kvd
ln -s kvd .image/bin/kvctl
docker build -t "$tag" .
