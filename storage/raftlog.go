package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/storage/diskspace"
)

// Key layout. Everything lives in one Badger database, split by a one-byte
// prefix:
//
//	'l' + uint64 big-endian index  -> encoded raft.Log
//	's' + arbitrary key bytes      -> stable store value
//
// Big-endian indexes sort bytewise in numeric order, so Badger's key order is
// log order: the first/last index is a single forward/reverse seek, and a
// DeleteRange is a forward scan over only the keys that exist.
const (
	logPrefix    byte = 'l'
	stablePrefix byte = 's'
	logKeyLen         = 1 + 8
)

// logCodecVersion is the first byte of every encoded log, so the format can
// evolve without misreading old data.
const logCodecVersion byte = 1

// Bits of the flags byte in an encoded log.
const (
	flagHasAppendedAt byte = 1 << 0
	knownFlags             = flagHasAppendedAt
)

// deleteScanChunk bounds how many keys DeleteRange collects per scan, so
// deleting a huge range never holds every key in memory at once (64Ki keys
// is a few MiB). It is deliberately larger than Badger's per-transaction
// entry limit with badgerOptions (~26k), so one scan's deletes can still
// need several transactions.
const deleteScanChunk = 64 * 1024

// blindDeleteMax bounds the span of a log DeleteRange deletes index by
// index without looking for keys: far above any raft log, whose entries
// between snapshots number thousands to millions.
const blindDeleteMax = 1 << 26

// errClosed is returned by operations on a closed RaftStore. Badger panics
// (rather than erroring) when an iterator is created on a closed DB, so the
// store guards against use after Close itself.
var errClosed = errors.New("raft store is closed")

// RaftStore is the raft log and stable store on Badger. It implements
// raft.LogStore and raft.StableStore on a single Badger database, and syncs
// what each write committed before returning (see walsync.go), so every
// successful StoreLogs/DeleteRange/Set is durable when it returns, as raft
// requires; the one exception, a leader's appends once DeferSyncs is on, is
// synced while raft replicates them (deferredsync.go).
//
// It is safe for concurrent use: raft appends from its main loop while
// compaction (DeleteRange) runs from the snapshot goroutine and replication
// goroutines read concurrently.
type RaftStore struct {
	db     *badger.DB
	opts   badger.Options
	logger *slog.Logger
	// guard, when set, refuses appends below the disk's hard margin: an
	// append that found no free block in Badger's memory-mapped files
	// would kill the process with SIGBUS (diskspace).
	guard *diskspace.Guard
	// wal syncs the files a commit wrote when Badger's SyncWrites is off
	// (nil when it is on).
	wal *walSyncer
	// journal makes appends durable when wal is set (journal.go says
	// why); nil when Badger syncs.
	journal *journal

	// closeMu is held shared by every operation that touches db and
	// exclusively by Close, so Close waits for in-flight operations and no
	// operation starts on a closed DB.
	closeMu sync.RWMutex
	closed  bool

	// writeMu serialises StoreLogs and DeleteRange so the cached first/last
	// indexes are updated in the same order as the writes they describe.
	writeMu sync.Mutex
	// prefixMu serialises the deletes of log prefixes, which run without
	// writeMu (deletePrefix).
	prefixMu sync.Mutex

	// Cached first/last log index (0 = no logs). Only meaningful while
	// cacheValid is true; it is cleared when a write fails in a way that
	// leaves the on-disk state uncertain and a reload also fails, in which
	// case readers fall back to seeking in Badger.
	first      atomic.Uint64
	last       atomic.Uint64
	cacheValid atomic.Bool

	// deleteChunk is deleteScanChunk; a field so tests can shrink it.
	deleteChunk int

	// recent holds the logs stored last, which raft reads back at once.
	recent *logCache
	// ahead holds older logs read in index order (readahead.go).
	ahead readAhead

	// leading, when set, tells whether an append may return before it is
	// synced (deferredsync.go); syncs tracks what is on disk.
	leading atomic.Pointer[func() bool]
	syncs   syncState

	// txnSplits counts how many times a write was split into a further
	// transaction because of badger.ErrTxnTooBig. Diagnostics and tests.
	txnSplits atomic.Uint64
}

var (
	_ raft.LogStore    = (*RaftStore)(nil)
	_ raft.StableStore = (*RaftStore)(nil)
)

// raftValueThreshold is the size from which a raft log value goes to
// Badger's value log (see OpenRaftStore).
const raftValueThreshold = 1 << 10

// mayReachValueLog tells whether a value of n bytes may go to the value
// log, so the commit must sync it too. The margin keeps it true for values
// just under the threshold, should Badger count a header with them.
func mayReachValueLog(n int) bool { return n+64 >= raftValueThreshold }

