package storage

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// The key metadata cache never changes what a write does: random puts,
// deletes, lease attachments, revokes and discarded batches give the same
// revisions, versions, leases and events with a large cache, with a cache so
// small it evicts all the time, and with none (cleared before every batch,
// so every lookup reads Badger).
func TestMetaCacheChangesNothing(t *testing.T) {
	type store struct {
		name  string
		s     *KV
		clear bool
	}
	stores := []*store{
		{name: "large cache", s: kvNew(t)},
		{name: "tiny cache", s: kvNew(t)},
		{name: "no cache", s: kvNew(t), clear: true},
		{name: "colliding cache", s: kvNew(t)},
	}
	stores[1].s.metas = newMetaCache(3)
	// Three hash values for a dozen keys: most keys share a slot.
	stores[3].s.metas = newMetaCache(8)
	stores[3].s.metas.hash = func(b []byte) uint64 { return uint64(b[len(b)-1]) % 3 }
	rng := rand.New(rand.NewPCG(1, 2))
	type op struct {
		kind     int
		key, end string
		lease    int64
	}
	index := uint64(0)
	for round := range 300 {
		// One batch of 1-4 entries, each of 1-3 ops; one batch in ten is
		// discarded.
		var entries [][]op
		for range 1 + rng.IntN(4) {
			var ops []op
			for range 1 + rng.IntN(3) {
				o := op{kind: rng.IntN(10), key: fmt.Sprintf("k%d", rng.IntN(12))}
				switch {
				case o.kind < 6: // put, on lease 7, 8 or none
					o.lease = []int64{0, 0, 7, 8}[rng.IntN(4)]
				case o.kind < 8: // delete a key or a small range
					o.end = fmt.Sprintf("k%d", rng.IntN(12))
				default: // revoke and re-grant a lease
					o.lease = 7 + int64(rng.IntN(2))
				}
				ops = append(ops, o)
			}
			entries = append(entries, ops)
		}
		discard := rng.IntN(10) == 0
		var results [][]string
		for _, st := range stores {
			if st.clear {
				st.s.metas.clear()
			}
			b := st.s.NewBatch()
			var out []string
			for i, ops := range entries {
				if err := b.Begin(index + uint64(i) + 1); err != nil {
					t.Fatal(err)
				}
				if index == 0 && i == 0 {
					for _, id := range []int64{7, 8} {
						if err := b.GrantLease(Lease{ID: id, TTL: 10}); err != nil {
							t.Fatal(err)
						}
					}
				}
				for _, o := range ops {
					switch {
					case o.kind < 6:
						prev, existed, err := b.Put([]byte(o.key), []byte(fmt.Sprint(round)), o.lease, o.kind%2 == 0)
						if err != nil {
							t.Fatal(err)
						}
						out = append(out, fmt.Sprint(existed, kvString(prev), prev.Lease))
					case o.kind < 8:
						n, _, err := b.DeleteRange([]byte(o.key), []byte(o.end), false)
						if err != nil {
							t.Fatal(err)
						}
						out = append(out, fmt.Sprint("deleted ", n))
					default:
						keys, err := b.RevokeLease(o.lease)
						if err != nil {
							t.Fatal(err)
						}
						if err := b.GrantLease(Lease{ID: o.lease, TTL: 10}); err != nil {
							t.Fatal(err)
						}
						out = append(out, fmt.Sprintf("revoked %q", keys))
					}
				}
			}
			for _, ev := range b.events {
				out = append(out, fmt.Sprint(ev.Type, kvString(ev.KV), ev.KV.Lease))
			}
			if discard {
				b.Discard()
			} else if err := b.Commit(); err != nil {
				t.Fatal(err)
			}
			results = append(results, out)
		}
		if !discard {
			index += uint64(len(entries))
		}
		for i := 1; i < len(stores); i++ {
			if !reflect.DeepEqual(results[i], results[0]) {
				t.Fatalf("round %d: %s and %s differ:\n%q\n%q", round, stores[0].name, stores[i].name, results[0], results[i])
			}
		}
		want := kvDump(t, stores[0].s, 0)
		for _, st := range stores[1:] {
			if got := kvDump(t, st.s, 0); !reflect.DeepEqual(got, want) {
				t.Fatalf("round %d: %s holds\n%q\nwant\n%q", round, st.name, got, want)
			}
		}
	}
	if n := stores[1].s.metas.len(); n > 3 {
		t.Fatalf("tiny cache holds %d keys, bound 3", n)
	}
	if stores[0].s.metas.len() == 0 {
		t.Fatal("large cache is empty: the test did not exercise it")
	}
}

