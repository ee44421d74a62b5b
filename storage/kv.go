package storage

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/ristretto/v2/z"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/storage/diskspace"
)

// Key space of the state database. User keys and our own bookkeeping must
// never collide, so each lives under its own first byte.
const (
	userPrefix = 'k'
	metaPrefix = 'm'
	// revPrefix keys the revision index: revPrefix, revision (8 bytes big
	// endian), user key -> the kind of change. It is what watches replay
	// history from, in revision order.
	revPrefix = 'r'
	// leasePrefix keys lease records: leasePrefix, id -> granted TTL.
	leasePrefix = 'l'
	// attachPrefix keys lease attachments: attachPrefix, id, user key ->
	// nothing. Revoking a lease deletes exactly these keys.
	attachPrefix = 'L'
)

var (
	metaApplied   = []byte{metaPrefix, 'a'}
	metaCompacted = []byte{metaPrefix, 'c'}
)

// valueFormat is the first byte of every stored value, so that a later
// release can change the encoding and still read old data. Format 1 had no
// lease; format 2 adds it.
const (
	valueFormatV1 = 1
	valueFormat   = 2
)

var (
	// ErrFutureRevision is returned for a read at a revision the store has not
	// reached yet.
	ErrFutureRevision = errors.New("revision is newer than the store")
	// ErrCompacted is returned for a read below the compacted revision.
	ErrCompacted = errors.New("revision has been compacted")
)

// KeyValue is one key as it was at some revision.
type KeyValue struct {
	Key            []byte
	Value          []byte
	CreateRevision int64
	ModRevision    int64
	Version        int64
	Lease          int64
}

// RangeOptions bound and shape a range read.
type RangeOptions struct {
	// Limit is the most pairs returned; 0 means no limit.
	Limit int64
	// MaxBytes stops the page once keys and values add up to this many
	// bytes (at least one pair is always returned); 0 means no limit.
	MaxBytes int
	KeysOnly bool
	// CountOnly returns only Count.
	CountOnly bool
}

// RangeResult is one page of a range.
type RangeResult struct {
	KVs []KeyValue
	// More is true when pairs past the page exist in the range.
	More bool
	// Count is the number of pairs in the whole range.
	Count int64
}

// KV is the key-value state machine data: every key with its history, kept
// in Badger's managed mode so that a key's version timestamp is the
// revision (raft index) that wrote it. Reading at revision R is a Badger read
// at timestamp R, which gives past reads and snapshot isolation for free.
//
// The database runs with SyncWrites off: the raft log is the durability
// point. The applied index is written right after the data of each batch
// (never before it: see Batch.Commit), and a replayed entry is evaluated
// against the state as of its own index minus one, so applying an entry
// twice writes exactly the same versions.
type KV struct {
	db        *badger.DB
	dir       string
	logger    *slog.Logger
	applied   atomic.Uint64
	compacted atomic.Uint64
	hub       hub
	// metas spares puts a Badger lookup of the version they replace.
	metas *metaCache
	// compactMu runs one physical compaction at a time.
	compactMu sync.Mutex
	// durable is the applied index of the last checkpoint (checkpoint.go),
	// replayTo the index a replay after an unclean reboot must pass (0:
	// none running). checkpointMu runs one checkpoint at a time.
	durable      atomic.Uint64
	replayTo     atomic.Uint64
	checkpointMu sync.Mutex
	// discardTs is what Badger was last told it may discard below.
	discardTs atomic.Uint64
	// space, when set, keeps value log GC and flattening from taking the
	// space Badger may need (diskspace); size sizes Badger's files and opts
	// are the Badger options.
	space *diskspace.Guard
	size  Sizing
	opts  badger.Options
	// files syncs Badger's files for checkpoints (nil: Badger's Sync).
	files   *walSyncer
	bg      sync.WaitGroup
	closing atomic.Bool

	// readFailed is the last value Badger said it could not read
	// (badgerLogger), for the error that names the file.
	readFailed atomic.Pointer[string]
	// onCorrupt hears once of damage found while the store runs (see
	// OnCorrupt); reported says it has.
	onCorrupt atomic.Pointer[func(error)]
	reported  atomic.Bool

	// usage is the state's logical size and usageAdded what commits added
	// to it in all (usage.go).
	usage      atomic.Int64
	usageAdded atomic.Int64

	// restoring keeps reads out while Restore replaces the whole state:
	// between its drop and its load a read would see a store that is empty
	// or half loaded, which no revision ever was.
	restoring sync.RWMutex

	// mu guards waiters.
	mu      sync.Mutex
	waiters []applyWaiter
}

