package storage

// WatchStats describes the watchers of a store, for the node's metrics.
type WatchStats struct {
	// Watchers is how many watchers are open; Unsynced how many of them
	// still read history to catch up (etcd's slow watchers).
	Watchers, Unsynced int
	// Cut is how many watchers were cancelled since the store opened
	// because their reader fell too far behind (ErrWatcherBehind).
	Cut uint64
}

// WatchStats counts the watchers. It holds the hub's lock while it
// counts, as long as publishing one revision to them takes at most.
func (s *KV) WatchStats() WatchStats {
	h := &s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	st := WatchStats{Cut: h.cut.Load()}
	count := func(w *Watcher) {
		st.Watchers++
		w.mu.Lock()
		if !w.synced {
			st.Unsynced++
		}
		w.mu.Unlock()
	}
	for _, set := range h.single {
		for w := range set {
			count(w)
		}
	}
	for w := range h.ranged {
		count(w)
	}
	return st
}
