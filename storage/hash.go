package storage

import (
	"encoding/binary"
	"fmt"

	"github.com/cespare/xxhash/v2"
	"github.com/dgraph-io/badger/v4"
)

// StateHash digests the state at one revision, for members to compare
// (the consistency check): every key with its value, create and mod
// revisions, version and lease, every lease with its TTL, and the
// compacted revision, all as a read at that revision sees them. History
// below it is left out: what compaction has physically dropped differs
// from member to member, what a read sees does not.
type StateHash struct {
	Revision  uint64
	Compacted uint64
	Hash      uint64
	Keys      int64
}

// Hash digests the state at revision rev, which must be applied and not
// compacted (ErrFutureRevision, ErrCompacted).
func (s *KV) Hash(rev uint64) (StateHash, error) {
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	if rev == 0 {
		rev = s.applied.Load()
	}
	at, err := s.readTs(rev)
	if err != nil {
		return StateHash{}, err
	}
	txn := s.db.NewTransactionAt(at, false)
	defer txn.Discard()
	out := StateHash{Revision: at}
	if out.Compacted, err = s.readMeta(metaCompacted, "compacted revision", at); err != nil {
		return StateHash{}, err
	}
	h := xxhash.New()
	var buf []byte
	field := func(b []byte) {
		buf = binary.AppendUvarint(buf[:0], uint64(len(b)))
		h.Write(buf)
		h.Write(b)
	}
	num := func(n int64) {
		buf = binary.AppendVarint(buf[:0], n)
		h.Write(buf)
	}
	num(int64(out.Compacted))
	// Values are read in line: prefetching spawns a goroutine per value
	// (see Snapshot).
	it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{userPrefix}})
	defer it.Close()
	for it.Rewind(); it.Valid(); it.Next() {
		item := it.Item()
		field(item.Key())
		num(int64(item.Version()))
		err := item.Value(func(v []byte) error {
			create, version, lease, value, err := decodeValue(v)
			if err != nil {
				return err
			}
			num(create)
			num(version)
			num(lease)
			field(value)
			return nil
		})
		if err != nil {
			return StateHash{}, fmt.Errorf("hash at %d: key %q: %w", at, item.Key()[1:], err)
		}
		out.Keys++
	}
	h.Write([]byte{leasePrefix})
	if err := scanPrefix(txn, []byte{leasePrefix}, func(k, v []byte) error {
		field(k)
		field(v)
		return nil
	}); err != nil {
		return StateHash{}, fmt.Errorf("hash at %d: %w", at, err)
	}
	// The authentication state, when there is one (a state without keeps
	// the hash it had before there was any).
	if st, err := authState(txn); err != nil {
		return StateHash{}, fmt.Errorf("hash at %d: %w", at, err)
	} else if st != nil {
		h.Write(authKey)
		field(st)
	}
	out.Hash = h.Sum64()
	return out, nil
}