type applyWaiter struct {
	index uint64
	ch    chan struct{}
}

// OpenKV opens (creating) the state database in dir. A store found
// damaged (doc.go) fails with a CorruptError naming the file.
func OpenKV(dir string, logger *slog.Logger, o Options) (*KV, error) {
	if logger == nil {
		logger = slog.Default()
	}
	s := &KV{dir: dir, logger: logger, metas: newMetaCache(metaCacheMaxKeys), space: o.Guard, size: o.Sizing.orDefault()}
	s.hub.init(s)
	if err := s.open(); err != nil {
		return nil, fmt.Errorf("open kv store %s: %w", dir, err)
	}
	if o.Guard != nil {
		o.Guard.AddReserve(s.reserve)
		o.Guard.Watch(dir)
	}
	s.recountInBackground()
	return s, nil
}

// options are the Badger options of the state database.
func (s *KV) options() badger.Options {
	opts := badgerOptions(s.dir, s.logger).
		WithMemTableSize(s.size.StateMemTable).
		WithValueLogFileSize(s.size.StateValueLog).
		WithBlockCacheSize(s.size.BlockCache).
		WithIndexCacheSize(s.size.IndexCache).
		WithSyncWrites(false).
		// No transactions here check conflicts (writes are write batches at
		// chosen versions), and with detection on Badger asserts that no
		// write lands at or below the discard timestamp, which compaction
		// does on purpose.
		WithDetectConflicts(false).
		// Only versions at or below the discard timestamp count, and it
		// stays 0 until the first compaction: until then every version is
		// kept. After it, the newest version at or below it survives.
		WithNumVersionsToKeep(1).
		// Values of 64 bytes and more go to the value log, leaving small
		// pointers in the LSM tree: every version of every key stays there
		// until compaction, and Badger's compactions rewrite it again and
		// again (with values inline, they cost more than all else a put
		// does once the history grows). Reads follow one pointer more.
		WithValueThreshold(64)
	l := opts.Logger.(badgerLogger)
	l.readFailed = func(msg string) { s.readFailed.Store(&msg) }
	return opts.WithLogger(l)
}

// open opens the database in s.dir, checks it (verify.go) and loads the
// store's bookkeeping into s.
func (s *KV) open() (err error) {
	if err := beginOpen(s.dir); err != nil {
		return err
	}
	defer func() {
		if merr := endOpen(s.dir); err == nil && merr != nil {
			s.files.close()
			s.db.Close()
			err = merr
		}
	}()
	opts := s.options()
	if err := verifyFiles(s.dir, opts, s.logger); err != nil {
		return err
	}
	if err := checkDamaged(s.dir); err != nil {
		return err
	}
	rebooted, err := rebootedSinceUnclean(s.dir)
	if err != nil {
		return err
	}
	if err := checkLogs(s.dir, rebooted); err != nil {
		return err
	}
	checkpoint, _, err := readIndexFile(s.dir, checkpointFile)
	if err != nil {
		return err
	}
	replayTo, _, err := readIndexFile(s.dir, replayFile)
	if err != nil {
		return err
	}
	db, err := openBadger("state", s.dir, s.logger, func() (*badger.DB, error) { return badger.OpenManaged(opts) })
	if err != nil {
		return err
	}
	s.db, s.opts = db, opts
	fail := func(err error) error {
		s.files.close()
		s.files = nil
		db.Close()
		return keepDamage(s.dir, err)
	}
	if rebooted {
		if replayTo, err = s.afterUncleanReboot(checkpoint, replayTo); err != nil {
			return fail(err)
		}
	}
	if err := markUnclean(s.dir); err != nil {
		return fail(err)
	}
	if ownSync {
		if s.files, err = openWALSyncer(s.dir); err != nil {
			return fail(err)
		}
	}
	s.durable.Store(checkpoint)
	// What the store holds above the checkpoint is not trusted until a
	// replay has rewritten it: start from the checkpoint.
	readAt := uint64(math.MaxUint64)
	if replayTo > checkpoint {
		s.replayTo.Store(replayTo)
		readAt = checkpoint
		s.applied.Store(checkpoint)
	} else if err := s.loadApplied(); err != nil {
		return fail(err)
	} else if a := s.applied.Load(); a < checkpoint {
		// Its files were synced up to the checkpoint: something lost
		// them (a damaged manifest or memtable log that Badger cut, a
		// deleted file). Raft's log no longer holds what is missing.
		return fail(corruptf(s.dir, "the state is at index %d, behind its checkpoint at %d (%s): it lost data it had synced", a, checkpoint, checkpointFile))
	}
	if err := s.loadCompacted(readAt); err != nil {
		return fail(err)
	}
	s.hub.published = s.applied.Load()
	return nil
}

