package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Snapshot is what a snapshot stream said of the copy it carried.
type Snapshot struct {
	// Header names the node and cluster the copy came from; its revision
	// is the copy's.
	Header *kvstorev1.ResponseHeader
	// Format is the copy's encoding (SnapshotHeader.format).
	Format  uint32
	Trailer *kvstorev1.SnapshotTrailer
	// Endpoint is the node that sent it.
	Endpoint string
}

// Snapshot streams a backup of the cluster's key-value state
// (MaintenanceService.Snapshot) into w, from the first endpoint that
// starts one (failing over, as reads do, until the copy's first byte),
// and checks it against the stream's trailer: it returns an error unless
// w got the copy whole.
func (c *Client) Snapshot(ctx context.Context, w io.Writer) (*Snapshot, error) {
	n := len(c.endpoints)
	start := int(c.current.Load()) % n
	var err error
	for i := range n {
		ep := &c.endpoints[(start+i)%n]
		var snap *Snapshot
		var started bool
		snap, started, err = snapshotFrom(ctx, ep, w)
		if err == nil {
			return snap, nil
		}
		if started || !retryable(err, true) || ctx.Err() != nil {
			return nil, err
		}
	}
	return nil, err
}

// snapshotFrom streams a snapshot from one endpoint; started says whether
// any of the copy reached w.
func snapshotFrom(ctx context.Context, ep *endpoint, w io.Writer) (*Snapshot, bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := ep.maint.Snapshot(ctx, connect.NewRequest(&kvstorev1.SnapshotRequest{}))
	if err != nil {
		return nil, false, err
	}
	defer stream.Close()
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, false, err
		}
		return nil, false, connect.NewError(connect.CodeUnavailable, fmt.Errorf("snapshot from %s: the stream ended before its header", ep.url))
	}
	hdr := stream.Msg().GetHeader()
	if hdr == nil {
		return nil, false, fmt.Errorf("snapshot from %s: the stream does not start with a header", ep.url)
	}
	snap := &Snapshot{Header: hdr.GetHeader(), Format: hdr.GetFormat(), Endpoint: ep.url}
	h := sha256.New()
	var size uint64
	for stream.Receive() {
		switch part := stream.Msg().GetPart().(type) {
		case *kvstorev1.SnapshotResponse_Chunk:
			h.Write(part.Chunk)
			size += uint64(len(part.Chunk))
			if _, err := w.Write(part.Chunk); err != nil {
				return nil, true, err
			}
		case *kvstorev1.SnapshotResponse_Trailer:
			t := part.Trailer
			if sum := h.Sum(nil); t.GetSize() != size || !bytes.Equal(sum, t.GetSha256()) {
				return nil, true, fmt.Errorf("snapshot from %s: the copy does not match its trailer (%d bytes, SHA-256 %x; the trailer says %d bytes, %x)",
					ep.url, size, sum, t.GetSize(), t.GetSha256())
			}
			snap.Trailer = t
			return snap, true, nil
		default:
			return nil, true, fmt.Errorf("snapshot from %s: unexpected message %T", ep.url, part)
		}
	}
	err = stream.Err()
	if err == nil {
		err = errors.New("the stream ended before its trailer")
	}
	return nil, true, fmt.Errorf("snapshot from %s: %w", ep.url, err)
}
