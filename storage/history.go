package storage

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// EventType is the kind of change an Event reports.
type EventType byte

// The kinds of change.
const (
	EventPut    EventType = 1
	EventDelete EventType = 2
)

// Event is one change to one key. For a put, KV is the whole pair after it;
// for a delete, only KV.Key and KV.ModRevision (the revision of the delete)
// are set. Prev is the pair before the change, filled in for watchers that
// asked for it (HasPrev false when the key did not exist).
type Event struct {
	Type    EventType
	KV      KeyValue
	Prev    KeyValue
	HasPrev bool
}

// Revision is the revision that made the change.
func (e *Event) Revision() uint64 { return uint64(e.KV.ModRevision) }

func revKey(rev uint64, key []byte) []byte {
	k := make([]byte, 9+len(key))
	k[0] = revPrefix
	binary.BigEndian.PutUint64(k[1:], rev)
	copy(k[9:], key)
	return k
}

// keyRange is a user key range as RangeRequest gives it: end empty for the
// single key start, "\x00" for every key from start on.
type keyRange struct{ start, end []byte }

func (r keyRange) contains(key []byte) bool {
	switch {
	case len(r.end) == 0:
		return bytes.Equal(key, r.start)
	case len(r.end) == 1 && r.end[0] == 0:
		return bytes.Compare(key, r.start) >= 0
	}
	return bytes.Compare(key, r.start) >= 0 && bytes.Compare(key, r.end) < 0
}

// maxBytesPerNext bounds the keys and values one history read, or one
// Next, returns (a revision is never split, so one huge revision may exceed
// it): under gRPC's usual 4 MiB message limit, with room for prev values.
const maxBytesPerNext = 1 << 20

// history reads the changes to keys in r with revisions in [from, to] from
// the revision index, in revision order. It stops after the first revision
// that brings the count to limit or more, or the size to maxBytesPerNext (a
// revision is never split), and returns the last revision it covered: to
// when it read everything.
func (s *KV) history(from, to uint64, r keyRange, limit int) (_ []Event, _ uint64, err error) {
	defer s.guard("history", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	if c := s.compacted.Load(); from < c {
		return nil, 0, compactedErr(from, c)
	}
	if from > to {
		return nil, to, nil
	}
	txn := s.db.NewTransactionAt(to, false)
	defer txn.Discard()
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{revPrefix}})
	defer it.Close()
	end := revKey(to+1, nil)

	var (
		events []Event
		size   int
		valTxn *badger.Txn // reads at the revision of the event at hand
		valRev uint64
	)
	defer func() {
		if valTxn != nil {
			valTxn.Discard()
		}
	}()
	for it.Seek(revKey(from, nil)); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, end) >= 0 {
			break
		}
		if len(k) < 9 {
			return nil, 0, fmt.Errorf("revision index key %q: %w", k, ErrCorrupt)
		}
		rev := binary.BigEndian.Uint64(k[1:9])
		if (len(events) >= limit || size >= maxBytesPerNext) && len(events) > 0 && rev != events[len(events)-1].Revision() {
			return events, rev - 1, nil
		}
		key := k[9:]
		if !r.contains(key) {
			continue
		}
		var t EventType
		if err := itemValue(item, func(v []byte) error {
			if len(v) != 1 {
				return ErrCorrupt
			}
			t = EventType(v[0])
			return nil
		}); err != nil {
			return nil, 0, fmt.Errorf("revision index at %d: %w", rev, err)
		}
		ev := Event{Type: t, KV: KeyValue{Key: bytes.Clone(key), ModRevision: int64(rev)}}
		if t == EventPut {
			if valTxn == nil || valRev != rev {
				if valTxn != nil {
					valTxn.Discard()
				}
				valTxn, valRev = s.db.NewTransactionAt(rev, false), rev
			}
			kv, ok, err := getAt(valTxn, key)
			if err != nil {
				return nil, 0, err
			}
			if !ok || uint64(kv.ModRevision) != rev {
				return nil, 0, fmt.Errorf("history: put of %q at %d not in the store: %w", key, rev, ErrCorrupt)
			}
			ev.KV = kv
		}
		events = append(events, ev)
		size += evSize(&ev)
	}
	return events, to, nil
}

// fillPrev sets the pairs as they were before each event.
func (s *KV) fillPrev(events []Event) (err error) {
	defer s.guard("history", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	var (
		txn *badger.Txn
		at  uint64
	)
	defer func() {
		if txn != nil {
			txn.Discard()
		}
	}()
	for i := range events {
		rev := events[i].Revision()
		if rev <= 1 {
			continue
		}
		if txn == nil || at != rev-1 {
			if txn != nil {
				txn.Discard()
			}
			// No compaction check: the compacted revision minus one is the
			// discard timestamp, so the version below any revision still
			// watched is kept.
			txn, at = s.db.NewTransactionAt(rev-1, false), rev-1
		}
		kv, ok, err := getAt(txn, events[i].KV.Key)
		if err != nil {
			return err
		}
		events[i].Prev, events[i].HasPrev = kv, ok
	}
	return nil
}
