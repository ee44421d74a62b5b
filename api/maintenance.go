package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// Snapshotter copies the node's key-value state for a backup
// (consensus.Replica.BackupState): at a revision at least as recent as
// every write acknowledged before the call, it calls start with the
// copy's revision and writes the copy to what start returns.
type Snapshotter interface {
	BackupState(ctx context.Context, start func(rev uint64) (io.Writer, error)) (storage.SnapshotStats, error)
}

// maxSnapshotStreams bounds the backups a node streams at once: each
// holds a read of the whole store.
const maxSnapshotStreams = 2

// snapshotFormat is SnapshotHeader.format: storage.KV.Snapshot's encoding.
const snapshotFormat = 1

type maintenanceService struct {
	store  Store
	groups *groupRoutes // nil: only the meta group
	snap   Snapshotter
	slots  chan struct{}
	logger *slog.Logger
	authz  authorizer
}

func newMaintenanceService(store Store, snap Snapshotter, logger *slog.Logger, az authorizer) *maintenanceService {
	return &maintenanceService{store: store, snap: snap, slots: make(chan struct{}, maxSnapshotStreams), logger: logger, authz: az}
}

func (m *maintenanceService) Snapshot(ctx context.Context, req *connect.Request[kvstorev1.SnapshotRequest], stream *connect.ServerStream[kvstorev1.SnapshotResponse]) error {
	if err := m.snapshot(ctx, stream.Send); err != nil {
		return toConnect(m.logger, "snapshot", err)
	}
	return nil
}

// snapshot sends a copy of the state: a header, the copy in chunks, and a
// trailer with its SHA-256 and what it holds.
func (m *maintenanceService) snapshot(ctx context.Context, send func(*kvstorev1.SnapshotResponse) error) error {
	// A copy holds every key, and the users' password hashes.
	if err := m.authz.authorize(ctx, nil, true); err != nil {
		return err
	}
	if m.snap == nil {
		return connect.NewError(connect.CodeUnimplemented, errors.New("this node does not make snapshots"))
	}
	if m.groups != nil {
		if t := m.groups.g.Table(); len(t.Groups) > 1 {
			// A copy of the meta group's state alone would miss the data
			// groups' keys, and restore a table naming groups it lacks.
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(
				"this cluster serves keys with %d data groups, and a snapshot holds the meta group's state only: backups of a cluster with data groups are not built yet", len(t.Groups)-1))
		}
	}
	select {
	case m.slots <- struct{}{}:
		defer func() { <-m.slots }()
	default:
		return connect.NewError(connect.CodeResourceExhausted, errors.New("snapshot: this node streams as many snapshots as it may at once; try again later or on another node"))
	}
	if err := m.store.Ready(); err != nil {
		return connect.NewError(connect.CodeUnavailable, err)
	}
	start := time.Now()
	sum := newChunkSum()
	var rev uint64
	var stats storage.SnapshotStats
	err := streamCopy(ctx, func(b []byte) func() error {
		sum.add(b)
		return func() error {
			return send(&kvstorev1.SnapshotResponse{Part: &kvstorev1.SnapshotResponse_Chunk{Chunk: b}})
		}
	}, func(ctx context.Context, q *copyQueue) error {
		var err error
		stats, err = m.snap.BackupState(ctx, func(r uint64) (io.Writer, error) {
			rev = r
			m.logger.Info("sending a snapshot of the key-value state", "revision", r)
			hdr := &kvstorev1.SnapshotHeader{Header: m.store.Header(r), Format: snapshotFormat}
			return q, q.push(func() error {
				return send(&kvstorev1.SnapshotResponse{Part: &kvstorev1.SnapshotResponse_Header{Header: hdr}})
			})
		})
		return err
	})
	if err != nil {
		return err
	}
	if err := send(&kvstorev1.SnapshotResponse{Part: &kvstorev1.SnapshotResponse_Trailer{Trailer: &kvstorev1.SnapshotTrailer{
		Sha256: sum.hash.Sum(nil), Size: sum.size, Keys: stats.Keys, Entries: stats.Entries, CompactedRevision: int64(stats.Compacted),
	}}}); err != nil {
		return err
	}
	m.logger.Info("sent a snapshot of the key-value state", "revision", rev, "keys", stats.Keys, "bytes", sum.size,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}
