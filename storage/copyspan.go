package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/ristretto/v2/z"
)

// ErrLeasedKeys is returned by CopySpan when a key of the span is attached
// to a lease at the copy's revision: the store it copies into has no
// leases.
var ErrLeasedKeys = errors.New("keys in the span are attached to a lease")

// CopyStats counts what CopySpan copied.
type CopyStats struct {
	// Keys is how many user keys of the span exist at the revision.
	Keys int64
	// Versions is how many versions of them were copied, delete markers
	// included.
	Versions int64
	// Bytes is the size of the records written: Badger keys and values of
	// the versions, of their revision index entries and of the bookkeeping.
	Bytes int64
}

// CopySpan copies into dst every version, up to revision rev, of every
// user key in [start, end) (end nil: no end) of s, delete markers
// included, with their entries in the revision index (so that watches
// and reads at past revisions in dst see their history), and leaves
// dst at applied index rev, compacted at s's compacted revision,
// checkpointed (durable, so a restart serves it without replay).
//
// It is how a node builds a new raft group's state from its replica of
// the group the span is split off: rev must be a revision at which the
// span is frozen, at or below s's applied index and at or above its
// compacted revision. s may be in use meanwhile; dst must be a store
// just opened empty that nothing else uses. It fails with ErrLeasedKeys
// when a key of the span is attached to a lease at rev, before it writes
// anything. A copy that fails part way leaves dst marked damaged: the
// caller discards it.
func (s *KV) CopySpan(dst *KV, start, end []byte, rev uint64) (stats CopyStats, err error) {
	defer s.guard("copy span", &err)
	if dst == s {
		return stats, errors.New("copy span: the destination is the source")
	}
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	if rev == 0 {
		return stats, errors.New("copy span: revision 0 holds nothing")
	}
	if applied := s.applied.Load(); rev > applied {
		return stats, fmt.Errorf("copy span at %d, store is at %d: %w", rev, applied, ErrFutureRevision)
	}
	compacted := s.compacted.Load()
	if rev < compacted {
		return stats, fmt.Errorf("copy span at %d: %w", rev, compactedErr(rev, compacted))
	}
	txn := s.db.NewTransactionAt(rev, false)
	defer txn.Discard()
	if err := checkNoLeases(txn, start, end); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}

	dst.restoring.Lock()
	defer dst.restoring.Unlock()
	if err := dst.checkEmpty(); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	// Until the copy has finished, what dst holds is no state any group
	// ever had (doc.go: a store found damaged is never served from).
	if err := markDamaged(dst.dir, errors.New("a copy of a key span from another store did not finish")); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	usage, err := s.streamSpan(txn, dst, start, end, rev, compacted, &stats)
	if err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	// A compaction of s that passed rev while the copy read may have
	// dropped versions the copy needed.
	if c := s.compacted.Load(); c != compacted {
		return stats, fmt.Errorf("copy span at %d: the source was compacted from %d to %d meanwhile: %w", rev, compacted, c, ErrCompacted)
	}
	// The applied index in a write of its own, after the data (doc.go:
	// invariants), with the compacted revision.
	wb := dst.db.NewManagedWriteBatch()
	defer wb.Cancel()
	if err := wb.SetEntryAt(badger.NewEntry(metaApplied, binary.BigEndian.AppendUint64(nil, rev)), rev); err != nil {
		return stats, fmt.Errorf("copy span at %d: applied index: %w", rev, err)
	}
	usage += versionBytes(len(metaApplied), 8)
	stats.Bytes += int64(len(metaApplied) + 8)
	if compacted > 0 {
		if err := wb.SetEntryAt(badger.NewEntry(metaCompacted, binary.BigEndian.AppendUint64(nil, compacted)), rev); err != nil {
			return stats, fmt.Errorf("copy span at %d: compacted revision: %w", rev, err)
		}
		usage += versionBytes(len(metaCompacted), 8)
		stats.Bytes += int64(len(metaCompacted) + 8)
	}
	if err := wb.Flush(); err != nil {
		return stats, fmt.Errorf("copy span at %d: applied index: %w", rev, err)
	}
	if err := dst.loadApplied(); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	if err := dst.loadCompacted(math.MaxUint64); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	if _, err := dst.checkpointLocked(); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	if err := removeDurably(dst.dir, damageMarkerFile); err != nil {
		return stats, fmt.Errorf("copy span at %d: %w", rev, err)
	}
	dst.usage.Store(usage)
	dst.setApplied(rev)
	dst.hub.restored(rev)
	return stats, nil
}

// checkNoLeases fails with ErrLeasedKeys, naming a key, when a key in
// [start, end) is attached to a lease as txn reads. Attachments are few
// next to keys: all are read.
func checkNoLeases(txn *badger.Txn, start, end []byte) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{attachPrefix}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		k := it.Item().Key()
		if len(k) < 9 {
			return fmt.Errorf("lease attachment %q: %w", k, ErrCorrupt)
		}
		if key := k[9:]; inSpan(key, start, end) {
			return fmt.Errorf("%q is attached to lease %d: %w", key, int64(binary.BigEndian.Uint64(k[1:9])), ErrLeasedKeys)
		}
	}
	return nil
}

