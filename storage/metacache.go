package storage

import "sync"

// metaCacheMaxKeys bounds the key metadata cache: about 80 bytes a key, so
// at most some 80 MiB however many keys the store holds.
const metaCacheMaxKeys = 1 << 20

// keyMeta is what a write needs to know of the current version of a key.
type keyMeta struct {
	create, mod, version, lease int64
}

// metaCache holds the metadata of the latest version of recently written
// keys, as of the last committed batch, so that a put learns the version it
// replaces without a Badger lookup (the largest cost of applying a put). It
// is filled by commits and by lookups that missed, and it only ever answers
// for keys that exist: a miss falls back to Badger.
type metaCache struct {
	mu  sync.Mutex
	m   map[string]keyMeta // by Badger key
	max int
}

func newMetaCache(max int) *metaCache {
	return &metaCache{m: make(map[string]keyMeta), max: max}
}

func (c *metaCache) get(bkey []byte) (keyMeta, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.m[string(bkey)]
	return m, ok
}

// fill records what a lookup read from the committed state.
func (c *metaCache) fill(bkey string, m keyMeta) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.makeRoom(1)
	c.m[bkey] = m
}

// commit folds a committed batch's writes in.
func (c *metaCache) commit(overlay map[string]*pendingKV) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.makeRoom(len(overlay))
	for k, p := range overlay {
		if p.deleted {
			delete(c.m, k)
			continue
		}
		c.m[k] = keyMeta{create: p.create, mod: p.mod, version: p.version, lease: p.lease}
	}
}

// makeRoom evicts keys, in the map's random order, until n more fit with
// an eighth of the bound to spare, so eviction runs rarely.
func (c *metaCache) makeRoom(n int) {
	if len(c.m)+n <= c.max {
		return
	}
	target := max(c.max-c.max/8-n, 0)
	for k := range c.m {
		if len(c.m) <= target {
			break
		}
		delete(c.m, k)
	}
}

func (c *metaCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.m)
}