// OpenRaftStore opens (creating) the Badger database in dir. Every write
// is synced before it returns, which is what makes a raft append durable
// before raft acknowledges it. On Linux Badger's SyncWrites is off and the
// store syncs the files each commit wrote itself (walsync.go says why);
// elsewhere Badger syncs them (SyncWrites on).
//
// The store is checked as it opens (verify.go, verifyLog): a damaged file
// fails with a CorruptError naming it.
func OpenRaftStore(dir string, logger *slog.Logger, o Options) (_ *RaftStore, err error) {
	if logger == nil {
		logger = slog.Default()
	}
	size := o.Sizing.orDefault()
	if err := beginOpen(dir); err != nil {
		return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
	}
	var s *RaftStore
	defer func() {
		if merr := endOpen(dir); err == nil && merr != nil {
			s.Close()
			err = fmt.Errorf("raft log: open %s: %w", dir, merr)
		}
	}()
	opts := badgerOptions(dir, logger).
		WithSyncWrites(!ownSync).
		// The log is written once, read back mostly while still in the
		// memtable, and truncated after snapshots: it needs little memory
		// and no compression (raft entries are small and already compact).
		WithMemTableSize(size.RaftMemTable).
		WithValueLogFileSize(size.RaftValueLog).
		WithNumMemtables(2).
		// No block cache: uncompressed tables are read straight from
		// their memory maps, and raft reads back recent entries from
		// s.recent. With one, Badger's compactions, which look blocks up
		// in it without adding them, made its hit ratio 0 and Badger warned
		// every minute of writes that the cache "might be too small".
		WithBlockCacheSize(0).
		WithIndexCacheSize(4 << 20).
		WithCompression(options.None).
		// Entries of 1 KiB and more (txns, batches, a catching-up
		// follower's appends) go to the value log: written there once,
		// with only a pointer in the LSM tree, instead of being rewritten
		// by every flush and compaction. Log truncation leaves them as
		// garbage that RunGC reclaims.
		WithValueThreshold(raftValueThreshold)
	if err := verifyFiles(dir, opts, logger); err != nil {
		return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
	}
	if err := checkDamaged(dir); err != nil {
		return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
	}
	var jnl *journal
	var replay journalContents
	// The journal knows whether the machine went down since the last
	// checkpoint: Badger's logs may then end anywhere past it. Without
	// one (Badger syncs every write), a cut is damage or a torn write.
	rebooted := false
	if ownSync {
		if jnl, replay, err = openJournal(dir, size.Journal); err != nil {
			return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
		}
		rebooted = replay.boot == "" || replay.boot != bootID()
	}
	if err := checkLogs(dir, rebooted); err != nil {
		_ = jnl.close()
		return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
	}
	db, err := openBadger("raftlog", dir, logger, func() (*badger.DB, error) { return badger.Open(opts) })
	if err != nil {
		_ = jnl.close()
		return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
	}
	var wal *walSyncer // nil: Badger syncs
	if ownSync {
		if wal, err = openWALSyncer(dir); err != nil {
			_ = db.Close()
			_ = jnl.close()
			return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
		}
	}
	s = &RaftStore{
		guard:       o.Guard,
		opts:        opts,
		db:          db,
		wal:         wal,
		journal:     jnl,
		logger:      logger.With("component", "raftlog", "dir", dir),
		deleteChunk: deleteScanChunk,
		recent:      newLogCache(logCacheMaxEntries, logCacheMaxBytes),
	}
	fail := func(err error) (*RaftStore, error) {
		err = keepDamage(dir, err)
		_ = db.Close()
		_ = wal.close()
		_ = jnl.close()
		return nil, fmt.Errorf("raft log: open %s: %w", dir, err)
	}
	if err := s.reloadIndexesLocked(); err != nil {
		return fail(err)
	}
	if jnl != nil {
		if err := s.replayJournal(replay, filepath.Join(dir, journalFile)); err != nil {
			return fail(err)
		}
	}
	if err := s.verifyLog(dir); err != nil {
		return fail(err)
	}
	// What an earlier run wrote without syncing (deferredsync.go) may still
	// be only in the page cache: sync it before counting it on disk. Then
	// the journal, all of it in Badger's synced files, starts over.
	if ownSync {
		if err := wal.syncAll(); err != nil {
			return fail(err)
		}
		if err := jnl.reset(s.last.Load(), true); err != nil {
			return fail(err)
		}
	}
	s.initSyncs(s.last.Load())
	if o.Guard != nil {
		o.Guard.AddReserve(s.reserve)
		o.Guard.Watch(dir)
	}
	return s, nil
}

// reserve is what the store may write without asking (reserveOf); 0 once
// closed.
func (s *RaftStore) reserve() uint64 {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return 0
	}
	return reserveOf(s.db, s.opts)
}

// appendCharge is what appending logs may take of the disk: each entry is
// written to the log (in Badger's memtable log or value log), may spill
// past the journal's reserved blocks, and is then applied to the state
// store, where its value lands in the value log again; plus the keys and
// bookkeeping of each.
func appendCharge(logs []*raft.Log) int64 {
	var n int64
	for _, l := range logs {
		n += 3*int64(len(l.Data)+len(l.Extensions)) + 256
	}
	return n
}

