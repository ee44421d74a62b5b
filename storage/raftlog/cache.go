package raftlog

import (
	"sync"

	"github.com/hashicorp/raft"
)

// Cache keeps the entries stored last in memory, up to a number of bytes,
// in front of any raft.LogStore. Raft reads each entry back soon after it
// stores it (the leader to replicate it, every node to apply it); those
// reads then cost no file read and no decoding. It is raft.LogCache
// bounded by bytes rather than by count, since one entry may be megabytes.
type Cache struct {
	store    raft.LogStore
	maxBytes int

	mu    sync.Mutex
	logs  []*raft.Log // a run of indexes: logs[i].Index == first+i
	first uint64
	bytes int
	// gen counts DeleteRange calls, before and after they reach the
	// store: a StoreLogs that overlapped one caches nothing.
	gen uint64
}

var _ raft.LogStore = (*Cache)(nil)

// NewCache returns store with a cache of up to maxBytes of entries.
func NewCache(store raft.LogStore, maxBytes int) *Cache {
	return &Cache{store: store, maxBytes: maxBytes}
}

// cachedSize estimates the memory a cached entry holds.
func cachedSize(l *raft.Log) int { return len(l.Data) + len(l.Extensions) + 128 }

// GetLog returns the entry from the cache, or else from the store. A
// cached entry shares its Data with the one stored: raft changes neither.
func (c *Cache) GetLog(index uint64, log *raft.Log) error {
	c.mu.Lock()
	if index >= c.first && index-c.first < uint64(len(c.logs)) {
		*log = *c.logs[index-c.first]
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	return c.store.GetLog(index, log)
}

// StoreLog stores one entry.
func (c *Cache) StoreLog(log *raft.Log) error { return c.StoreLogs([]*raft.Log{log}) }

// StoreLogs stores logs in the store, then caches them.
func (c *Cache) StoreLogs(logs []*raft.Log) error {
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	err := c.store.StoreLogs(logs)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil || gen != c.gen {
		// What the store holds now is not known here.
		c.dropFrom(0)
		return err
	}
	for _, l := range logs {
		if len(c.logs) > 0 && l.Index != c.first+uint64(len(c.logs)) {
			c.dropFrom(0)
		}
		if len(c.logs) == 0 {
			c.first = l.Index
		}
		c.logs = append(c.logs, l)
		c.bytes += cachedSize(l)
		for c.bytes > c.maxBytes && len(c.logs) > 0 {
			c.bytes -= cachedSize(c.logs[0])
			c.logs[0] = nil
			c.logs = c.logs[1:]
			c.first++
		}
	}
	return nil
}

// DeleteRange drops the range from the cache and the store.
func (c *Cache) DeleteRange(min, max uint64) error {
	c.forget(min, max)
	err := c.store.DeleteRange(min, max)
	c.forget(min, max)
	return err
}

// forget drops [min, max] from the cache.
func (c *Cache) forget(min, max uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	switch {
	case len(c.logs) == 0 || max < c.first || min >= c.first+uint64(len(c.logs)):
	case min <= c.first && max >= c.first+uint64(len(c.logs))-1:
		c.dropFrom(0)
	case min <= c.first:
		for len(c.logs) > 0 && c.first <= max {
			c.bytes -= cachedSize(c.logs[0])
			c.logs[0] = nil
			c.logs = c.logs[1:]
			c.first++
		}
	default:
		// A suffix, or a hole that the store refuses: drop from min on
		// either way, so nothing deleted stays cached.
		c.dropFrom(int(min - c.first))
	}
}

// dropFrom drops the cached entries from position k on. Caller holds mu.
func (c *Cache) dropFrom(k int) {
	for i := k; i < len(c.logs); i++ {
		c.bytes -= cachedSize(c.logs[i])
		c.logs[i] = nil
	}
	c.logs = c.logs[:k]
}

// FirstIndex returns the store's first index.
func (c *Cache) FirstIndex() (uint64, error) { return c.store.FirstIndex() }

// LastIndex returns the store's last index.
func (c *Cache) LastIndex() (uint64, error) { return c.store.LastIndex() }
