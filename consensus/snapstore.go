package consensus

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/diskspace"
)

// A raft snapshot taken here is a checkpoint marker: a magic string and the
// index of a checkpoint of the state store (storage.KV.Checkpoint). Taking
// one costs a few fsyncs instead of a copy of the whole store with its
// history, which under a steady write load took seconds on every node
// every few minutes (bench/RESULTS.md). etcd's snapshots work the same way:
// its database is the snapshot, and raft only records the index.
//
// Snapshots received from a leader hold a copy of its store, written by
// storage.KV.Snapshot, and are kept as they came.
var checkpointMagic = []byte("kvstore checkpoint\x00")

// checkpointMarkerLen is the size of a marker: the magic, then the index.
var checkpointMarkerLen = len(checkpointMagic) + 8

var errCheckpointMarker = errors.New("the snapshot is a checkpoint marker, not a copy of a store")

func encodeCheckpointMarker(index uint64) []byte {
	return binary.BigEndian.AppendUint64(bytes.Clone(checkpointMagic), index)
}

func isCheckpointMarker(b []byte) bool {
	return len(b) == checkpointMarkerLen && bytes.HasPrefix(b, checkpointMagic)
}

// markerIndex is the index a checkpoint marker names.
func markerIndex(b []byte) uint64 { return binary.BigEndian.Uint64(b[len(checkpointMagic):]) }

// snapshotStore is raft's snapshot store as the state machine needs it.
// Opening a checkpoint marker, which raft does to send a follower that fell
// behind the log a snapshot, gives a copy of the store as it is now,
// written to a temporary file first (raft needs the size before it sends).
//
// The copy is at the store's current applied index, at or past the
// marker's: the follower loads it, raft there goes on from the marker's
// index, and the state machine skips the entries the copy already holds.
// Those entries are committed (the leader applied them), so they are the
// same entries the follower is sent.
type snapshotStore struct {
	raft.SnapshotStore
	kv *storage.KV
	// serving says why the store cannot be copied now (FSM.serving).
	serving func() error
	// tempDir holds the copies while they are sent.
	tempDir string
	// disk, when set, stops a copy or a snapshot received from a leader
	// before it takes the space below the hard margin.
	disk   *diskspace.Guard
	logger *slog.Logger
}

// tempPattern names copies in tempDir; removeStaleCopies removes the
// leftovers of a crash.
const tempPattern = "raft-snapshot-copy-*"

func newSnapshotStore(inner raft.SnapshotStore, kv *storage.KV, serving func() error, tempDir string, disk *diskspace.Guard, logger *slog.Logger) *snapshotStore {
	if tempDir == "" {
		tempDir = os.TempDir()
	}
	return &snapshotStore{SnapshotStore: inner, kv: kv, serving: serving, tempDir: tempDir, disk: disk, logger: logger}
}

// Create starts a snapshot; what is written to it (a copy of a leader's
// store, on a follower) stops with a no-space error before it takes the
// disk below its hard margin. Raft then answers the leader with the
// failure, and the leader tries again later.
func (s *snapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.SnapshotStore.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil || s.disk == nil {
		return sink, err
	}
	return &guardedSink{SnapshotSink: sink, w: guardedWriter{w: sink, disk: s.disk}}, nil
}

// guardedWriter writes to w while the disk stays above its hard margin.
type guardedWriter struct {
	w    io.Writer
	disk *diskspace.Guard
}

func (g guardedWriter) Write(p []byte) (int, error) {
	if err := g.disk.Allow(diskspace.Critical, int64(len(p))); err != nil {
		return 0, err
	}
	g.disk.Charge(int64(len(p)))
	return g.w.Write(p)
}

type guardedSink struct {
	raft.SnapshotSink
	w guardedWriter
}

func (s *guardedSink) Write(p []byte) (int, error) { return s.w.Write(p) }

// removeStaleCopies removes copies left by a process that died sending
// them.
func (s *snapshotStore) removeStaleCopies() {
	stale, _ := filepath.Glob(filepath.Join(s.tempDir, tempPattern))
	for _, p := range stale {
		if err := os.Remove(p); err != nil {
			s.logger.Warn("remove a stale snapshot copy", "path", p, "error", err)
		}
	}
}

// Open opens a snapshot; a checkpoint marker opens as a copy of the store.
func (s *snapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.SnapshotStore.Open(id)
	if err != nil || meta.Size != int64(checkpointMarkerLen) {
		return meta, rc, err
	}
	head, err := io.ReadAll(io.LimitReader(rc, int64(checkpointMarkerLen)+1))
	rc.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	if !isCheckpointMarker(head) {
		// A copy of a store that happens to be as long as a marker.
		return s.SnapshotStore.Open(id)
	}
	if err := s.serving(); err != nil {
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	return s.copyStore(id, meta, markerIndex(head))
}

// copyStore writes the store to a temporary file and opens it.
func (s *snapshotStore) copyStore(id string, meta *raft.SnapshotMeta, checkpoint uint64) (*raft.SnapshotMeta, io.ReadCloser, error) {
	rev := s.kv.AppliedIndex()
	if rev < checkpoint {
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, &storage.CorruptError{Path: s.kv.Dir(),
			Err: fmt.Errorf("the state is at index %d, behind its own checkpoint at %d: it lost data it had synced", rev, checkpoint)})
	}
	f, err := os.CreateTemp(s.tempDir, tempPattern)
	if err != nil {
		return nil, nil, fmt.Errorf("open snapshot %s: %w", id, err)
	}
	fail := func(err error) (*raft.SnapshotMeta, io.ReadCloser, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, nil, fmt.Errorf("open snapshot %s: copy the store at %d: %w", id, rev, err)
	}
	var out io.Writer = f
	if s.disk != nil {
		out = guardedWriter{w: f, disk: s.disk}
	}
	w := bufio.NewWriterSize(out, 1<<20)
	if err := s.kv.Snapshot(w, rev); err != nil {
		return fail(err)
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	size, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return fail(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fail(err)
	}
	s.logger.Info("copied the store to send a snapshot", "snapshot", id, "index", meta.Index, "store_revision", rev, "bytes", size)
	copied := *meta
	copied.Size = size
	return &copied, &removeOnClose{File: f}, nil
}

// removeOnClose is a temporary file that goes away once read.
type removeOnClose struct{ *os.File }

func (r *removeOnClose) Close() error {
	err := r.File.Close()
	if rerr := os.Remove(r.File.Name()); err == nil {
		err = rerr
	}
	return err
}