// Close closes the Badger database. It waits for in-flight operations;
// later calls return an error instead of touching the closed database.
// Closing twice is a no-op.
func (s *RaftStore) Close() error {
	s.stopSyncer()
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.finishSyncs()
	s.cacheValid.Store(false)
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	if werr := s.wal.close(); err == nil {
		err = werr
	}
	if jerr := s.journal.close(); err == nil {
		err = jerr
	}
	if err != nil {
		return fmt.Errorf("raft log: close: %w", err)
	}
	return nil
}

// RunGC runs Badger value log garbage collection until there is nothing
// left worth rewriting. DeleteRange (log compaction) only writes tombstones,
// so space held by large entries in the value log is reclaimed only by GC.
// It runs synchronously in the caller's goroutine; callers schedule it.
func (s *RaftStore) RunGC() {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return
	}
	if err := s.guard.Allow(diskspace.Critical, s.opts.ValueLogFileSize); err != nil {
		s.logger.Warn("value log GC put off", "error", err)
		return
	}
	// GC moves the live entries of a file to the newest value log file,
	// then deletes the old file, and with SyncWrites off nothing syncs the
	// moved entries in between. Badger puts off deleting a file while an
	// iterator is open (valueLog.decrIteratorCount), so one is held open
	// until the moved entries are synced.
	txn := s.db.NewTransaction(false)
	it := txn.NewIterator(badger.IteratorOptions{})
	runValueLogGC(s.db, s.logger)
	if err := s.wal.sync(true); err != nil {
		s.logger.Error("value log GC: sync", "error", err)
	}
	it.Close()
	txn.Discard()
}

// FirstIndex returns the first log index stored, or 0 if there are none.
func (s *RaftStore) FirstIndex() (uint64, error) {
	if s.cacheValid.Load() {
		return s.first.Load(), nil
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return 0, fmt.Errorf("raft log: first index: %w", errClosed)
	}
	idx, err := s.firstIndexFromDB()
	if err != nil {
		return 0, fmt.Errorf("raft log: first index: %w", err)
	}
	return idx, nil
}

// LastIndex returns the last log index stored, or 0 if there are none.
func (s *RaftStore) LastIndex() (uint64, error) {
	if s.cacheValid.Load() {
		return s.last.Load(), nil
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return 0, fmt.Errorf("raft log: last index: %w", errClosed)
	}
	idx, err := s.lastIndexFromDB()
	if err != nil {
		return 0, fmt.Errorf("raft log: last index: %w", err)
	}
	return idx, nil
}

// GetLog reads the log at index into log. A missing index returns
// raft.ErrLogNotFound unwrapped: raft compares it with == (replication.go)
// to decide to send a snapshot instead, so wrapping it would break that.
func (s *RaftStore) GetLog(index uint64, log *raft.Log) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return fmt.Errorf("raft log: get %d: %w", index, errClosed)
	}
	if l, ok := s.recent.get(index); ok {
		*log = *l
		return nil
	}
	l, readAhead, gen := s.ahead.get(index)
	if l != nil {
		*log = *l
		return nil
	}
	if readAhead {
		run, err := s.readRun(index)
		if err != nil {
			return err
		}
		if len(run) == 0 {
			return raft.ErrLogNotFound
		}
		s.ahead.keep(gen, run)
		*log = *run[0]
		return nil
	}
	return s.getOne(index, log)
}

