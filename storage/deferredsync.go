package storage

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Deferred syncs: a raft leader's appends are synced while they replicate.
//
// hashicorp/raft's leader stores a batch (StoreLogs) before it sends the
// batch to its followers, and each follower syncs it before it answers, so
// a write waited for two syncs one after the other. The raft thesis (10.2.1)
// and etcd let the leader write its own log in parallel with the followers:
// a write is safe once a majority holds it on disk, whichever majority.
//
// With DeferSyncs on, StoreLogs called while this node leads returns once
// Badger has the logs, and a goroutine of the store syncs them meanwhile.
// Raft then counts the leader's unsynced copy when it advances the commit
// index, so the consensus package keeps that index from being seen before
// the leader's copy is synced (SyncedIndex, WaitSynced):
//   - the leader applies an entry, and so answers its client, only once
//     its own copy is synced: with the followers' synced copies that
//     counted, a majority then holds the entry on disk;
//   - followers are told of a commit index no higher than the leader's
//     synced index, so they apply and serve no entry a majority might not
//     hold on disk.
//
// A leader that loses power (not only its process: the page cache then
// keeps the writes) may come back without entries raft counted, but no node
// applied them and no client heard of them, so losing them is like losing
// an entry that never committed.
//
// Appends made while following, and all others, are synced before StoreLogs
// returns, as raft requires of them.

// DeferSyncs makes StoreLogs return before syncing whenever leading()
// returns true; it is called, under the store's write lock, for every
// StoreLogs. It reports whether the store can defer: on systems where
// Badger syncs its own writes (see walsync.go) it cannot, and StoreLogs
// keeps syncing every write. Call it before raft starts; nil turns
// deferring off.
func (s *RaftStore) DeferSyncs(leading func() bool) bool {
	if s.wal == nil {
		return false
	}
	if leading == nil {
		s.leading.Store(nil)
		return true
	}
	s.leading.Store(&leading)
	return true
}

// SyncedIndex returns an index such that every log up to it is on disk.
func (s *RaftStore) SyncedIndex() uint64 { return s.syncs.syncedLast.Load() }

// WaitSynced waits until every log up to index is on disk. It fails when
// ctx ends, when a sync failed (the store then fails every later append
// too) or when the store is closed.
func (s *RaftStore) WaitSynced(ctx context.Context, index uint64) error {
	d := &s.syncs
	for {
		if d.syncedLast.Load() >= index {
			return nil
		}
		d.mu.Lock()
		advanced, err := d.advanced, d.err
		d.mu.Unlock()
		if d.syncedLast.Load() >= index {
			return nil
		}
		if err != nil {
			return fmt.Errorf("raft log: wait for index %d on disk: %w", index, err)
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return fmt.Errorf("raft log: wait for index %d on disk: %w", index, ctx.Err())
		}
	}
}