// openBadger opens a Badger database with open, its goroutines labelled
// db=name in profiles (openLabeled), a panic on this goroutine and an
// error about damaged files both returned as a CorruptError.
func openBadger(name, dir string, logger *slog.Logger, open func() (*badger.DB, error)) (db *badger.DB, err error) {
	defer recoverPanic(dir, "opening", logger, &err)
	db, err = openLabeled(name, open)
	return db, badgerCorrupt(dir, err)
}

// reserve is what the store may write without asking (reserveOf); 0 once
// closed.
func (s *KV) reserve() uint64 {
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	if s.closing.Load() {
		return 0
	}
	return reserveOf(s.db, s.opts)
}

// afterUncleanReboot prepares a store that was open when the machine went
// down (checkpoint.go): with a checkpoint, it will roll back to it and
// replay up to the highest index it may hold, which it returns; without
// one (a store that never took one), it starts empty, to be rebuilt from
// the raft snapshot and log.
func (s *KV) afterUncleanReboot(checkpoint, replayTo uint64) (uint64, error) {
	if checkpoint == 0 {
		s.logger.Warn("the machine restarted while the kv store was open: starting it empty, to be rebuilt from the raft snapshot and log", "dir", s.dir)
		if err := s.db.DropAll(); err != nil {
			return 0, fmt.Errorf("drop state after an unclean reboot: %w", err)
		}
		if err := removeDurably(s.dir, replayFile); err != nil {
			return 0, err
		}
		return 0, nil
	}
	held, err := s.readMeta(metaApplied, "applied index", math.MaxUint64)
	if err != nil {
		return 0, err
	}
	replayTo = max(replayTo, held)
	s.logger.Warn("the machine restarted while the kv store was open: rolling it back to its last checkpoint, raft replays the rest",
		"dir", s.dir, "checkpoint", checkpoint, "replay_to", replayTo)
	if replayTo > checkpoint {
		if err := writeIndexFile(s.dir, replayFile, replayTo); err != nil {
			return 0, err
		}
	}
	return replayTo, nil
}

func (s *KV) loadApplied() error {
	idx, err := s.readMeta(metaApplied, "applied index", math.MaxUint64)
	if err != nil {
		return err
	}
	s.applied.Store(idx)
	return nil
}

// readMeta reads one of our 8-byte bookkeeping numbers as of readTs; 0
// when it was never written.
func (s *KV) readMeta(key []byte, what string, readTs uint64) (uint64, error) {
	txn := s.db.NewTransactionAt(readTs, false)
	defer txn.Discard()
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", what, err)
	}
	var n uint64
	err = itemValue(item, func(v []byte) error {
		if len(v) != 8 {
			return fmt.Errorf("%s: %w", what, ErrCorrupt)
		}
		n = binary.BigEndian.Uint64(v)
		return nil
	})
	return n, err
}

// Close closes the database, after any compaction running in the
// background, and a last checkpoint.
func (s *KV) Close() error {
	s.closing.Store(true)
	s.bg.Wait()
	_, cerr := s.Checkpoint()
	if err := s.files.close(); err != nil && cerr == nil {
		cerr = fmt.Errorf("close kv store: %w", err)
	}
	if err := s.db.Close(); err != nil {
		return errors.Join(cerr, fmt.Errorf("close kv store: %w", err))
	}
	if cerr != nil {
		// Leave the store marked unclean: the checkpoint did not make it.
		return cerr
	}
	return markClean(s.dir)
}

// RunGC reclaims value log space from versions compaction dropped. It
// moves the live values of a file to the newest one before deleting it,
// so it waits while free space is below the hard margin.
func (s *KV) RunGC() {
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	if err := s.space.Allow(diskspace.Critical, s.opts.ValueLogFileSize); err != nil {
		s.logger.Warn("value log GC put off", "error", err)
		return
	}
	runValueLogGC(s.db, s.logger)
}