// inSpan says whether key is in [start, end), end empty meaning no end.
func inSpan(key, start, end []byte) bool {
	return bytes.Compare(key, start) >= 0 && (len(end) == 0 || bytes.Compare(key, end) < 0)
}

// checkEmpty fails unless the store holds nothing at all: CopySpan's
// StreamWriter drops whatever it holds.
func (s *KV) checkEmpty() error {
	if a := s.applied.Load(); a != 0 {
		return fmt.Errorf("destination store %s is at index %d, not empty", s.dir, a)
	}
	txn := s.db.NewTransactionAt(math.MaxUint64, false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true})
	defer it.Close()
	if it.Rewind(); it.Valid() {
		return fmt.Errorf("destination store %s is not empty: it holds %q", s.dir, it.Item().Key())
	}
	return nil
}

// streamSpan writes the span's versions as txn reads them, then their
// revision index entries, into dst through Badger's StreamWriter, and
// returns their logical size (usage.go), counted as recountUsage would.
//
// The StreamWriter rather than write batches: dst is empty and unused, and
// the records come in Badger's key order (user keys, then the revision
// index), so they go straight into tables, without memtables, their
// write-ahead log and compactions (RestoreSorted does the same).
func (s *KV) streamSpan(txn *badger.Txn, dst *KV, start, end []byte, rev, compacted uint64, stats *CopyStats) (int64, error) {
	sw := dst.db.NewStreamWriter()
	if err := sw.Prepare(); err != nil {
		return 0, fmt.Errorf("prepare: %w", err)
	}
	dst.files.valueLogDropped()
	done := false
	defer func() {
		if !done {
			sw.Cancel()
		}
	}()
	buf := z.NewBuffer(8<<20, "kv.CopySpan")
	defer buf.Release()
	write := func() error {
		if buf.LenNoPadding() < 4<<20 {
			return nil
		}
		if err := sw.Write(buf); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		buf.Reset()
		return nil
	}
	var usage int64

	// Every version of every user key in the span, delete markers
	// included (doc.go: invariants), newest first within a key. No value
	// prefetching, as in Snapshot.
	lo, hi := userKey(start), []byte{userPrefix + 1}
	if len(end) > 0 {
		hi = userKey(end)
	}
	it := txn.NewIterator(badger.IteratorOptions{AllVersions: true, Prefix: []byte{userPrefix}})
	var (
		last  []byte
		below bool // for last: a version at or below the compacted revision was seen
		kv    pb.KV
	)
	for it.Seek(lo); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, hi) >= 0 {
			break
		}
		first := !bytes.Equal(k, last)
		if first {
			last = append(last[:0], k...)
			below = false
		}
		deleted := item.IsDeletedOrExpired()
		// The logical size as recountUsage counts it: Badger reports the
		// same value size for the copy as for the original.
		if !below {
			if compacted > 0 && item.Version() <= compacted {
				below = true
			}
			if !below || !deleted {
				usage += versionBytes(len(k), int(item.ValueSize()))
			}
		}
		kv = pb.KV{Key: k, Version: item.Version()}
		stats.Versions++
		if deleted {
			kv.Meta = deleteMeta
			badger.KVToBuffer(&kv, buf)
		} else {
			err := itemValue(item, func(v []byte) error {
				if first {
					stats.Keys++
					if _, _, lease, _, err := decodeValue(v); err != nil {
						return err
					} else if lease != 0 {
						// The attachments said otherwise: one of the two is wrong.
						return fmt.Errorf("attached to lease %d: %w", lease, ErrLeasedKeys)
					}
				}
				kv.Value = v
				badger.KVToBuffer(&kv, buf)
				return nil
			})
			if err != nil {
				it.Close()
				return 0, fmt.Errorf("key %q at %d: %w", k[1:], item.Version(), err)
			}
		}
		stats.Bytes += int64(len(k) + len(kv.Value))
		if err := write(); err != nil {
			it.Close()
			return 0, err
		}
	}
	it.Close()

	// Their revision index entries, in revision order: those compaction
	// keeps (compact.go: from the compacted revision minus one).
	from := uint64(0)
	if compacted > 0 {
		from = compacted - 1
	}
	it = txn.NewIterator(badger.IteratorOptions{Prefix: []byte{revPrefix}})
	defer it.Close()
	stop := revKey(rev+1, nil)
	for it.Seek(revKey(from, nil)); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, stop) >= 0 {
			break
		}
		if len(k) < 9 {
			return 0, fmt.Errorf("revision index key %q: %w", k, ErrCorrupt)
		}
		if !inSpan(k[9:], start, end) {
			continue
		}
		err := itemValue(item, func(v []byte) error {
			if len(v) != 1 {
				return fmt.Errorf("revision index key %q: %w", k, ErrCorrupt)
			}
			kv = pb.KV{Key: k, Value: v, Version: item.Version()}
			badger.KVToBuffer(&kv, buf)
			return nil
		})
		if err != nil {
			return 0, err
		}
		usage += versionBytes(len(k), len(kv.Value))
		stats.Bytes += int64(len(k) + len(kv.Value))
		if err := write(); err != nil {
			return 0, err
		}
	}
	if err := sw.Write(buf); err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	done = true
	if err := sw.Flush(); err != nil {
		return 0, fmt.Errorf("flush: %w", err)
	}
	return usage, nil
}