// getOne reads the log at index with a point lookup.
func (s *RaftStore) getOne(index uint64, log *raft.Log) error {
	var l raft.Log
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(logKey(index))
		if err != nil {
			return err
		}
		// decodeLog copies out of v, which is only valid inside Value.
		return item.Value(func(v []byte) error { return decodeLog(v, &l) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return fmt.Errorf("raft log: get %d: %w", index, err)
	}
	if l.Index != index {
		return fmt.Errorf("raft log: get %d: corrupt entry: stored under index %d but encodes index %d", index, index, l.Index)
	}
	*log = l
	return nil
}

// StoreLog stores a single log entry.
func (s *RaftStore) StoreLog(log *raft.Log) error {
	return s.StoreLogs([]*raft.Log{log})
}

// StoreLogs stores logs in one Badger transaction when they fit, and
// otherwise in as few consecutive transactions as Badger's per-transaction
// limit allows. The files the commits wrote are synced before it returns,
// so when StoreLogs returns nil every log is durable, unless DeferSyncs
// says this node leads: then the sync follows (SyncedIndex, WaitSynced).
// If it fails part way,
// a prefix of logs may have been stored; raft treats any error as fatal for
// the append, and the cached first/last indexes still reflect exactly what
// was committed.
func (s *RaftStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	for i, l := range logs {
		if l == nil {
			return fmt.Errorf("raft log: store: log %d of %d is nil", i, len(logs))
		}
		// Index 0 is never a raft log index, and FirstIndex/LastIndex use 0
		// to mean "empty", so storing it would make the store lie.
		if l.Index == 0 {
			return fmt.Errorf("raft log: store: log %d of %d has index 0", i, len(logs))
		}
	}

	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return fmt.Errorf("raft log: store %d: %w", logs[0].Index, errClosed)
	}
	// Refused before anything is written: raft takes a failed append as a
	// rejection (a follower answers the leader so, a leader steps down).
	charge := appendCharge(logs)
	if err := s.guard.Allow(diskspace.Critical, charge); err != nil {
		return fmt.Errorf("raft log: store %d-%d: %w", logs[0].Index, logs[len(logs)-1].Index, err)
	}
	s.guard.Charge(charge)
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if !s.cacheValid.Load() {
		// An earlier failure left the cache unusable; try to recover it so
		// noteStored below has a base to fold into. On failure readers keep
		// seeking in Badger, which is slower but correct.
		_ = s.reloadIndexesLocked()
	}

	// Appends past the last index change no log a run read ahead holds;
	// only rewrites of stored indexes (a follower's conflicting suffix) do.
	// Dropping the run on every append would make a leader reading a
	// lagging follower's entries while writes come in read each run again
	// for every entry.
	rewrite := !s.cacheValid.Load() || logs[0].Index <= s.last.Load()
	full := false
	var ents []journalEntry
	if s.journal != nil {
		ents = make([]journalEntry, len(logs))
	}
	err := s.writeSplit(len(logs),
		func(txn *badger.Txn, i int) error {
			// Each entry gets its own buffers: Badger keeps references to key
			// and value until the transaction commits.
			v := encodeLog(logs[i])
			full = full || mayReachValueLog(len(v))
			if ents != nil {
				ents[i] = journalEntry{index: logs[i].Index, data: v}
			}
			return txn.Set(logKey(logs[i].Index), v)
		},
		func(from, to int) {
			if ents != nil {
				s.journal.add(ents[from:to])
			}
			s.noteStored(logs[from:to])
			s.recent.add(logs[from:to])
			if rewrite {
				s.ahead.invalidate()
			}
		},
	)
	// Also after a failure: what was committed is in the cache.
	s.noteWritten(full)
	if err == nil && s.deferring() {
		if err = s.syncs.failure(); err == nil {
			s.kickSyncer()
			return nil
		}
	} else if serr := s.syncWritten(); err == nil {
		err = serr
	}
	if err != nil {
		s.recent.clear()
		s.ahead.invalidate()
		// A failed commit may or may not have reached disk; re-read the
		// bounds rather than guess.
		_ = s.reloadIndexesLocked()
		return fmt.Errorf("raft log: store %d-%d: %w", logs[0].Index, logs[len(logs)-1].Index, err)
	}
	return nil
}

// DeleteRange deletes the logs with indexes in [min, max], inclusive, and
// splits the deletes across transactions when they exceed Badger's
// per-transaction limit.
//
// With the bounds of the log known, it deletes the keys of [min, max] within
// them without looking for them, and finds the new bounds by seeking from
// the edge of the deleted range. Raft deletes a prefix after every snapshot:
// looking for the keys, and then for the new first index from the start of
// the log, walked every tombstone earlier deletes had left, and took a
// fifth of a busy node's CPU after a few minutes of writes.
func (s *RaftStore) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return fmt.Errorf("raft log: delete %d-%d: %w", min, max, errClosed)
	}
	s.writeMu.Lock()
	if first, last := s.first.Load(), s.last.Load(); s.cacheValid.Load() && first != 0 &&
		min <= first && max >= first && max < last && last-first < blindDeleteMax {
		return s.deletePrefix(first, max)
	}
	defer s.writeMu.Unlock()

	s.recent.remove(min, max)
	var err error
	reload := true
	if first, last := s.first.Load(), s.last.Load(); s.cacheValid.Load() && last-first < blindDeleteMax {
		err = s.deleteWithinLocked(min, max, first, last)
		reload = err != nil
	} else {
		// Bounds unknown, or so far apart that the log must have gaps
		// (raft's has none): delete only the keys that exist.
		err = s.deleteRangeLocked(min, max)
	}
	s.ahead.invalidate()
	if reload {
		// Re-read the bounds from Badger (two seeks from the ends), which
		// also repairs the cache after a partial failure.
		if rerr := s.reloadIndexesLocked(); rerr != nil && err == nil {
			err = rerr
		}
	}
	// Counted as a write: the last index may have moved back, and what is
	// on disk now ends there.
	s.noteWritten(false)
	if serr := s.syncDelete(); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("raft log: delete %d-%d: %w", min, max, err)
	}
	return nil
}

