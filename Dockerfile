# The kvstore image: kvd on an empty base, with kvctl as a second name of
# the same binary. There is no toolchain image to build in: run
# deploy/build-image.sh, which builds the static binary into .image/ and
# then this file.
FROM scratch
COPY .image/bin/ /usr/local/bin/
# /data is the volume: a node's id, raft log and state. An empty named or
# anonymous volume takes this directory's owner, so the node can write it.
COPY --chown=65532:65532 .image/data /data
USER 65532:65532
ENV KVD_LISTEN=0.0.0.0:7379 \
    KVD_DATA_DIR=/data
VOLUME /data
# One port: TCP for the API, raft and gossip streams; UDP for gossip packets.
EXPOSE 7379/tcp 7379/udp
# Healthy = ready: the node has a leader and a healthy state machine.
HEALTHCHECK --interval=5s --timeout=4s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/kvctl", "health", "--timeout", "3s"]
ENTRYPOINT ["/usr/local/bin/kvd"]
