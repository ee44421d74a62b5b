package storage

import (
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// authKey keys the authentication state (users, roles, the switch and the
// token signing key: package auth's encoding) as one record. It is
// replicated state like any other: it travels in snapshots and backups,
// survives restarts, and is part of the state hash.
var authKey = []byte{'u'}

// SetAuthState replaces the authentication state at the current revision.
func (b *Batch) SetAuthState(state []byte) error {
	if state == nil {
		state = []byte{}
	}
	return b.setMeta(authKey, state)
}

// AuthState returns the authentication state at the applied revision
// (nil: none was ever set).
func (s *KV) AuthState() (_ []byte, err error) {
	defer s.guard("auth state", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	txn := s.db.NewTransactionAt(s.applied.Load(), false)
	defer txn.Discard()
	return authState(txn)
}

func authState(txn *badger.Txn) ([]byte, error) { return record(txn, authKey, "auth state") }

// record reads the one-record state at key (nil: none was ever set).
func record(txn *badger.Txn, key []byte, what string) ([]byte, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	var out []byte
	if err := itemValue(item, func(v []byte) error {
		out = append([]byte{}, v...)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return out, nil
}
