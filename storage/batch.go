package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// pendingKV is a write of the open batch that Badger may not show yet.
type pendingKV struct {
	bkey    []byte // Badger key
	value   []byte
	create  int64
	mod     int64
	version int64
	deleted bool
}

func (p *pendingKV) keyValue(keysOnly bool) KeyValue {
	kv := KeyValue{
		Key:            bytes.Clone(p.bkey[1:]),
		CreateRevision: p.create,
		ModRevision:    p.mod,
		Version:        p.version,
	}
	if !keysOnly {
		kv.Value = bytes.Clone(p.value)
	}
	return kv
}

// Batch applies a run of raft entries to the store in one Badger write
// batch. Each entry's writes carry its own index as their version. Reads
// through the batch see the state as of the current entry: the entries before
// it in this batch (kept in an overlay until they are flushed) over Badger as
// of index-1. Reading Badger at index-1, never later, is what makes replay
// after a crash exact even if part of a batch had reached the disk.
//
// A Batch is used by one goroutine, and the store has one writer at a time.
type Batch struct {
	s       *KV
	wb      *badger.WriteBatch
	overlay map[string]*pendingKV
	index   uint64
	txn     *badger.Txn // reads at index-1, opened lazily
}

// NewBatch starts a batch. Call Commit or Discard when done.
func (s *KV) NewBatch() *Batch {
	return &Batch{
		s:       s,
		wb:      s.db.NewManagedWriteBatch(),
		overlay: make(map[string]*pendingKV),
	}
}

// Begin starts the entry at index; later calls write at that revision.
// Indexes must increase.
func (b *Batch) Begin(index uint64) error {
	if index <= b.index {
		return fmt.Errorf("batch: entry %d after %d", index, b.index)
	}
	b.index = index
	if b.txn != nil {
		b.txn.Discard()
		b.txn = nil
	}
	return nil
}

func (b *Batch) readTxn() *badger.Txn {
	if b.txn == nil {
		b.txn = b.s.db.NewTransactionAt(b.index-1, false)
	}
	return b.txn
}

// Get reads one key as of the current entry.
func (b *Batch) Get(key []byte) (KeyValue, bool, error) {
	if p, ok := b.overlay[string(userKey(key))]; ok {
		if p.deleted {
			return KeyValue{}, false, nil
		}
		return p.keyValue(false), true, nil
	}
	return getAt(b.readTxn(), key)
}

// Range reads [start, end) as of the current entry.
func (b *Batch) Range(start, end []byte, opts RangeOptions) (RangeResult, error) {
	lo, hi := rangeBounds(start, end)
	var over []pendingKV
	for k, p := range b.overlay {
		if k >= string(lo) && k < string(hi) {
			over = append(over, *p)
		}
	}
	slices.SortFunc(over, func(a, b pendingKV) int { return bytes.Compare(a.bkey, b.bkey) })
	return rangeAt(b.readTxn(), over, start, end, opts)
}

// Put writes key at the current revision and returns the pair it replaced.
func (b *Batch) Put(key, value []byte) (prev KeyValue, existed bool, err error) {
	prev, existed, err = b.Get(key)
	if err != nil {
		return KeyValue{}, false, err
	}
	p := &pendingKV{
		bkey:    userKey(key),
		value:   bytes.Clone(value),
		create:  int64(b.index),
		mod:     int64(b.index),
		version: 1,
	}
	if existed {
		p.create = prev.CreateRevision
		p.version = prev.Version + 1
	}
	e := badger.NewEntry(p.bkey, encodeValue(p.create, p.version, p.value))
	if err := b.wb.SetEntryAt(e, b.index); err != nil {
		return KeyValue{}, false, fmt.Errorf("put %q at %d: %w", key, b.index, err)
	}
	b.overlay[string(p.bkey)] = p
	return prev, existed, nil
}

// DeleteRange deletes the keys in [start, end) at the current revision and
// returns how many there were, and the pairs themselves when wantPrev.
func (b *Batch) DeleteRange(start, end []byte, wantPrev bool) (int64, []KeyValue, error) {
	res, err := b.Range(start, end, RangeOptions{KeysOnly: !wantPrev})
	if err != nil {
		return 0, nil, err
	}
	for _, kv := range res.KVs {
		bkey := userKey(kv.Key)
		if err := b.wb.DeleteAt(bkey, b.index); err != nil {
			return 0, nil, fmt.Errorf("delete %q at %d: %w", kv.Key, b.index, err)
		}
		b.overlay[string(bkey)] = &pendingKV{bkey: bkey, mod: int64(b.index), deleted: true}
	}
	if !wantPrev {
		return res.Count, nil, nil
	}
	return res.Count, res.KVs, nil
}

// Commit writes the batch, then records the last entry begun as applied. A
// batch with no entry begun commits nothing.
func (b *Batch) Commit() error {
	defer b.release()
	if b.index == 0 {
		b.wb.Cancel()
		return nil
	}
	if err := b.wb.Flush(); err != nil {
		return fmt.Errorf("commit batch at %d: %w", b.index, err)
	}
	// Fix: the applied index used to go into the same write batch as the
	// data. Entries written with their own versions carry no transaction
	// markers in Badger, so its write-ahead log replays them one by one, and
	// within one commit Badger writes them in map order: a crash part way
	// through a write (or a torn log tail with SyncWrites off) could keep
	// the new applied index and lose data of the entries it covers, which
	// replay would then skip for good. Written only after the data is in,
	// the applied index never runs ahead of it; a crash in between leaves
	// data above the applied index, which replay overwrites exactly.
	var idx [8]byte
	binary.BigEndian.PutUint64(idx[:], b.index)
	wb := b.s.db.NewManagedWriteBatch()
	if err := wb.SetEntryAt(badger.NewEntry(metaApplied, idx[:]), b.index); err != nil {
		wb.Cancel()
		return fmt.Errorf("commit batch at %d: applied index: %w", b.index, err)
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("commit batch at %d: applied index: %w", b.index, err)
	}
	b.s.setApplied(b.index)
	return nil
}

// Discard drops the writes not yet flushed. Writes Badger already took may
// remain, at versions above the applied index: replay overwrites them.
func (b *Batch) Discard() {
	b.wb.Cancel()
	b.release()
}

func (b *Batch) release() {
	if b.txn != nil {
		b.txn.Discard()
		b.txn = nil
	}
	b.overlay = nil
}
