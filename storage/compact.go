package storage

import (
	"bytes"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/kvstore/kvstore/storage/diskspace"
)

// Compaction drops the history below a revision C. Logically it happens
// when the entry asking for it is applied: from then on reads and watches
// below C fail with ErrCompacted on every node, and the compacted revision
// travels in snapshots. Physically each node then, in the background:
//   - sets Badger's discard timestamp to C-1, so that its own compactions
//     keep only the newest version at or below C-1 of each key (the value
//     reads at C, and the value before any revision still watched), and
//     drop keys whose newest such version is a deletion;
//   - deletes the revision index entries below C-1;
//   - for an explicit Compact, flattens the LSM tree and collects value
//     log garbage, so the space comes back now rather than on Badger's own
//     schedule (automatic compactions leave it to Badger and the node's
//     periodic value log GC).
//
// The physical part is local and idempotent: a node that restarts or
// installs a snapshot runs it again from the recorded revision.

// Compact asks for the history below rev to be dropped when the batch
// commits; flatten reclaims the space at once rather than as Badger
// compacts its tree over time. It fails with ErrFutureRevision past the
// current entry, and with ErrCompacted at or below the revision already
// compacted.
func (b *Batch) Compact(rev uint64, flatten bool) error {
	if rev >= b.index {
		return fmt.Errorf("compact to %d, store is at %d: %w", rev, b.index-1, ErrFutureRevision)
	}
	if c := max(b.s.compacted.Load(), b.compactTo); rev <= c {
		return compactedErr(rev, c)
	}
	b.compactTo = rev
	b.flatten = b.flatten || flatten
	return nil
}

func (s *KV) loadCompacted(readTs uint64) error {
	rev, err := s.readMeta(metaCompacted, "compacted revision", readTs)
	if err != nil {
		return err
	}
	s.compacted.Store(rev)
	s.setDiscardTs()
	return nil
}

func (s *KV) compactInBackground(rev uint64, flatten bool) {
	if s.closing.Load() {
		return
	}
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if err := s.CompactNow(rev, flatten); err != nil {
			s.logger.Warn("compaction", "revision", rev, "error", err)
		}
	}()
}

// CompactNow does the physical part of a compaction to rev, which must
// already be recorded, and waits for it. Flatten rewrites the whole LSM
// tree so the space comes back now: worth it when asked for, too heavy
// every few minutes.
func (s *KV) CompactNow(rev uint64, flatten bool) error {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	if rev <= 1 || rev > s.compacted.Load() {
		return nil
	}
	// A checkpoint first: Badger may discard nothing above the last one
	// (checkpoint.go).
	if _, err := s.Checkpoint(); err != nil {
		return fmt.Errorf("compact to %d: %w", rev, err)
	}
	n, err := s.dropRevisionIndex(rev - 1)
	if err != nil {
		return err
	}
	if err := s.recountUsage(); err != nil {
		return fmt.Errorf("compact to %d: %w", rev, err)
	}
	if s.closing.Load() || !flatten {
		s.logger.Info("compacted", "revision", rev, "index_entries_dropped", n)
		return nil
	}
	// Flattening rewrites the whole tree before it deletes the old one.
	if lsm, _ := s.db.Size(); s.space.Allow(diskspace.Critical, lsm) != nil {
		s.logger.Warn("compacted; the space comes back as Badger compacts: too little free space to flatten now",
			"revision", rev, "index_entries_dropped", n, "error", s.space.Allow(diskspace.Critical, lsm))
		return nil
	}
	if err := s.db.Flatten(1); err != nil {
		return fmt.Errorf("compact to %d: flatten: %w", rev, err)
	}
	// Values live in the value log: the flatten found which are garbage,
	// GC gives their space back.
	runValueLogGC(s.db, s.logger)
	s.logger.Info("compacted", "revision", rev, "index_entries_dropped", n)
	return nil
}

// dropRevisionIndex deletes the revision index entries below rev, writing
// the deletions at version rev: at or below the discard timestamp, so
// Badger drops them with what they hide.
func (s *KV) dropRevisionIndex(rev uint64) (int, error) {
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	txn := s.db.NewTransactionAt(s.applied.Load(), false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{revPrefix}})
	defer it.Close()
	end := revKey(rev, nil)
	wb := s.db.NewManagedWriteBatch()
	defer wb.Cancel()
	n := 0
	for it.Seek([]byte{revPrefix}); it.Valid(); it.Next() {
		k := it.Item().Key()
		if bytes.Compare(k, end) >= 0 || s.closing.Load() {
			break
		}
		if err := wb.DeleteAt(bytes.Clone(k), rev); err != nil {
			return n, fmt.Errorf("drop revision index: %w", err)
		}
		n++
	}
	if err := wb.Flush(); err != nil {
		return n, fmt.Errorf("drop revision index: %w", err)
	}
	return n, nil
}