// replayJournal writes the entries of the journal an earlier run left to
// Badger again, then drops entries past them that follow a gap, unless the
// machine has not rebooted since (journal.go says when either matters).
// Called by OpenRaftStore, with the cached bounds loaded, before anything
// else uses the store.
func (s *RaftStore) replayJournal(c journalContents, path string) error {
	if c.boot != "" && c.boot == bootID() {
		// No reboot since the checkpoint: the page cache kept every write
		// Badger was given, and the journal only has those. Badger must
		// hold all of them: it cuts a damaged memtable log short without
		// a word.
		end := c.checkpoint
		for _, e := range c.entries {
			end = max(end, e.index)
		}
		if last := s.last.Load(); last < end {
			return corruptf(filepath.Dir(path), "the log ends at index %d, but %s says entries up to %d were stored: the storage engine lost some", last, journalFile, end)
		}
		return nil
	}
	if at := c.damagedAt(); at > 0 {
		return corruptf(path, "a damaged record at offset %d is followed by whole ones: entries after it would be lost", at)
	}
	first := s.first.Load()
	end := c.checkpoint
	ents := c.entries[:0:0]
	for _, e := range c.entries {
		end = max(end, e.index)
		// Below the first index: a prefix delete came after it.
		if first == 0 || e.index >= first {
			ents = append(ents, e)
		}
	}
	if len(ents) > 0 {
		err := s.writeSplit(len(ents),
			func(txn *badger.Txn, i int) error { return txn.Set(logKey(ents[i].index), ents[i].data) },
			func(int, int) {},
		)
		if err != nil {
			return fmt.Errorf("replay journal: %w", err)
		}
		if err := s.reloadIndexesLocked(); err != nil {
			return fmt.Errorf("replay journal: %w", err)
		}
	}
	return s.dropAfterGap(end)
}

// dropAfterGap deletes the entries from the first index missing past end
// to the last one: entries no caller was told were stored, which Badger
// kept past the end of the journal while losing some before them (a power
// loss that kept a newer memtable file and lost the end of an older one).
// Raft must not see a hole in its log.
func (s *RaftStore) dropAfterGap(end uint64) error {
	first, last := s.first.Load(), s.last.Load()
	if first == 0 || last <= end {
		return nil
	}
	next := max(end+1, first)
	for next <= last {
		keys, err := s.collectLogKeys(next, last, deleteScanChunk)
		if err != nil {
			return fmt.Errorf("check the log for gaps: %w", err)
		}
		if len(keys) == 0 {
			break
		}
		for _, k := range keys {
			if logKeyIndex(k) != next {
				s.logger.Warn("raft log: dropping entries past a gap that a crash left; none was acknowledged",
					"from", next, "to", last)
				if err := s.deleteRangeLocked(next, last); err != nil {
					return fmt.Errorf("drop the log past a gap at %d: %w", next, err)
				}
				return s.reloadIndexesLocked()
			}
			next++
		}
	}
	return nil
}

// deletePrefix deletes [first, hi] of the log, a prefix that leaves at
// least one entry, as raft does after every snapshot. Called with writeMu
// held, it moves the first index and releases writeMu before it deletes:
// no entry of the prefix is appended or read again, so appends need not
// wait. Holding writeMu throughout stalled a node's appends for 90-530 ms
// at every snapshot under a put load (30,000-60,000 entries each).
func (s *RaftStore) deletePrefix(first, hi uint64) error {
	// hi+1 in raft's log, which has no gaps; the seek starts past the
	// tombstones of earlier deletes.
	next, err := s.seekLogIndexFrom(hi+1, false)
	if err != nil {
		s.writeMu.Unlock()
		return fmt.Errorf("raft log: delete %d-%d: %w", first, hi, err)
	}
	s.first.Store(next)
	s.recent.remove(first, hi)
	s.ahead.invalidate()
	s.writeMu.Unlock()
	prefixDeleteStarts()

	s.prefixMu.Lock()
	defer s.prefixMu.Unlock()
	// Small transactions: each waits in Badger's write queue with the
	// appends, and a large one would hold them up.
	err = s.deleteIndexes(first, hi, prefixDeleteChunk)
	// Keys left by a failure lie below the first index: never read; the
	// store finds them again when it reopens, and deletes them with a
	// later prefix.
	if serr := s.wal.sync(false); err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("raft log: delete %d-%d: %w", first, hi, err)
	}
	return nil
}

// deleteIndexes deletes every index of [lo, hi], present or not, chunk
// indexes at a time (writeSplit splits a chunk Badger finds too big).
func (s *RaftStore) deleteIndexes(lo, hi uint64, chunk int) error {
	for from := lo; ; {
		to := min(hi, from+uint64(chunk)-1)
		err := s.writeSplit(int(to-from+1),
			func(txn *badger.Txn, i int) error { return txn.Delete(logKey(from + uint64(i))) },
			func(int, int) {},
		)
		if err != nil || to == hi {
			return err
		}
		from = to + 1
	}
}

// prefixDeleteChunk is how many entries one transaction of deletePrefix
// deletes.
const prefixDeleteChunk = 1024

// prefixDeleteStarts runs as deletePrefix starts deleting; tests replace
// it to append meanwhile.
var prefixDeleteStarts = func() {}

