package node

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/badgerlog"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// oldRaftDir is where releases before storage/raftlog kept the raft log,
// in Badger.
const oldRaftDir = "raft"

// migrateRaftLog moves a raft log kept in Badger (oldRaftDir) into
// storage/raftlog (raftLogDir), once. Crash-safe: the new log is built in
// a temporary directory and renamed into place last, so a crash before
// the rename leaves the old log as it was, and the next start builds the
// new one again from the start; after the rename only the old directory's
// removal is left, which the next start finishes.
func migrateRaftLog(dataDir string, segSize int64, logger *slog.Logger) error {
	old := filepath.Join(dataDir, oldRaftDir)
	if _, err := os.Stat(old); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	dst := filepath.Join(dataDir, raftLogDir)
	if _, err := os.Stat(dst); err == nil {
		logger.Info("raft log migration: removing the old log", "dir", old)
		return removeDirDurably(old)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	start := time.Now()
	tmp := dst + ".migrating"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	store, err := raftlog.Open(tmp, raftlog.Options{SegmentSize: segSize, Logger: logger})
	if err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	var n uint64
	var first, last uint64
	err = badgerlog.Read(old, logger, store.Set, func(logs []*raft.Log) error {
		if first == 0 {
			first = logs[0].Index
		}
		last = logs[len(logs)-1].Index
		n += uint64(len(logs))
		return store.StoreLogs(logs)
	})
	if cerr := store.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, storage.ErrCorrupt) {
		return fmt.Errorf("node: the raft log is corrupt: %w; remove the data directory %s and start the node again "+
			"to let it join its cluster afresh (a node alone: restore the directory from a backup)", err, dataDir)
	}
	if err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	// Every entry and key is synced in tmp: the rename is the mark that
	// the migration is done.
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	if err := storage.SyncDir(dataDir); err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	logger.Info("raft log migrated out of Badger", "from", old, "to", dst, "entries", n, "first", first, "last", last, "took", time.Since(start).Round(time.Millisecond))
	return removeDirDurably(old)
}

// removeDirDurably removes dir and all in it, and syncs its parent.
func removeDirDurably(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("node: raft log migration: remove %s: %w", dir, err)
	}
	if err := storage.SyncDir(filepath.Dir(dir)); err != nil {
		return fmt.Errorf("node: raft log migration: %w", err)
	}
	return nil
}
