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
	lease   int64
	deleted bool
}

func (p *pendingKV) keyValue(keysOnly bool) KeyValue {
	kv := KeyValue{
		Key:            bytes.Clone(p.bkey[1:]),
		CreateRevision: p.create,
		ModRevision:    p.mod,
		Version:        p.version,
		Lease:          p.lease,
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
	// meta overlays lease records and attachments: Badger key -> value,
	// nil for deleted.
	meta   map[string][]byte
	index  uint64
	txn    *badger.Txn // reads at index-1, opened lazily
	events []Event
	// sealed counts the events of entries before the current one.
	sealed int
	// compactTo is the revision a Compact in this batch asked for, and
	// flatten whether one asked to reclaim the space at once.
	compactTo uint64
	flatten   bool
	// added is what the batch adds to the state's logical size (usage.go).
	added int64
}

// NewBatch starts a batch. Call Commit or Discard when done.
func (s *KV) NewBatch() *Batch {
	return &Batch{
		s:       s,
		wb:      s.db.NewManagedWriteBatch(),
		overlay: make(map[string]*pendingKV),
		meta:    make(map[string][]byte),
	}
}

// Begin starts the entry at index; later calls write at that revision.
// Indexes must increase.
func (b *Batch) Begin(index uint64) error {
	if index <= b.index {
		return fmt.Errorf("batch: entry %d after %d", index, b.index)
	}
	b.sealEntry()
	b.index = index
	if b.txn != nil {
		b.txn.Discard()
		b.txn = nil
	}
	return nil
}

// Revision is the revision the batch writes at: the current entry's index.
func (b *Batch) Revision() uint64 { return b.index }

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

// lookup is Get of the Badger key bkey, without the value unless
// wantValue: then the key's metadata cache can answer instead of Badger.
func (b *Batch) lookup(bkey []byte, wantValue bool) (KeyValue, bool, error) {
	key := bkey[1:]
	if p, ok := b.overlay[string(bkey)]; ok {
		if p.deleted {
			return KeyValue{}, false, nil
		}
		return p.keyValue(!wantValue), true, nil
	}
	if !wantValue {
		if m, ok := b.s.metas.get(bkey); ok {
			return KeyValue{Key: key, CreateRevision: m.create, ModRevision: m.mod, Version: m.version, Lease: m.lease}, true, nil
		}
	}
	kv, ok, err := getAt(b.readTxn(), key)
	if !wantValue {
		kv.Value = nil // the same answer as from the cache
	}
	if ok {
		// Nothing in this batch wrote the key (no overlay entry), so what
		// Badger has at index-1 is its committed state.
		b.s.metas.fill(bkey, keyMeta{create: kv.CreateRevision, mod: kv.ModRevision, version: kv.Version, lease: kv.Lease})
	}
	return kv, ok, err
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

// Put writes key at the current revision, attached to lease (0: none), and
// returns the pair it replaced, with its value only if wantPrev. The caller
// checks that the lease exists.
func (b *Batch) Put(key, value []byte, lease int64, wantPrev bool) (prev KeyValue, existed bool, err error) {
	bkey := userKey(key)
	prev, existed, err = b.lookup(bkey, wantPrev)
	if err != nil {
		return KeyValue{}, false, err
	}
	p := &pendingKV{
		bkey:    bkey,
		value:   bytes.Clone(value),
		create:  int64(b.index),
		mod:     int64(b.index),
		version: 1,
		lease:   lease,
	}
	if existed {
		p.create = prev.CreateRevision
		p.version = prev.Version + 1
	}
	e := badger.NewEntry(p.bkey, encodeValue(p.create, p.version, p.lease, p.value))
	b.added += versionBytes(len(e.Key), len(e.Value))
	if err := b.wb.SetEntryAt(e, b.index); err != nil {
		return KeyValue{}, false, fmt.Errorf("put %q at %d: %w", key, b.index, err)
	}
	if existed && prev.Lease != lease && prev.Lease != 0 {
		if err := b.setMeta(attachKey(prev.Lease, key), nil); err != nil {
			return KeyValue{}, false, err
		}
	}
	if lease != 0 && (!existed || prev.Lease != lease) {
		if err := b.setMeta(attachKey(lease, key), []byte{}); err != nil {
			return KeyValue{}, false, err
		}
	}
	b.overlay[string(p.bkey)] = p
	if err := b.logChange(key, EventPut); err != nil {
		return KeyValue{}, false, err
	}
	// The event shares the batch's copies of key and value: nothing
	// writes to them after this, and watchers only read.
	b.events = append(b.events, Event{Type: EventPut, KV: KeyValue{
		Key: p.bkey[1:], Value: p.value, CreateRevision: p.create, ModRevision: p.mod, Version: p.version, Lease: p.lease,
	}})
	return prev, existed, nil
}

// logChange writes the revision index entry of a change to key.
func (b *Batch) logChange(key []byte, t EventType) error {
	b.added += versionBytes(9+len(key), 1)
	if err := b.wb.SetEntryAt(badger.NewEntry(revKey(b.index, key), []byte{byte(t)}), b.index); err != nil {
		return fmt.Errorf("revision index %q at %d: %w", key, b.index, err)
	}
	return nil
}

// setMeta writes (value non-nil) or deletes a lease record or attachment.
func (b *Batch) setMeta(bkey, value []byte) error {
	b.added += versionBytes(len(bkey), len(value))
	var err error
	if value == nil {
		err = b.wb.DeleteAt(bkey, b.index)
	} else {
		err = b.wb.SetEntryAt(badger.NewEntry(bkey, value), b.index)
	}
	if err != nil {
		return fmt.Errorf("write %q at %d: %w", bkey, b.index, err)
	}
	b.meta[string(bkey)] = value
	return nil
}

// DeleteRange deletes the keys in [start, end) at the current revision and
// returns how many there were, and the pairs themselves when wantPrev.
func (b *Batch) DeleteRange(start, end []byte, wantPrev bool) (int64, []KeyValue, error) {
	res, err := b.Range(start, end, RangeOptions{KeysOnly: !wantPrev})
	if err != nil {
		return 0, nil, err
	}
	for _, kv := range res.KVs {
		if err := b.deleteKey(kv); err != nil {
			return 0, nil, err
		}
	}
	if !wantPrev {
		return res.Count, nil, nil
	}
	return res.Count, res.KVs, nil
}

func (b *Batch) deleteKey(kv KeyValue) error {
	bkey := userKey(kv.Key)
	b.added += versionBytes(len(bkey), 0)
	if err := b.wb.DeleteAt(bkey, b.index); err != nil {
		return fmt.Errorf("delete %q at %d: %w", kv.Key, b.index, err)
	}
	if kv.Lease != 0 {
		if err := b.setMeta(attachKey(kv.Lease, kv.Key), nil); err != nil {
			return err
		}
	}
	b.overlay[string(bkey)] = &pendingKV{bkey: bkey, mod: int64(b.index), deleted: true}
	if err := b.logChange(kv.Key, EventDelete); err != nil {
		return err
	}
	b.events = append(b.events, Event{Type: EventDelete, KV: KeyValue{Key: kv.Key, ModRevision: int64(b.index)}})
	return nil
}

// sealEntry orders the events of the entry just finished by key, keeping
// the last change of a key the entry changed twice: the same view the
// revision index (one entry per revision and key) gives to a watcher
// reading history.
func (b *Batch) sealEntry() {
	evs := b.events[b.sealed:]
	if len(evs) > 1 {
		slices.SortStableFunc(evs, func(x, y Event) int { return bytes.Compare(x.KV.Key, y.KV.Key) })
		out := evs[:0]
		for i, ev := range evs {
			if i+1 < len(evs) && bytes.Equal(ev.KV.Key, evs[i+1].KV.Key) {
				continue
			}
			out = append(out, ev)
		}
		b.events = b.events[:b.sealed+len(out)]
	}
	b.sealed = len(b.events)
}

// Commit writes the batch, then records the last entry begun as applied. A
// batch with no entry begun commits nothing.
func (b *Batch) Commit() error {
	defer b.release()
	if b.index == 0 {
		b.wb.Cancel()
		return nil
	}
	b.sealEntry()
	if err := b.wb.Flush(); err != nil {
		// Part of the batch may be in Badger: forget what the cache knew.
		b.s.metas.clear()
		return fmt.Errorf("commit batch at %d: %w", b.index, err)
	}
	// The applied index goes in a write of its own, after the data
	// (doc.go: invariants). Entries written with their own versions carry
	// no transaction markers in Badger, so its write-ahead log replays them
	// one by one, and within one commit Badger writes them in map order: in
	// the same write, a crash part way through (or a torn log tail with
	// SyncWrites off) could keep the new applied index and lose data of the
	// entries it covers, which replay would then skip for good.
	// Badger keeps the value slices given to it until Flush: each its own.
	applied := binary.BigEndian.AppendUint64(nil, b.index)
	wb := b.s.db.NewManagedWriteBatch()
	if err := wb.SetEntryAt(badger.NewEntry(metaApplied, applied), b.index); err != nil {
		wb.Cancel()
		return fmt.Errorf("commit batch at %d: applied index: %w", b.index, err)
	}
	if b.compactTo > 0 {
		// With the applied index, so that a replay never compacts twice
		// and never skips one.
		compacted := binary.BigEndian.AppendUint64(nil, b.compactTo)
		if err := wb.SetEntryAt(badger.NewEntry(metaCompacted, compacted), b.index); err != nil {
			wb.Cancel()
			return fmt.Errorf("commit batch at %d: compacted revision: %w", b.index, err)
		}
	}
	if err := wb.Flush(); err != nil {
		b.s.metas.clear()
		return fmt.Errorf("commit batch at %d: applied index: %w", b.index, err)
	}
	b.s.metas.commit(b.overlay)
	b.added += versionBytes(len(metaApplied), 8)
	if b.compactTo > 0 {
		b.added += versionBytes(len(metaCompacted), 8)
	}
	b.s.addUsage(b.added)
	if b.compactTo > b.s.compacted.Load() {
		b.s.compacted.Store(b.compactTo)
		b.s.compactInBackground(b.compactTo, b.flatten)
	}
	b.s.setApplied(b.index)
	b.s.hub.publish(b.events, b.index)
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
	b.meta = nil
	b.events = nil
}
