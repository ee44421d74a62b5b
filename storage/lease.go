package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

// Lease is a lease record: its id and the TTL it was granted.
type Lease struct {
	ID  int64
	TTL int64 // seconds
}

func leaseKey(id int64) []byte {
	k := make([]byte, 9)
	k[0] = leasePrefix
	binary.BigEndian.PutUint64(k[1:], uint64(id))
	return k
}

func attachPrefixOf(id int64) []byte {
	k := make([]byte, 9)
	k[0] = attachPrefix
	binary.BigEndian.PutUint64(k[1:], uint64(id))
	return k
}

func attachKey(id int64, key []byte) []byte {
	return append(attachPrefixOf(id), key...)
}

func decodeTTL(v []byte) (int64, error) {
	ttl, n := binary.Uvarint(v)
	if n <= 0 {
		return 0, fmt.Errorf("lease record: %w", ErrCorrupt)
	}
	return int64(ttl), nil
}

// Lease reads the lease id as of the current entry.
func (b *Batch) Lease(id int64) (Lease, bool, error) {
	k := leaseKey(id)
	if v, ok := b.meta[string(k)]; ok {
		if v == nil {
			return Lease{}, false, nil
		}
		ttl, err := decodeTTL(v)
		return Lease{ID: id, TTL: ttl}, err == nil, err
	}
	return leaseAt(b.readTxn(), id)
}

// GrantLease records a lease; the caller checks that the id is free.
func (b *Batch) GrantLease(l Lease) error {
	return b.setMeta(leaseKey(l.ID), binary.AppendUvarint(nil, uint64(l.TTL)))
}

// RevokeLease deletes the lease and every key attached to it, all at the
// current revision, and returns the deleted keys.
func (b *Batch) RevokeLease(id int64) ([][]byte, error) {
	keys, err := b.attached(id)
	if err != nil {
		return nil, err
	}
	for _, key := range keys {
		kv, ok, err := b.lookup(userKey(key), false)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue // cannot happen: attachments go with their key
		}
		if err := b.deleteKey(kv); err != nil {
			return nil, err
		}
	}
	if err := b.setMeta(leaseKey(id), nil); err != nil {
		return nil, err
	}
	return keys, nil
}

// attached lists the keys attached to lease id as of the current entry.
func (b *Batch) attached(id int64) ([][]byte, error) {
	prefix := attachPrefixOf(id)
	set := make(map[string]bool)
	if err := scanPrefix(b.readTxn(), prefix, func(k, _ []byte) error {
		set[string(k[len(prefix):])] = true
		return nil
	}); err != nil {
		return nil, err
	}
	for k, v := range b.meta {
		if len(k) > len(prefix) && k[:len(prefix)] == string(prefix) {
			set[k[len(prefix):]] = v != nil
		}
	}
	var keys [][]byte
	for k, ok := range set {
		if ok {
			keys = append(keys, []byte(k))
		}
	}
	// Sorted, so every node writes the same events in the same order.
	slices.SortFunc(keys, bytes.Compare)
	return keys, nil
}

// Leases lists every lease at the applied revision.
func (s *KV) Leases() (_ []Lease, err error) {
	defer s.guard("leases", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	txn := s.db.NewTransactionAt(s.applied.Load(), false)
	defer txn.Discard()
	var out []Lease
	err = scanPrefix(txn, []byte{leasePrefix}, func(k, v []byte) error {
		if len(k) != 9 {
			return fmt.Errorf("lease key %q: %w", k, ErrCorrupt)
		}
		ttl, err := decodeTTL(v)
		if err != nil {
			return err
		}
		out = append(out, Lease{ID: int64(binary.BigEndian.Uint64(k[1:])), TTL: ttl})
		return nil
	})
	return out, err
}

// LeaseKeys lists the keys attached to lease id at the applied revision,
// and whether the lease exists.
func (s *KV) LeaseKeys(id int64) (_ Lease, _ [][]byte, _ bool, err error) {
	defer s.guard("lease keys", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	txn := s.db.NewTransactionAt(s.applied.Load(), false)
	defer txn.Discard()
	l, ok, err := leaseAt(txn, id)
	if err != nil || !ok {
		return Lease{}, nil, false, err
	}
	prefix := attachPrefixOf(id)
	var keys [][]byte
	err = scanPrefix(txn, prefix, func(k, _ []byte) error {
		keys = append(keys, bytes.Clone(k[len(prefix):]))
		return nil
	})
	return l, keys, true, err
}

func leaseAt(txn *badger.Txn, id int64) (Lease, bool, error) {
	item, err := txn.Get(leaseKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Lease{}, false, nil
	}
	if err != nil {
		return Lease{}, false, fmt.Errorf("lease %d: %w", id, err)
	}
	var ttl int64
	err = itemValue(item, func(v []byte) error {
		ttl, err = decodeTTL(v)
		return err
	})
	return Lease{ID: id, TTL: ttl}, err == nil, err
}

// scanPrefix calls fn for every live key under prefix; k and v are only
// valid during the call.
func scanPrefix(txn *badger.Txn, prefix []byte, fn func(k, v []byte) error) error {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
	defer it.Close()
	for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
		item := it.Item()
		if err := itemValue(item, func(v []byte) error { return fn(item.Key(), v) }); err != nil {
			return fmt.Errorf("scan %q: %w", prefix, err)
		}
	}
	return nil
}