// deleteWithinLocked deletes [lo, hi] of the log known to span [first,
// last] and moves the cached bounds. Every index in between is deleted,
// present or not: raft's log has no gaps, and a delete of an absent key
// only costs a tombstone.
func (s *RaftStore) deleteWithinLocked(lo, hi, first, last uint64) error {
	if first == 0 || lo > last || hi < first {
		return nil // nothing stored in the range
	}
	lo, hi = max(lo, first), min(hi, last)
	if err := s.deleteIndexes(lo, hi, s.deleteChunk); err != nil {
		s.cacheValid.Store(false)
		return err
	}
	var err error
	switch {
	case lo == first && hi == last:
		first, last = 0, 0
	case lo == first:
		first, err = s.seekLogIndexFrom(hi+1, false)
	case hi == last:
		last, err = s.seekLogIndexFrom(lo-1, true)
	}
	if err != nil {
		s.cacheValid.Store(false)
		return err
	}
	s.first.Store(first)
	s.last.Store(last)
	return nil
}

func (s *RaftStore) deleteRangeLocked(min, max uint64) error {
	next := min
	for {
		keys, err := s.collectLogKeys(next, max, s.deleteChunk)
		if err != nil {
			return err
		}
		if len(keys) == 0 {
			return nil
		}
		err = s.writeSplit(len(keys),
			func(txn *badger.Txn, i int) error { return txn.Delete(keys[i]) },
			func(int, int) {},
		)
		if err != nil {
			return err
		}
		lastDeleted := logKeyIndex(keys[len(keys)-1])
		if len(keys) < s.deleteChunk || lastDeleted >= max {
			return nil
		}
		next = lastDeleted + 1 // cannot overflow: lastDeleted < max
	}
}

// collectLogKeys returns copies of up to limit existing log keys with index
// in [from, to], in index order.
func (s *RaftStore) collectLogKeys(from, to uint64, limit int) ([][]byte, error) {
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false // keys only: values may be large
		opts.Prefix = []byte{logPrefix}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(logKey(from)); it.Valid() && len(keys) < limit; it.Next() {
			k := it.Item().Key()
			if len(k) != logKeyLen {
				return fmt.Errorf("corrupt log key %x", k)
			}
			if logKeyIndex(k) > to {
				break
			}
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	return keys, err
}

// writeSplit applies op(txn, i) for i in [0, n) using as few write
// transactions as possible: when op fails with badger.ErrTxnTooBig the
// transaction so far is committed and the same i is retried in a fresh one.
// After each successful commit, committed(from, to) is called with the range
// of i it covered.
func (s *RaftStore) writeSplit(n int, op func(txn *badger.Txn, i int) error, committed func(from, to int)) error {
	for start := 0; start < n; {
		txn := s.db.NewTransaction(true)
		end := start
		for ; end < n; end++ {
			err := op(txn, end)
			if err == nil {
				continue
			}
			if errors.Is(err, badger.ErrTxnTooBig) && end > start {
				break // commit what fits, continue in a new transaction
			}
			txn.Discard()
			// ErrTxnTooBig on an empty transaction means one entry alone is
			// over the limit; retrying would loop forever.
			return fmt.Errorf("entry %d of %d: %w", end, n, err)
		}
		// Commit discards the transaction, also on error.
		if err := txn.Commit(); err != nil {
			return fmt.Errorf("commit entries %d-%d of %d: %w", start, end-1, n, err)
		}
		committed(start, end)
		if end < n {
			s.txnSplits.Add(1)
		}
		start = end
	}
	return nil
}

// noteStored folds newly committed logs into the cached first/last indexes.
// Storing only adds keys, so the new bounds are the min/max of the old
// bounds and the new indexes. Caller holds writeMu.
func (s *RaftStore) noteStored(logs []*raft.Log) {
	if !s.cacheValid.Load() {
		return // reloaded from Badger at the start of the next write
	}
	first, last := s.first.Load(), s.last.Load()
	for _, l := range logs {
		if first == 0 || l.Index < first {
			first = l.Index
		}
		if l.Index > last {
			last = l.Index
		}
	}
	s.first.Store(first)
	s.last.Store(last)
}

// reloadIndexesLocked re-reads first/last from Badger into the cache. On
// failure the cache is marked invalid so readers seek in Badger instead of
// trusting stale values. Caller holds writeMu (or has exclusive access).
func (s *RaftStore) reloadIndexesLocked() error {
	first, err := s.firstIndexFromDB()
	if err != nil {
		s.cacheValid.Store(false)
		return err
	}
	last, err := s.lastIndexFromDB()
	if err != nil {
		s.cacheValid.Store(false)
		return err
	}
	s.first.Store(first)
	s.last.Store(last)
	s.cacheValid.Store(true)
	return nil
}

func (s *RaftStore) firstIndexFromDB() (uint64, error) {
	return s.seekLogIndex(false)
}

func (s *RaftStore) lastIndexFromDB() (uint64, error) {
	return s.seekLogIndex(true)
}

// seekLogIndex returns the lowest (or, if reverse, highest) stored log index,
// or 0 if there are no logs. It reads keys only.
func (s *RaftStore) seekLogIndex(reverse bool) (uint64, error) {
	if reverse {
		// In reverse, Seek finds the largest key <= the target; this is
		// the largest possible log key.
		return s.seekLogIndexFrom(math.MaxUint64, true)
	}
	return s.seekLogIndexFrom(0, false)
}

// seekLogIndexFrom returns the lowest stored log index >= from (or, if
// reverse, the highest <= from), or 0 if there is none. It reads keys only.
func (s *RaftStore) seekLogIndexFrom(from uint64, reverse bool) (uint64, error) {
	var idx uint64
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.PrefetchSize = 1
		opts.Reverse = reverse
		opts.Prefix = []byte{logPrefix}
		it := txn.NewIterator(opts)
		defer it.Close()
		it.Seek(logKey(from))
		if !it.Valid() {
			return nil
		}
		k := it.Item().Key()
		if len(k) != logKeyLen {
			return fmt.Errorf("corrupt log key %x", k)
		}
		idx = logKeyIndex(k)
		return nil
	})
	return idx, err
}