// A restored store forgets what it cached before: the versions of the
// snapshot win.
func TestMetaCacheClearedByRestore(t *testing.T) {
	src := kvNew(t)
	kvFill(t, src, 1, "a", "1")
	var snap bytes.Buffer
	if err := src.Snapshot(&snap, 1); err != nil {
		t.Fatal(err)
	}
	dst := kvNew(t)
	kvFill(t, dst, 1, "a", "x")
	kvFill(t, dst, 2, "a", "y") // cached: a at version 2, created at 1
	if err := dst.Restore(&snap); err != nil {
		t.Fatal(err)
	}
	kvFill(t, dst, 2, "a", "2")
	kv, _ := kvGet(t, dst, 0, "a")
	if kv.Version != 2 || kv.CreateRevision != 1 || kv.ModRevision != 2 {
		t.Fatalf("after restore and a put: %s, want version 2 created at 1", kvString(kv))
	}
}

// A key pushed out of the current generation by another with the same hash
// is not answered from the previous generation, which may hold an older
// version of it.
func TestMetaCacheCollisionForgetsOlderGeneration(t *testing.T) {
	c := newMetaCacheBytes(6, 1<<20) // 3 keys a generation
	slot := map[string]uint64{"x": 0, "y": 0, "z": 1, "w": 2, "v": 3}
	c.hash = func(b []byte) uint64 { return slot[string(b)] }
	pending := func(key string, mod int64) map[string]*pendingKV {
		return map[string]*pendingKV{key: {bkey: []byte(key), create: 1, mod: mod, version: mod}}
	}
	c.commit(pending("x", 1))
	c.commit(pending("z", 1))
	c.commit(pending("w", 1))
	c.commit(pending("v", 1)) // the generation holding x@1 is now the previous one
	c.commit(pending("x", 2))
	if m, ok := c.get([]byte("x")); !ok || m.mod != 2 {
		t.Fatalf("x = %+v, %v; want mod 2", m, ok)
	}
	c.commit(pending("y", 1)) // takes x's slot in the current generation
	if m, ok := c.get([]byte("x")); ok {
		t.Fatalf("x = %+v after a colliding key replaced it; want a miss", m)
	}
	if m, ok := c.get([]byte("y")); !ok || m.mod != 1 {
		t.Fatalf("y = %+v, %v; want mod 1", m, ok)
	}
	if m, ok := c.get([]byte("z")); !ok || m.mod != 1 {
		t.Fatalf("z = %+v, %v; want mod 1 from the previous generation", m, ok)
	}
}

// Generations bound the cache by keys and by key bytes.
func TestMetaCacheBounds(t *testing.T) {
	c := newMetaCacheBytes(100, 1000) // 50 keys or 500 bytes a generation
	for i := range 1000 {
		c.fill([]byte(fmt.Sprintf("key-%04d", i)), keyMeta{mod: int64(i)})
		if n := c.len(); n > 100 {
			t.Fatalf("after %d keys the cache holds %d, bound 100", i+1, n)
		}
	}
	long := bytes.Repeat([]byte("k"), 300)
	for i := range 10 {
		long[0] = byte('a' + i)
		c.fill(long, keyMeta{mod: 1})
		if n := len(c.cur.keys) + len(c.old.keys); n > 1000 {
			t.Fatalf("cache holds %d key bytes, bound 1000", n)
		}
	}
	if m, ok := c.get(long); !ok || m.mod != 1 {
		t.Fatalf("the last long key = %+v, %v; want cached", m, ok)
	}
	c.fill(bytes.Repeat([]byte("k"), 600), keyMeta{mod: 1}) // longer than a generation
	if _, ok := c.get(bytes.Repeat([]byte("k"), 600)); ok {
		t.Fatal("a key longer than a generation's bytes was cached")
	}
}