// syncState tracks which writes of the log are on disk. Writes are counted
// in the order they commit (under the store's writeMu); a sync covers every
// write counted before it started.
type syncState struct {
	// run serialises syncs, so each one's count is taken in order and a
	// later, smaller sync cannot claim what an earlier one still writes.
	run sync.Mutex

	mu sync.Mutex
	// written counts the log writes made; lastWritten is the log's last
	// index after the latest; full records that an unsynced write went to
	// the value log.
	written     uint64
	lastWritten uint64
	full        bool
	// synced is the count of writes on disk.
	synced uint64
	// advanced is closed, and replaced, whenever syncedLast moves or err
	// is set.
	advanced chan struct{}
	// err is the first sync failure, or errClosed once the store closed.
	err error

	// syncedLast is lastWritten as of the latest write on disk.
	syncedLast atomic.Uint64

	// kick wakes the syncer goroutine; stop ends it, and done is closed
	// when it has.
	kick     chan struct{}
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// initSyncs starts the state with the log's last index as on disk (the store
// syncs its files at open) and starts the syncer goroutine.
func (s *RaftStore) initSyncs(last uint64) {
	d := &s.syncs
	d.lastWritten = last
	d.syncedLast.Store(last)
	d.advanced = make(chan struct{})
	d.kick = make(chan struct{}, 1)
	d.stop = make(chan struct{})
	d.done = make(chan struct{})
	go s.runSyncer()
}

// deferring tells whether the write being made may skip its sync.
func (s *RaftStore) deferring() bool {
	f := s.leading.Load()
	return f != nil && (*f)()
}

// noteWritten counts a write of the log that committed; full when it may
// have put entries in the value log. Caller holds writeMu.
func (s *RaftStore) noteWritten(full bool) {
	d := &s.syncs
	d.mu.Lock()
	d.written++
	d.lastWritten = s.last.Load()
	d.full = d.full || full
	d.mu.Unlock()
}

// syncWritten syncs every write counted so far.
func (s *RaftStore) syncWritten() error { return s.syncCounted(false) }

// syncDelete syncs every write counted so far, the last a delete of a
// suffix of the log: with a journal, by a checkpoint that also drops the
// journal's records of the deleted entries (journal.go). Caller holds
// writeMu, so no append comes in between.
func (s *RaftStore) syncDelete() error { return s.syncCounted(true) }

func (s *RaftStore) syncCounted(suffixDeleted bool) error {
	d := &s.syncs
	d.run.Lock()
	defer d.run.Unlock()
	d.mu.Lock()
	written, last, full, failed := d.written, d.lastWritten, d.full, d.err
	d.full = false
	d.mu.Unlock()
	if failed != nil {
		return failed
	}
	if written == d.synced && !full && !suffixDeleted {
		return nil
	}
	var err error
	switch {
	case s.journal == nil:
		err = s.wal.sync(full)
	case suffixDeleted:
		err = s.checkpoint(last, true)
	default:
		err = s.syncJournal(full, last)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		// Whether the writes reached the disk is unknown: no later sync
		// may claim them, so every later write fails too.
		if d.err == nil {
			d.err = fmt.Errorf("sync: %w", err)
			d.wake()
		}
		return err
	}
	d.synced = written
	d.syncedLast.Store(last)
	d.wake()
	return nil
}

// syncJournal makes the counted writes durable through the journal: the
// value log first when an entry went there (the journal does not cover
// it), then the journal. Past its max it checkpoints. last is the
// log's last index as of the latest counted write. Caller holds syncs.run.
func (s *RaftStore) syncJournal(full bool, last uint64) error {
	if full {
		if err := s.wal.syncValueLog(); err != nil {
			return err
		}
	}
	if err := s.journal.flush(); err != nil {
		return err
	}
	if s.journal.size > s.journal.max {
		return s.checkpoint(last, false)
	}
	return nil
}

// checkpoint syncs all of Badger's files, then starts the journal over
// from last, the log's last index as of the latest counted write: every
// entry up to it is in those files. dropPending drops the records not yet
// written to the journal too (see journal.reset). Caller holds syncs.run.
func (s *RaftStore) checkpoint(last uint64, dropPending bool) error {
	if err := s.wal.syncAll(); err != nil {
		return err
	}
	return s.journal.reset(last, dropPending)
}

// failure returns the sync failure that stops appends, or nil.
func (d *syncState) failure() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

// wake tells waiters that something changed. Caller holds mu.
func (d *syncState) wake() {
	close(d.advanced)
	d.advanced = make(chan struct{})
}

// kickSyncer asks the syncer goroutine for a sync. A kick while one runs
// makes it run once more, so every deferred write is synced soon after it
// is made, and writes made during a sync share the next one.
func (s *RaftStore) kickSyncer() {
	select {
	case s.syncs.kick <- struct{}{}:
	default:
	}
}

func (s *RaftStore) runSyncer() {
	d := &s.syncs
	defer close(d.done)
	for {
		select {
		case <-d.kick:
		case <-d.stop:
			return
		}
		s.closeMu.RLock()
		var err error
		if !s.closed {
			err = s.syncWritten()
		}
		s.closeMu.RUnlock()
		if err != nil {
			s.logger.Error("sync of the raft log failed; this node can no longer append", "error", err)
		}
	}
}

// stopSyncer ends the syncer goroutine and waits for it. Called by Close
// before it takes closeMu, which a running sync holds.
func (s *RaftStore) stopSyncer() {
	d := &s.syncs
	d.stopOnce.Do(func() { close(d.stop) })
	<-d.done
}

// finishSyncs syncs what is left and makes waiters fail from then on.
// Caller holds closeMu exclusively.
func (s *RaftStore) finishSyncs() error {
	d := &s.syncs
	err := s.syncWritten()
	d.mu.Lock()
	if d.err == nil {
		d.err = errClosed
	}
	d.wake()
	d.mu.Unlock()
	return err
}
