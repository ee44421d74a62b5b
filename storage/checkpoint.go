package storage

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Checkpoints: what of the state store survives a power loss.
//
// The store writes without fsync (unclean.go says why that is safe when
// only the process dies). A checkpoint syncs every file Badger wrote, the
// memtable write-ahead logs and the value log files, and then records the
// applied index it covers in the file CHECKPOINT. Raft snapshots are
// checkpoints: a snapshot copies nothing, and raft's log may then be
// dropped below the checkpoint's index (consensus copies the store only
// when a follower needs it).
//
// After an unclean stop across a reboot, everything at or below the
// checkpoint is on disk and whole. Above it any subset of the writes may
// have survived, some with their values lost. The store rolls back to the
// checkpoint: its applied index starts there, so raft replays every later
// entry, and a replayed entry writes exactly the keys and versions it wrote
// the first time (a batch reads Badger as of index-1, never later, so what
// survived above it is not seen), the new copies hiding the old. Two things
// make that hold:
//   - Badger's discard timestamp never passes the checkpoint, so every
//     version a replayed entry reads is still there (a compaction above the
//     checkpoint takes one first, compact.go);
//   - until the replay has passed the highest index the store may have
//     held, kept in the file REPLAY, every open rolls back again: a crash
//     part way through the replay repeats it from the checkpoint.
const (
	checkpointFile = "CHECKPOINT"
	replayFile     = "REPLAY"
)

// Checkpoint makes every entry applied so far durable, records that, and
// returns the applied index it covers. Raft may drop its log at or below
// that index afterwards. Safe to call at any time, from any goroutine.
func (s *KV) Checkpoint() (uint64, error) {
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	return s.checkpointLocked()
}

// checkpointLocked is Checkpoint for a caller that holds s.restoring.
func (s *KV) checkpointLocked() (uint64, error) {
	s.checkpointMu.Lock()
	defer s.checkpointMu.Unlock()
	// Read before the sync: every write of an entry at or below it has
	// returned, so the sync covers it.
	idx := s.applied.Load()
	if err := s.syncFiles(); err != nil {
		return 0, fmt.Errorf("checkpoint at %d: %w", idx, err)
	}
	if idx > s.durable.Load() {
		if err := writeIndexFile(s.dir, checkpointFile, idx); err != nil {
			return 0, fmt.Errorf("checkpoint at %d: %w", idx, err)
		}
		s.durable.Store(idx)
	}
	if to := s.replayTo.Load(); to > 0 && idx >= to {
		if err := removeDurably(s.dir, replayFile); err != nil {
			return 0, fmt.Errorf("checkpoint at %d: %w", idx, err)
		}
		s.replayTo.Store(0)
		s.logger.Info("replay after an unclean reboot is through", "applied", idx)
	}
	s.setDiscardTs()
	return s.durable.Load(), nil
}

// syncFiles syncs everything Badger wrote. Elsewhere than Linux, Badger's
// own Sync: it misses a memtable waiting for its flush.
func (s *KV) syncFiles() error {
	if s.files != nil {
		return s.files.syncAll()
	}
	return s.db.Sync()
}

// setDiscardTs lets Badger drop versions below the compacted revision, but
// none above the checkpoint: a replay from there reads them.
func (s *KV) setDiscardTs() {
	if c := s.compacted.Load(); c > 1 {
		ts := min(c-1, s.durable.Load())
		s.db.SetDiscardTs(ts)
		s.discardTs.Store(ts)
	}
}

// readIndexFile reads a file holding one decimal index; 0 and false when
// it does not exist.
func readIndexFile(dir, name string) (uint64, bool, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read %s: %w", name, err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, false, &CorruptError{Path: filepath.Join(dir, name), Err: fmt.Errorf("not an index: %w", err)}
	}
	return n, true, nil
}

// writeIndexFile replaces a file holding one decimal index, durably: a
// crash leaves the old content or the new, never a mix.
func writeIndexFile(dir, name string, n uint64) error {
	return WriteFileDurably(dir, name, []byte(strconv.FormatUint(n, 10)+"\n"), 0o644)
}

// removeDurably removes a file, if there, and syncs its directory.
func removeDurably(dir, name string) error {
	err := os.Remove(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err == nil {
		err = SyncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}
