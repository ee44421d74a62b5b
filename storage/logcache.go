package storage

import (
	"sync"

	"github.com/hashicorp/raft"
)

// Bounds of the recent-log cache of a RaftStore. raft reads every entry back
// soon after storing it: the leader to replicate it, every node to apply it.
// Served from memory, those reads skip a Badger lookup and a decode each.
// Bounded by bytes as well as count because one entry can be megabytes.
const (
	logCacheMaxEntries = 4096
	logCacheMaxBytes   = 16 << 20
)

// logCache holds the most recently stored raft logs: a contiguous run of
// indexes, oldest first, within its entry and byte bounds. raft.LogCache
// does the same job but is bounded by count alone.
type logCache struct {
	mu       sync.Mutex
	logs     []*raft.Log // logs[i].Index == first+i
	first    uint64
	bytes    int
	maxN     int
	maxBytes int
}

func newLogCache(maxN, maxBytes int) *logCache {
	return &logCache{maxN: maxN, maxBytes: maxBytes}
}

// logSize estimates the memory a cached log holds.
func logSize(l *raft.Log) int { return len(l.Data) + len(l.Extensions) + 96 }

// get returns the cached log at index, if any. The log is shared: raft
// never writes to a log it read.
func (c *logCache) get(index uint64) (*raft.Log, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if index < c.first || index >= c.first+uint64(len(c.logs)) {
		return nil, false
	}
	return c.logs[index-c.first], true
}

// add caches logs just stored, in index order. Logs that do not follow the
// cached run (raft rewrote a suffix after a conflict, or a snapshot moved
// the log on) replace it.
func (c *logCache) add(logs []*raft.Log) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, l := range logs {
		if len(c.logs) > 0 && l.Index != c.first+uint64(len(c.logs)) {
			if l.Index > c.first && l.Index < c.first+uint64(len(c.logs)) {
				c.truncateFrom(l.Index)
			} else {
				c.clearLocked()
			}
		}
		if len(c.logs) == 0 {
			c.first = l.Index
		}
		c.logs = append(c.logs, l)
		c.bytes += logSize(l)
		for len(c.logs) > c.maxN || (c.bytes > c.maxBytes && len(c.logs) > 0) {
			c.bytes -= logSize(c.logs[0])
			c.logs[0] = nil
			c.logs = c.logs[1:]
			c.first++
		}
	}
	// Reslicing from the front leaks the backing array's head; copy down
	// once the array is twice the live run.
	if cap(c.logs) > 2*c.maxN {
		c.logs = append(make([]*raft.Log, 0, c.maxN+1), c.logs...)
	}
}

// truncateFrom drops the cached logs at index and after.
func (c *logCache) truncateFrom(index uint64) {
	keep := int(index - c.first)
	for i := keep; i < len(c.logs); i++ {
		c.bytes -= logSize(c.logs[i])
		c.logs[i] = nil
	}
	c.logs = c.logs[:keep]
}

// remove drops the cached logs in [min, max].
func (c *logCache) remove(min, max uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.logs) == 0 || max < c.first || min >= c.first+uint64(len(c.logs)) {
		return
	}
	if min <= c.first {
		// From the front (log compaction after a snapshot), or everything.
		for len(c.logs) > 0 && c.first <= max {
			c.bytes -= logSize(c.logs[0])
			c.logs[0] = nil
			c.logs = c.logs[1:]
			c.first++
		}
		return
	}
	// A suffix (a follower dropping conflicting entries): raft deletes to
	// the end, so drop everything from min on.
	c.truncateFrom(min)
}

func (c *logCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.clearLocked()
}

func (c *logCache) clearLocked() {
	clear(c.logs)
	c.logs = c.logs[:0]
	c.first = 0
	c.bytes = 0
}