// Reset sets the store's files aside as corrupt (SetAside: dir becomes
// dir.corrupt-<time>) and opens an empty store in their place, for Restore
// to fill; it returns where the files went. Watchers end with cause. No
// batch may be open; reads wait, and compactions running finish first.
func (s *KV) Reset(cause error) (string, error) {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	s.restoring.Lock()
	defer s.restoring.Unlock()
	s.hub.cancelAll(cause)
	s.files.close()
	s.files = nil
	// A store that panicked may hold a lock of its own for good: its
	// files are set aside all the same, and its memory is lost until the
	// process ends.
	closed := make(chan error, 1)
	go func(db *badger.DB) { closed <- db.Close() }(s.db)
	select {
	case err := <-closed:
		if err != nil {
			s.logger.Warn("closing the corrupt kv store", "dir", s.dir, "error", err)
		}
	case <-time.After(resetCloseWait):
		s.logger.Error("the corrupt kv store did not close; setting its files aside open", "dir", s.dir, "waited", resetCloseWait)
	}
	aside, err := SetAside(s.dir)
	if err != nil {
		return "", err
	}
	s.metas.clear()
	s.applied.Store(0)
	s.compacted.Store(0)
	s.durable.Store(0)
	s.replayTo.Store(0)
	s.discardTs.Store(0)
	s.readFailed.Store(nil)
	if err := s.open(); err != nil {
		return aside, fmt.Errorf("open an empty kv store %s: %w", s.dir, err)
	}
	s.usage.Store(0)
	s.reported.Store(false)
	return aside, nil
}

// resetCloseWait bounds how long Reset waits for a damaged store to close.
var resetCloseWait = 10 * time.Second

// Dir is the directory the store keeps its files in.
func (s *KV) Dir() string { return s.dir }

// AppliedIndex is the raft index of the last entry applied: the store's
// current revision.
func (s *KV) AppliedIndex() uint64 { return s.applied.Load() }