// Set stores val under key in the stable store.
func (s *RaftStore) Set(key []byte, val []byte) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return fmt.Errorf("raft stable: set %q: %w", key, errClosed)
	}
	// db.Update commits before returning, so referencing the caller's val
	// (Badger keeps it until commit) is safe without a copy.
	err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(stableKey(key), val)
	})
	if err == nil {
		err = s.wal.sync(mayReachValueLog(len(val)))
	}
	if err != nil {
		return fmt.Errorf("raft stable: set %q: %w", key, err)
	}
	return nil
}

// Get returns the value stored under key, or (nil, nil) if there is none.
//
// A missing key must not be an error here: raft accepts an error for a
// missing key only if its text is exactly "not found" (api.go, raft.go),
// while Badger's is "Key not found", which would make NewRaft fail on a
// fresh store. Returning nil also matches raft's use of a nil
// LastVoteCand as "no vote cast". A present but empty value is returned as
// a non-nil empty slice to keep it distinguishable.
func (s *RaftStore) Get(key []byte) ([]byte, error) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("raft stable: get %q: %w", key, errClosed)
	}
	var val []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(stableKey(key))
		if err != nil {
			return err
		}
		// Fix: this copied into a buffer of item.ValueSize() bytes and
		// returned that buffer. For a value kept in the value log (1 KiB
		// and more) the size is Badger's estimate, off by a byte when the
		// value's encoded header is not 6 bytes: a value of 16 KiB or more
		// came back with a byte too many. Raft's own values are small, but
		// LastVoteCand holds a node name the user chose.
		return itemValue(item, func(v []byte) error {
			val = append([]byte{}, v...)
			return nil
		})
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("raft stable: get %q: %w", key, err)
	}
	return val, nil
}

// SetUint64 stores val under key as 8 bytes big-endian.
func (s *RaftStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns the uint64 stored under key, or (0, nil) if there is
// none (see Get for why a missing key is not an error).
func (s *RaftStore) GetUint64(key []byte) (uint64, error) {
	val, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if val == nil {
		return 0, nil
	}
	if len(val) != 8 {
		return 0, fmt.Errorf("raft stable: get uint64 %q: corrupt value: %d bytes, want 8", key, len(val))
	}
	return binary.BigEndian.Uint64(val), nil
}

func logKey(index uint64) []byte {
	k := make([]byte, logKeyLen)
	k[0] = logPrefix
	binary.BigEndian.PutUint64(k[1:], index)
	return k
}

// logKeyIndex returns the index in a log key; the caller checks the length.
func logKeyIndex(k []byte) uint64 {
	return binary.BigEndian.Uint64(k[1:logKeyLen])
}

func stableKey(key []byte) []byte {
	k := make([]byte, 0, 1+len(key))
	k = append(k, stablePrefix)
	return append(k, key...)
}

// encodeLog encodes every field of l:
//
//	version byte
//	uvarint Index, uvarint Term, byte Type
//	uvarint len(Data), Data
//	uvarint len(Extensions), Extensions
//	flags byte; if flagHasAppendedAt: varint AppendedAt.UnixNano()
//
// A zero AppendedAt is flagged rather than encoded because the zero
// time.Time has no UnixNano representation. Go's raft encodes logs with
// msgpack; this is smaller and cheaper, and the store is not meant to be
// shared with other raft log stores.
func encodeLog(l *raft.Log) []byte {
	n := 1 + 2*binary.MaxVarintLen64 + 1 +
		binary.MaxVarintLen64 + len(l.Data) +
		binary.MaxVarintLen64 + len(l.Extensions) +
		1 + binary.MaxVarintLen64
	b := make([]byte, 0, n)
	b = append(b, logCodecVersion)
	b = binary.AppendUvarint(b, l.Index)
	b = binary.AppendUvarint(b, l.Term)
	b = append(b, byte(l.Type))
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	b = append(b, l.Extensions...)
	if l.AppendedAt.IsZero() {
		b = append(b, 0)
	} else {
		b = append(b, flagHasAppendedAt)
		b = binary.AppendVarint(b, l.AppendedAt.UnixNano())
	}
	return b
}

// errCorruptLog is wrapped by every decodeLog error.
var errCorruptLog = fmt.Errorf("%w: log entry", ErrCorrupt)

// decodeLog decodes b (as written by encodeLog) into l. It never panics:
// every length and varint is bounds-checked, and it returns an error
// wrapping errCorruptLog instead. Data and Extensions are copied, so l does
// not alias b (Badger's value buffers are only valid inside the
// transaction). l is written only on success.
func decodeLog(b []byte, l *raft.Log) error {
	d := logDecoder{buf: b}
	if v := d.byte("version"); d.err == nil && v != logCodecVersion {
		return fmt.Errorf("%w: unknown version %d", errCorruptLog, v)
	}
	var out raft.Log
	out.Index = d.uvarint("index")
	out.Term = d.uvarint("term")
	out.Type = raft.LogType(d.byte("type"))
	out.Data = d.bytes("data")
	out.Extensions = d.bytes("extensions")
	flags := d.byte("flags")
	if d.err == nil && flags&^knownFlags != 0 {
		return fmt.Errorf("%w: unknown flags %#x", errCorruptLog, flags)
	}
	if flags&flagHasAppendedAt != 0 {
		ns := d.varint("appended_at")
		if d.err == nil {
			out.AppendedAt = time.Unix(0, ns)
		}
	}
	if d.err != nil {
		return d.err
	}
	if len(d.buf) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errCorruptLog, len(d.buf))
	}
	*l = out
	return nil
}

