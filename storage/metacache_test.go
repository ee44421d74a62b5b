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
	}
	stores[1].s.metas = newMetaCache(3)
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
	if n := len(stores[1].s.metas.m); n > 3 {
		t.Fatalf("tiny cache holds %d keys, bound 3", n)
	}
	if len(stores[0].s.metas.m) == 0 {
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