// WaitApplied returns a channel closed once the applied index reaches index.
// The channel is already closed when it has.
func (s *KV) WaitApplied(index uint64) <-chan struct{} {
	ch := make(chan struct{})
	if s.applied.Load() >= index {
		close(ch)
		return ch
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// Check again under the lock: setApplied notifies under it too.
	if s.applied.Load() >= index {
		close(ch)
		return ch
	}
	s.waiters = append(s.waiters, applyWaiter{index: index, ch: ch})
	return ch
}

func (s *KV) setApplied(index uint64) {
	s.applied.Store(index)
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := s.waiters[:0]
	for _, w := range s.waiters {
		if w.index <= index {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	// Drop references held by the tail of the reused array.
	clear(s.waiters[len(kept):])
	s.waiters = kept
}

// Get reads one key at revision rev (0: the latest).
func (s *KV) Get(rev uint64, key []byte) (_ KeyValue, _ bool, err error) {
	defer s.guard("get", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	rs, err := s.readTs(rev)
	if err != nil {
		return KeyValue{}, false, err
	}
	txn := s.db.NewTransactionAt(rs, false)
	defer txn.Discard()
	return getAt(txn, key)
}

// Range reads the keys in [start, end) at revision rev (0: the latest). An
// empty end reads the single key start; see RangeEnd.
func (s *KV) Range(rev uint64, start, end []byte, opts RangeOptions) (_ RangeResult, err error) {
	defer s.guard("range", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	rs, err := s.readTs(rev)
	if err != nil {
		return RangeResult{}, err
	}
	txn := s.db.NewTransactionAt(rs, false)
	defer txn.Discard()
	return rangeAt(txn, nil, start, end, opts)
}

func (s *KV) readTs(rev uint64) (uint64, error) {
	applied := s.applied.Load()
	if rev == 0 {
		return applied, nil
	}
	if rev > applied {
		return 0, fmt.Errorf("read at revision %d, store is at %d: %w", rev, applied, ErrFutureRevision)
	}
	if c := s.compacted.Load(); rev < c {
		return 0, compactedErr(rev, c)
	}
	return rev, nil
}

// CompactedError is a read or watch below the compacted revision; it
// matches ErrCompacted.
type CompactedError struct {
	Rev, Compacted uint64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("revision %d: %v; the oldest revision left is %d", e.Rev, ErrCompacted, e.Compacted)
}

// Is makes errors.Is(err, ErrCompacted) hold.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

func compactedErr(rev, compacted uint64) error {
	return &CompactedError{Rev: rev, Compacted: compacted}
}

// CompactedRevision is the oldest revision still readable; 0 when nothing
// was ever compacted.
func (s *KV) CompactedRevision() uint64 { return s.compacted.Load() }

// PrefixEnd returns the end of the range of keys starting with prefix: the
// prefix with its last byte below 0xff incremented, or "\x00" (no end) when
// there is none.
func PrefixEnd(prefix []byte) []byte {
	end := bytes.Clone(prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// MaxKeyBytes is the longest user key the store can hold: Badger refuses
// keys over 65,000 bytes, and the longest of our Badger keys is a user key
// behind a 9-byte prefix (revKey, attachKey). Longer keys must be refused
// before a write reaches the store, since a refused write stops the batch.
const MaxKeyBytes = 65000 - 9

// userKey returns the Badger key of a user key.
func userKey(key []byte) []byte {
	k := make([]byte, 1+len(key))
	k[0] = userPrefix
	copy(k[1:], key)
	return k
}

// rangeBounds turns a user range into Badger keys: [lo, hi), hi nil for no
// upper bound within the user key space.
func rangeBounds(start, end []byte) (lo, hi []byte) {
	lo = userKey(start)
	switch {
	case len(end) == 0:
		// The single key: everything below start+"\x00".
		hi = append(bytes.Clone(lo), 0)
	case len(end) == 1 && end[0] == 0:
		hi = []byte{userPrefix + 1}
	default:
		hi = userKey(end)
	}
	return lo, hi
}

func encodeValue(create, version, lease int64, value []byte) []byte {
	buf := make([]byte, 0, 1+3*binary.MaxVarintLen64+len(value))
	buf = append(buf, valueFormat)
	buf = binary.AppendUvarint(buf, uint64(create))
	buf = binary.AppendUvarint(buf, uint64(version))
	buf = binary.AppendUvarint(buf, uint64(lease))
	return append(buf, value...)
}

// decodeValue parses a stored value; the returned value aliases v.
func decodeValue(v []byte) (create, version, lease int64, value []byte, err error) {
	if len(v) == 0 || (v[0] != valueFormat && v[0] != valueFormatV1) {
		return 0, 0, 0, nil, ErrCorrupt
	}
	format := v[0]
	v = v[1:]
	fields := [3]uint64{}
	nf := 3
	if format == valueFormatV1 {
		nf = 2
	}
	for i := range nf {
		x, n := binary.Uvarint(v)
		if n <= 0 {
			return 0, 0, 0, nil, ErrCorrupt
		}
		fields[i] = x
		v = v[n:]
	}
	return int64(fields[0]), int64(fields[1]), int64(fields[2]), v, nil
}

func itemKV(item *badger.Item, keysOnly bool) (KeyValue, error) {
	kv := KeyValue{
		Key:         item.KeyCopy(nil)[1:],
		ModRevision: int64(item.Version()),
	}
	err := itemValue(item, func(v []byte) error {
		c, ver, lease, val, err := decodeValue(v)
		if err != nil {
			return err
		}
		kv.CreateRevision, kv.Version, kv.Lease = c, ver, lease
		if !keysOnly {
			kv.Value = bytes.Clone(val)
		}
		return nil
	})
	if err != nil {
		return KeyValue{}, fmt.Errorf("key %q: %w", kv.Key, err)
	}
	return kv, nil
}

func getAt(txn *badger.Txn, key []byte) (KeyValue, bool, error) {
	item, err := txn.Get(userKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return KeyValue{}, false, nil
	}
	if err != nil {
		return KeyValue{}, false, fmt.Errorf("get %q: %w", key, err)
	}
	kv, err := itemKV(item, false)
	return kv, err == nil, err
}

// rangeAt reads [start, end) from txn, with the pending writes of overlay
// (sorted by key, nil Value meaning deleted) taking precedence.
func rangeAt(txn *badger.Txn, overlay []pendingKV, start, end []byte, opts RangeOptions) (RangeResult, error) {
	lo, hi := rangeBounds(start, end)
	it := txn.NewIterator(badger.IteratorOptions{
		// Values are needed for the counters even in keys-only reads, but
		// not for a count.
		PrefetchValues: !opts.CountOnly,
		PrefetchSize:   64,
		Prefix:         []byte{userPrefix},
	})
	defer it.Close()
	it.Seek(lo)

	var res RangeResult
	size := 0
	full := false
	emit := func(get func() (KeyValue, error)) error {
		res.Count++
		if opts.CountOnly {
			return nil
		}
		if full {
			res.More = true
			return nil
		}
		kv, err := get()
		if err != nil {
			return err
		}
		res.KVs = append(res.KVs, kv)
		size += len(kv.Key) + len(kv.Value)
		if (opts.Limit > 0 && int64(len(res.KVs)) >= opts.Limit) || (opts.MaxBytes > 0 && size >= opts.MaxBytes) {
			full = true
		}
		return nil
	}
	oi := 0
	for {
		var bk []byte
		if it.Valid() {
			bk = it.Item().Key()
			if bytes.Compare(bk, hi) >= 0 {
				bk = nil
			}
		}
		var ok []byte
		if oi < len(overlay) {
			ok = overlay[oi].bkey
		}
		if bk == nil && ok == nil {
			break
		}
		switch c := compareNilLast(bk, ok); {
		case c < 0:
			item := it.Item()
			if err := emit(func() (KeyValue, error) { return itemKV(item, opts.KeysOnly) }); err != nil {
				return RangeResult{}, err
			}
			it.Next()
		default:
			if c == 0 {
				it.Next()
			}
			p := overlay[oi]
			oi++
			if p.deleted {
				continue
			}
			if err := emit(func() (KeyValue, error) { return p.keyValue(opts.KeysOnly), nil }); err != nil {
				return RangeResult{}, err
			}
		}
	}
	return res, nil
}

// compareNilLast compares Badger keys where nil means "past the end".
func compareNilLast(a, b []byte) int {
	switch {
	case a == nil:
		return 1
	case b == nil:
		return -1
	}
	return bytes.Compare(a, b)
}

// SnapshotStats counts what a snapshot holds.
type SnapshotStats struct {
	// Keys is how many user keys exist at the snapshot's revision.
	Keys int64
	// Entries is how many stored records it holds: every version of every
	// key, delete markers, the revision index, leases and bookkeeping.
	Entries int64
	// Compacted is the compacted revision as of the snapshot.
	Compacted uint64
}

// Snapshot writes every version of every key up to revision rev to w, in
// Badger's backup format (a run of length-prefixed pb.KVList messages), which
// Restore loads.
func (s *KV) Snapshot(w io.Writer, rev uint64) error {
	_, err := s.SnapshotCounted(w, rev)
	return err
}

// SnapshotCounted is Snapshot, and says what it wrote.
func (s *KV) SnapshotCounted(w io.Writer, rev uint64) (stats SnapshotStats, err error) {
	defer s.guard("snapshot", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	stats.Compacted = s.compacted.Load()
	if rev == 0 {
		// Nothing is ever written at revision 0, and Badger's stream
		// takes a read timestamp of 0 as "unset" and panics in managed mode
		// ("ReadTs should not be retrieved for managed DB"). The snapshot of
		// an empty store is empty: Restore loads nothing from it.
		return stats, nil
	}
	// Every version, delete markers included (doc.go: invariants): not
	// Badger's Stream.Backup, which stops at a key's newest delete marker
	// and leaves out every version below it, so that a store restored from
	// it answers reads at past revisions differently from one that applied
	// the log.
	txn := s.db.NewTransactionAt(rev, false)
	defer txn.Discard()
	// No value prefetching: Badger fetches each prefetched value in a
	// goroutine of its own, which costs more than the read itself
	// (bench/RESULTS.md). Values are read in line, from the mapped value
	// log.
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
	defer it.Close()

	// One list, its entries and one arena for their keys and values are
	// reused from flush to flush: Marshal copies them out.
	const maxEntries, maxBytes = 4096, 4 << 20
	list := &pb.KVList{}
	entries := make([]pb.KV, 0, maxEntries)
	arena := make([]byte, 0, maxBytes+64<<10)
	var buf []byte
	flush := func() error {
		if len(list.Kv) == 0 {
			return nil
		}
		// Length prefix, then the list, in one reused buffer.
		var err error
		buf, err = proto.MarshalOptions{}.MarshalAppend(append(buf[:0], make([]byte, 8)...), list)
		if err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(buf, uint64(len(buf)-8))
		if _, err := w.Write(buf); err != nil {
			return err
		}
		list.Kv, entries, arena = list.Kv[:0], entries[:0], arena[:0]
		return nil
	}
	// last is the previous record's key: versions come newest first, so
	// a user key exists at rev when its first record is not a delete.
	var last []byte
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		// Slices of the arena stay valid when an append moves it: the old
		// array is only read from then on.
		start := len(arena)
		arena = append(arena, item.Key()...)
		entries = append(entries, pb.KV{Key: arena[start:len(arena):len(arena)], Version: item.Version()})
		kv := &entries[len(entries)-1]
		stats.Entries++
		first := !bytes.Equal(kv.Key, last)
		last = append(last[:0], kv.Key...)
		if item.IsDeletedOrExpired() {
			kv.Meta = deleteMeta
		} else {
			if first && len(kv.Key) > 0 && kv.Key[0] == userPrefix {
				stats.Keys++
			}
			err := itemValue(item, func(v []byte) error {
				start := len(arena)
				arena = append(arena, v...)
				kv.Value = arena[start:len(arena):len(arena)]
				return nil
			})
			if err != nil {
				return stats, fmt.Errorf("snapshot at %d: key %q: %w", rev, kv.Key, err)
			}
		}
		list.Kv = append(list.Kv, kv)
		if len(arena) >= maxBytes || len(list.Kv) >= maxEntries {
			if err := flush(); err != nil {
				return stats, fmt.Errorf("snapshot at %d: %w", rev, err)
			}
		}
	}
	if err := flush(); err != nil {
		return stats, fmt.Errorf("snapshot at %d: %w", rev, err)
	}
	return stats, nil
}

// badgerBitDelete is Badger's meta bit of a delete marker (bitDelete in
// badger's value.go); DB.Load writes an entry carrying it as a deletion.
const badgerBitDelete = 1 << 0

// deleteMeta is the Meta of a delete marker in a snapshot; only read.
var deleteMeta = []byte{badgerBitDelete}

// Restore replaces the whole state with a snapshot written by Snapshot. No
// other call may run meanwhile.
func (s *KV) Restore(r io.Reader) error {
	return s.restore(func() error {
		if err := s.db.DropAll(); err != nil {
			return fmt.Errorf("drop old state: %w", err)
		}
		s.files.valueLogDropped()
		if err := s.db.Load(r, 16); err != nil {
			return fmt.Errorf("load: %w", err)
		}
		return nil
	})
}

// RestoreSorted is Restore for a store that nothing else uses yet (kvd
// restore prepares one): it writes the snapshot's records straight into
// tables with Badger's StreamWriter, which needs them in Badger's order,
// the order Snapshot writes them in, rather than through memtables and
// compactions as Load does (a million keys: several times faster).
func (s *KV) RestoreSorted(r io.Reader) error {
	return s.restore(func() error {
		sw := s.db.NewStreamWriter()
		if err := sw.Prepare(); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
		s.files.valueLogDropped()
		if err := streamSnapshot(r, sw); err != nil {
			sw.Cancel()
			return err
		}
		if err := sw.Flush(); err != nil {
			return fmt.Errorf("flush: %w", err)
		}
		return nil
	})
}

// streamSnapshot feeds the records of a snapshot to sw.
func streamSnapshot(r io.Reader, sw *badger.StreamWriter) error {
	br := bufio.NewReaderSize(r, 1<<20)
	var raw []byte
	buf := z.NewBuffer(8<<20, "kv.RestoreSorted")
	defer buf.Release()
	for {
		var size [8]byte
		if _, err := io.ReadFull(br, size[:]); err == io.EOF {
			break
		} else if err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		n := binary.LittleEndian.Uint64(size[:])
		if n > 1<<30 {
			return fmt.Errorf("read snapshot: a list of %d bytes: %w", n, ErrCorrupt)
		}
		if uint64(cap(raw)) < n {
			raw = make([]byte, n)
		}
		raw = raw[:n]
		if _, err := io.ReadFull(br, raw); err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		var list pb.KVList
		if err := proto.Unmarshal(raw, &list); err != nil {
			return fmt.Errorf("read snapshot: %w", err)
		}
		for _, kv := range list.Kv {
			badger.KVToBuffer(kv, buf)
		}
		if buf.LenNoPadding() >= 4<<20 {
			if err := sw.Write(buf); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			buf.Reset()
		}
	}
	if err := sw.Write(buf); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	return nil
}

// restore replaces the state with what load writes into an emptied store.
func (s *KV) restore(load func() error) error {
	s.restoring.Lock()
	defer s.restoring.Unlock()
	s.metas.clear()
	// From the drop on, what the store holds is not what any checkpoint
	// said: a reboot before the new one starts it empty (to be restored
	// again from the raft snapshot, which is saved before it is restored).
	if err := removeDurably(s.dir, checkpointFile); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := removeDurably(s.dir, replayFile); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	s.durable.Store(0)
	s.replayTo.Store(0)
	// A restore that does not finish leaves a store that may look whole
	// (the applied index comes in the copy before the revision index):
	// until it has, the store is marked damaged.
	if err := markDamaged(s.dir, errors.New("a restore from a copy of the state did not finish")); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := load(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := s.loadApplied(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := s.loadCompacted(math.MaxUint64); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if _, err := s.checkpointLocked(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	if err := removeDurably(s.dir, damageMarkerFile); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	s.setApplied(s.applied.Load())
	// Watchers missed the entries the snapshot covers: they catch up from
	// the revision index the snapshot carried.
	s.hub.restored(s.applied.Load())
	s.recountInBackground()
	return nil
}

// errUnreadable is a value the storage engine could not read.
var errUnreadable = fmt.Errorf("%w: the storage engine could not read the value (its log says why)", ErrCorrupt)

// itemValue calls fn with the value of item. Badger does not return the
// error of a value it cannot read from its value log (a checksum that does
// not match, a file cut short): it logs it and hands over no value. Only
// values of valueThreshold bytes and more go there, so no value where the
// item says there is one is that error.
func itemValue(item *badger.Item, fn func([]byte) error) error {
	return item.Value(func(v []byte) error {
		if len(v) == 0 && item.ValueSize() > 0 {
			return errUnreadable
		}
		return fn(v)
	})
}

// OnCorrupt sets fn to hear of damage found while the store runs: a value
// the storage engine could not read, stored bytes that do not decode, a
// panic inside the storage engine. fn is called once, on the goroutine
// that found it, and must not wait for reads of this store; Reset arms it
// again. Every read that meets the damage fails with ErrCorrupt
// meanwhile.
func (s *KV) OnCorrupt(fn func(error)) { s.onCorrupt.Store(&fn) }

// guard is deferred by the store's reads: a panic of the storage engine
// becomes a CorruptError, and damage is reported (corrupted).
func (s *KV) guard(what string, errp *error) {
	if r := recover(); r != nil {
		s.logger.Error("the storage engine panicked", "dir", s.dir, "during", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		*errp = &CorruptError{Path: s.dir, Err: fmt.Errorf("%s: the storage engine panicked: %v", what, r)}
	}
	*errp = s.corrupted(*errp)
}

// Corrupted returns err naming the damaged file when it is damage
// (ErrCorrupt), and then reports it to OnCorrupt's function unless that
// was done. Callers of Batch pass its errors through it.
func (s *KV) Corrupted(err error) error { return s.corrupted(err) }

// corrupted is Corrupted.
func (s *KV) corrupted(err error) error {
	if err == nil || !errors.Is(err, ErrCorrupt) {
		return err
	}
	if CorruptPath(err) == "" {
		path := s.dir
		if msg := s.readFailed.Swap(nil); msg != nil {
			path = damagedFile(s.dir, *msg)
			err = fmt.Errorf("%w; the storage engine said: %s", err, *msg)
		}
		err = &CorruptError{Path: path, Err: err}
	}
	if s.reported.CompareAndSwap(false, true) {
		s.logger.Error("the key-value state is corrupt", "file", CorruptPath(err), "error", err)
		// Never served again, also after a restart before it is rebuilt.
		if merr := markDamaged(s.dir, err); merr != nil {
			s.logger.Error("cannot mark the kv store corrupt", "dir", s.dir, "error", merr)
		}
		if fn := s.onCorrupt.Load(); fn != nil {
			(*fn)(err)
		}
	}
	return err
}