// logDecoder consumes b front to back; after the first error every read
// returns a zero value and err keeps the first error.
type logDecoder struct {
	buf []byte
	err error
}

func (d *logDecoder) fail(field, why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s: %s", errCorruptLog, field, why)
	}
}

func (d *logDecoder) byte(field string) byte {
	if d.err != nil {
		return 0
	}
	if len(d.buf) < 1 {
		d.fail(field, "truncated")
		return 0
	}
	v := d.buf[0]
	d.buf = d.buf[1:]
	return v
}

func (d *logDecoder) uvarint(field string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.buf)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

func (d *logDecoder) varint(field string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.buf)
	if n <= 0 {
		d.fail(field, "bad varint")
		return 0
	}
	d.buf = d.buf[n:]
	return v
}

// bytes reads a length-prefixed byte string, returning nil for length 0.
func (d *logDecoder) bytes(field string) []byte {
	n := d.uvarint(field + " length")
	if d.err != nil || n == 0 {
		return nil
	}
	// Compare as uint64 so a huge corrupt length cannot overflow int.
	if n > uint64(len(d.buf)) {
		d.fail(field, fmt.Sprintf("length %d exceeds remaining %d bytes", n, len(d.buf)))
		return nil
	}
	v := make([]byte, n)
	copy(v, d.buf)
	d.buf = d.buf[n:]
	return v
}

// verifyLog reads every entry of the log, and every value of the stable
// store, once as the store opens: Badger checks each block and value it
// reads against its checksum, each entry must decode and carry the index
// it is stored under, and the log must have no hole. Raft panics on its
// own goroutines when a read of its log fails (processLogs), where nothing
// can recover; found here, the damage makes the node refuse to start
// instead. The log is short (raft drops it below each snapshot), so this
// costs little.
func (s *RaftStore) verifyLog(dir string) (err error) {
	defer recoverPanic(dir, "reading the log", s.logger, &err)
	first, last := s.first.Load(), s.last.Load()
	next := first
	err = s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{logPrefix}})
		defer it.Close()
		var l raft.Log
		for it.Seek(logKey(first)); it.Valid(); it.Next() {
			item := it.Item()
			k := item.Key()
			if len(k) != logKeyLen {
				return fmt.Errorf("%w: log key %x", ErrCorrupt, k)
			}
			idx := logKeyIndex(k)
			if idx != next {
				return fmt.Errorf("%w: the log has no entry %d (the next is %d)", ErrCorrupt, next, idx)
			}
			if err := itemValue(item, func(v []byte) error { return decodeLog(v, &l) }); err != nil {
				return fmt.Errorf("entry %d: %w", idx, err)
			}
			if l.Index != idx {
				return fmt.Errorf("%w: entry %d is stored under index %d", ErrCorrupt, l.Index, idx)
			}
			next++
		}
		if first != 0 && next != last+1 {
			return fmt.Errorf("%w: the log ends at %d, not at its last index %d", ErrCorrupt, next-1, last)
		}
		st := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{stablePrefix}})
		defer st.Close()
		for st.Rewind(); st.Valid(); st.Next() {
			if err := itemValue(st.Item(), func([]byte) error { return nil }); err != nil {
				return fmt.Errorf("stable key %q: %w", st.Item().Key(), err)
			}
		}
		return nil
	})
	if err != nil && CorruptPath(err) == "" && errors.Is(err, ErrCorrupt) {
		err = &CorruptError{Path: dir, Err: err}
	}
	return err
}
