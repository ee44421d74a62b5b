package node

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage/diskspace"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// raftLogDir is the raft log's directory in the data dir.
const raftLogDir = "raftlog"

// raftLogCacheBytes bounds the entries kept in memory in front of the raft
// log: raft reads each entry back soon after it stores it (the leader to
// replicate it, every node to apply it).
const raftLogCacheBytes = 16 << 20

// raftLog is the node's raft log and stable store (storage/raftlog), with
// the disk guard and a byte-bounded cache in front of its log.
type raftLog struct {
	store *raftlog.Store
	// logs is what raft uses as its LogStore: the cache over the guarded
	// store.
	logs raft.LogStore
	// refusing is set while the guard refuses appends: from a refusal to
	// the next append stored.
	refusing *atomic.Bool

	// mu guards failErr, the failure that stopped the store taking writes
	// (it refuses them until reopened), and whenFail, who hears of it.
	mu       sync.Mutex
	failErr  error
	whenFail func(error)
}

// openRaftLog opens the raft log in the data dir, with segments of
// segSize bytes (0: raftlog's default), on fsys (nil: the OS).
func openRaftLog(dataDir string, segSize int64, fsys raftlog.FS, guard *diskspace.Guard, logger *slog.Logger) (*raftLog, error) {
	dir := filepath.Join(dataDir, raftLogDir)
	l := new(raftLog)
	store, err := raftlog.Open(dir, raftlog.Options{SegmentSize: segSize, FS: fsys, Logger: logger, OnFail: l.onFail})
	if errors.Is(err, raftlog.ErrCorrupt) {
		return nil, fmt.Errorf("node: the raft log is corrupt: %w; remove the data directory %s and start the node again "+
			"to let it join its cluster afresh (a node alone: restore the directory from a backup)", err, dataDir)
	}
	if err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	if guard != nil {
		// The next segment is allocated whole, without asking.
		reserve := uint64(segSize)
		if segSize <= 0 {
			reserve = raftlog.DefaultSegmentSize
		}
		guard.AddReserve(func() uint64 { return reserve })
		guard.Watch(dir)
	}
	l.store, l.refusing = store, new(atomic.Bool)
	l.logs = raftlog.NewCache(guardedLog{Store: store, guard: guard, refusing: l.refusing}, raftLogCacheBytes)
	return l, nil
}

// onFail is raftlog's OnFail: the store calls it once, under its lock.
func (l *raftLog) onFail(err error) {
	l.mu.Lock()
	l.failErr = err
	f := l.whenFail
	l.mu.Unlock()
	if f != nil {
		f(err)
	}
}

// whenFailed has f hear, once, of the failure that stops the store taking
// writes: at once if it failed already. f must not block.
func (l *raftLog) whenFailed(f func(error)) {
	l.mu.Lock()
	l.whenFail = f
	err := l.failErr
	l.mu.Unlock()
	if err != nil {
		f(err)
	}
}

// Stalled reports whether the log refuses appends for want of space
// (consensus.Config.LogStalled).
func (l *raftLog) Stalled() bool { return l.refusing.Load() }

// Close closes the store.
func (l *raftLog) Close() error { return l.store.Close() }

// guardedLog refuses appends below the disk's hard margin, before it
// writes anything: raft takes a failed append as a rejection (a follower
// answers its leader so, a leader steps down), and the space left is kept
// for the key-value state, whose memory-mapped files must never find the
// disk full.
type guardedLog struct {
	*raftlog.Store
	guard    *diskspace.Guard
	refusing *atomic.Bool
}

// StoreLog stores one entry.
func (g guardedLog) StoreLog(l *raft.Log) error { return g.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores logs when the guard allows.
func (g guardedLog) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	var charge int64
	for _, l := range logs {
		// A record's framing is below 64 bytes.
		charge += int64(len(l.Data)+len(l.Extensions)) + 64
	}
	if err := g.guard.Allow(diskspace.Critical, charge); err != nil {
		g.refusing.Store(true)
		return fmt.Errorf("raft log: store %d-%d: %w", logs[0].Index, logs[len(logs)-1].Index, err)
	}
	g.guard.Charge(charge)
	if err := g.Store.StoreLogs(logs); err != nil {
		return err
	}
	g.refusing.Store(false)
	return nil
}
