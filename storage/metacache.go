package storage

import (
	"bytes"
	"hash/maphash"
	"sync"
)

// metaCacheMaxKeys bounds the key metadata cache by keys, and
// metaCacheMaxBytes the key bytes it copies: about 60 bytes a key plus the
// key itself, so some 80 MiB at most however many keys the store holds.
const (
	metaCacheMaxKeys  = 1 << 20
	metaCacheMaxBytes = 64 << 20
)

// keyMeta is what a write needs to know of the current version of a key.
type keyMeta struct {
	create, mod, version, lease int64
}

// metaCache holds the metadata of the latest version of recently written
// keys, as of the last committed batch, so that a put learns the version it
// replaces without a Badger lookup (the largest cost of applying a put). It
// is filled by commits and by lookups that missed, and it only ever answers
// for keys that exist: a miss falls back to Badger.
//
// It holds no Go pointers per key: a map from a hash of the key to a slot,
// with the key's bytes copied into one shared buffer. A map[string]keyMeta
// of a million keys is a million objects that every garbage collection
// walks, a large share of a node's CPU (bench/RESULTS.md). Keys are
// compared in full, so a hash collision is a miss, never a wrong answer.
//
// Eviction is by generation: when the current generation is full it
// becomes the previous one, and the one before is dropped. A hit in the
// previous generation is copied forward, so keys in use survive.
type metaCache struct {
	mu       sync.Mutex
	hash     func([]byte) uint64 // maphash; tests make keys collide
	cur, old *metaGen
	maxKeys  int // per generation
	maxBytes int // per generation
}

// metaGen is one generation: slots by key hash, and the keys' bytes.
type metaGen struct {
	slots map[uint64]metaSlot
	keys  []byte
}

type metaSlot struct {
	off, n uint32 // the key is keys[off:off+n]
	meta   keyMeta
}

func newMetaCache(maxKeys int) *metaCache {
	return newMetaCacheBytes(maxKeys, metaCacheMaxBytes)
}

func newMetaCacheBytes(maxKeys, maxBytes int) *metaCache {
	seed := maphash.MakeSeed()
	return &metaCache{
		hash:     func(b []byte) uint64 { return maphash.Bytes(seed, b) },
		cur:      newMetaGen(),
		old:      newMetaGen(),
		maxKeys:  max(maxKeys/2, 1),
		maxBytes: max(maxBytes/2, 1),
	}
}

func newMetaGen() *metaGen { return &metaGen{slots: map[uint64]metaSlot{}} }

// find returns the slot of bkey in g, if g holds that key.
func (g *metaGen) find(h uint64, bkey []byte) (metaSlot, bool) {
	s, ok := g.slots[h]
	if !ok || !bytes.Equal(g.keys[s.off:s.off+s.n], bkey) {
		return metaSlot{}, false
	}
	return s, true
}

func (c *metaCache) get(bkey []byte) (keyMeta, bool) {
	h := c.hash(bkey)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.cur.find(h, bkey); ok {
		return s.meta, true
	}
	s, ok := c.old.find(h, bkey)
	if ok {
		c.put(h, bkey, s.meta)
	}
	return s.meta, ok
}

// fill records what a lookup read from the committed state.
func (c *metaCache) fill(bkey []byte, m keyMeta) {
	h := c.hash(bkey)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.put(h, bkey, m)
}

// commit folds a committed batch's writes in.
func (c *metaCache) commit(overlay map[string]*pendingKV) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range overlay {
		h := c.hash(p.bkey)
		if p.deleted {
			// Whichever key the slots hold: dropping one is only a miss.
			delete(c.cur.slots, h)
			delete(c.old.slots, h)
			continue
		}
		c.put(h, p.bkey, keyMeta{create: p.create, mod: p.mod, version: p.version, lease: p.lease})
	}
}

// put sets bkey's metadata in the current generation, starting a new one
// first if it is full. Caller holds mu.
func (c *metaCache) put(h uint64, bkey []byte, m keyMeta) {
	if s, ok := c.cur.slots[h]; ok {
		if bytes.Equal(c.cur.keys[s.off:s.off+s.n], bkey) {
			s.meta = m
			c.cur.slots[h] = s
			return
		}
		// Another key with the same hash is about to leave the current
		// generation: it must leave the previous one too, which could
		// otherwise answer for it with an older version.
		delete(c.old.slots, h)
	}
	if len(bkey) > c.maxBytes {
		delete(c.cur.slots, h) // a colliding key's slot, if any
		delete(c.old.slots, h)
		return
	}
	if len(c.cur.slots) >= c.maxKeys || len(c.cur.keys)+len(bkey) > c.maxBytes {
		c.old, c.cur = c.cur, newMetaGen()
	}
	// The previous generation may hold an older version of the key; the
	// current one is read first, and a delete clears both.
	off := len(c.cur.keys)
	c.cur.keys = append(c.cur.keys, bkey...)
	c.cur.slots[h] = metaSlot{off: uint32(off), n: uint32(len(bkey)), meta: m}
}

// len is how many keys the cache holds (a key in both generations counts
// twice).
func (c *metaCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur.slots) + len(c.old.slots)
}

func (c *metaCache) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cur, c.old = newMetaGen(), newMetaGen()
}
