package storage

// rangeTableKey keys the range table (package consensus/ranges' encoding)
// as one record of the meta group's state: like the auth state, it
// travels in snapshots and backups, survives restarts and is part of the
// state hash.
var rangeTableKey = []byte{'g'}

// SetRangeTable replaces the range table at the current revision.
func (b *Batch) SetRangeTable(table []byte) error {
	if table == nil {
		table = []byte{}
	}
	return b.setMeta(rangeTableKey, table)
}

// RangeTable returns the range table at the applied revision (nil: none
// was ever set).
func (s *KV) RangeTable() (_ []byte, err error) {
	defer s.guard("range table", &err)
	s.restoring.RLock()
	defer s.restoring.RUnlock()
	txn := s.db.NewTransactionAt(s.applied.Load(), false)
	defer txn.Discard()
	return record(txn, rangeTableKey, "range table")
}
