package storage

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
)

// The helpers of this file carry a kv prefix so they cannot collide with the
// raft log store's tests in the same package.

func kvTestLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// kvOpen opens the store in dir and closes it when the test ends, unless
// the test closed it first with kvClose.
func kvOpen(t *testing.T, dir string) *KV {
	t.Helper()
	s, err := OpenKV(dir, kvTestLogger(t), Options{})
	if err != nil {
		t.Fatalf("OpenKV: %v", err)
	}
	kvOpenStores[s] = true
	t.Cleanup(func() {
		if kvOpenStores[s] {
			delete(kvOpenStores, s)
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	})
	return s
}

// kvOpenStores tracks the stores kvOpen opened and nobody closed yet. Tests
// in this file do not run in parallel, so a plain map is enough.
var kvOpenStores = map[*KV]bool{}

func kvClose(t *testing.T, s *KV) {
	t.Helper()
	delete(kvOpenStores, s)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func kvNew(t *testing.T) *KV {
	t.Helper()
	return kvOpen(t, t.TempDir())
}

// kvApply applies one entry at index in its own batch and commits it.
func kvApply(t *testing.T, s *KV, index uint64, fn func(b *Batch)) {
	t.Helper()
	b := s.NewBatch()
	if err := b.Begin(index); err != nil {
		t.Fatalf("Begin(%d): %v", index, err)
	}
	fn(b)
	if err := b.Commit(); err != nil {
		t.Fatalf("Commit(%d): %v", index, err)
	}
}

func kvPut(t *testing.T, b *Batch, key, value string) (KeyValue, bool) {
	t.Helper()
	prev, existed, err := b.Put([]byte(key), []byte(value), 0, true)
	if err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
	return prev, existed
}

func kvDel(t *testing.T, b *Batch, start, end string, wantPrev bool) (int64, []KeyValue) {
	t.Helper()
	n, prev, err := b.DeleteRange([]byte(start), []byte(end), wantPrev)
	if err != nil {
		t.Fatalf("DeleteRange(%q, %q): %v", start, end, err)
	}
	return n, prev
}

func kvGet(t *testing.T, s *KV, rev uint64, key string) (KeyValue, bool) {
	t.Helper()
	kv, ok, err := s.Get(rev, []byte(key))
	if err != nil {
		t.Fatalf("Get(%d, %q): %v", rev, key, err)
	}
	return kv, ok
}

func kvRange(t *testing.T, s *KV, rev uint64, start, end string, opts RangeOptions) RangeResult {
	t.Helper()
	res, err := s.Range(rev, []byte(start), []byte(end), opts)
	if err != nil {
		t.Fatalf("Range(%d, %q, %q): %v", rev, start, end, err)
	}
	return res
}

func kvWant(t *testing.T, got KeyValue, ok bool, key, value string, create, mod, version int64) {
	t.Helper()
	if !ok {
		t.Fatalf("key %q missing, want %q c=%d m=%d v=%d", key, value, create, mod, version)
	}
	want := KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: create, ModRevision: mod, Version: version}
	if !kvEqual(got, want) {
		t.Fatalf("key %q = %s, want %s", key, kvString(got), kvString(want))
	}
}

func kvEqual(a, b KeyValue) bool {
	return bytes.Equal(a.Key, b.Key) && bytes.Equal(a.Value, b.Value) &&
		a.CreateRevision == b.CreateRevision && a.ModRevision == b.ModRevision && a.Version == b.Version
}

func kvString(kv KeyValue) string {
	value := fmt.Sprintf("%q", kv.Value)
	if len(kv.Value) > 64 {
		// Long values compare by length and checksum: cheaper to format.
		value = fmt.Sprintf("<%d bytes, crc %08x>", len(kv.Value), crc32.ChecksumIEEE(kv.Value))
	}
	return fmt.Sprintf("{%q=%s c=%d m=%d v=%d}", kv.Key, value, kv.CreateRevision, kv.ModRevision, kv.Version)
}

func kvKeys(kvs []KeyValue) []string {
	out := []string{}
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func kvWantKeys(t *testing.T, res RangeResult, keys ...string) {
	t.Helper()
	if got := kvKeys(res.KVs); !reflect.DeepEqual(got, append([]string{}, keys...)) {
		t.Fatalf("range keys = %q, want %q", got, keys)
	}
}

// kvDump reads every key at rev, values and counters included.
func kvDump(t *testing.T, s *KV, rev uint64) []string {
	t.Helper()
	res := kvRange(t, s, rev, "", "\x00", RangeOptions{})
	out := []string{}
	for _, kv := range res.KVs {
		out = append(out, kvString(kv))
	}
	if int64(len(res.KVs)) != res.Count || res.More {
		t.Fatalf("full range at %d: %d pairs, count %d, more %v", rev, len(res.KVs), res.Count, res.More)
	}
	return out
}

func TestKVPutGetCommit(t *testing.T) {
	s := kvNew(t)
	if got := s.AppliedIndex(); got != 0 {
		t.Fatalf("fresh AppliedIndex = %d", got)
	}
	if _, ok := kvGet(t, s, 0, "a"); ok {
		t.Fatal("fresh store has key a")
	}

	b := s.NewBatch()
	if err := b.Begin(5); err != nil {
		t.Fatal(err)
	}
	if prev, existed := kvPut(t, b, "a", "1"); existed || prev.Key != nil {
		t.Fatalf("first put: prev %s existed %v", kvString(prev), existed)
	}
	// Not visible outside the batch before Commit.
	if _, ok := kvGet(t, s, 0, "a"); ok {
		t.Fatal("uncommitted write visible")
	}
	if s.AppliedIndex() != 0 {
		t.Fatal("AppliedIndex moved before Commit")
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if got := s.AppliedIndex(); got != 5 {
		t.Fatalf("AppliedIndex = %d, want 5", got)
	}
	kv, ok := kvGet(t, s, 0, "a")
	kvWant(t, kv, ok, "a", "1", 5, 5, 1)

	// Begin must increase.
	b = s.NewBatch()
	if err := b.Begin(7); err != nil {
		t.Fatal(err)
	}
	if err := b.Begin(7); err == nil {
		t.Fatal("Begin(7) after Begin(7) accepted")
	}
	if err := b.Begin(6); err == nil {
		t.Fatal("Begin(6) after Begin(7) accepted")
	}
	b.Discard()
	if s.AppliedIndex() != 5 {
		t.Fatal("Discard moved AppliedIndex")
	}

	// A batch with no entry commits nothing.
	b = s.NewBatch()
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if s.AppliedIndex() != 5 {
		t.Fatal("empty batch moved AppliedIndex")
	}

	// An entry that writes nothing still advances the applied index.
	kvApply(t, s, 9, func(*Batch) {})
	if s.AppliedIndex() != 9 {
		t.Fatalf("AppliedIndex = %d, want 9", s.AppliedIndex())
	}
}

func TestKVRevisionsAndVersions(t *testing.T) {
	s := kvNew(t)
	kvApply(t, s, 2, func(b *Batch) { kvPut(t, b, "k", "v1") })
	kvApply(t, s, 3, func(b *Batch) {
		prev, existed := kvPut(t, b, "k", "v2")
		kvWant(t, prev, existed, "k", "v1", 2, 2, 1)
	})
	kv, ok := kvGet(t, s, 0, "k")
	kvWant(t, kv, ok, "k", "v2", 2, 3, 2)

	kvApply(t, s, 4, func(b *Batch) {
		n, prev := kvDel(t, b, "k", "", true)
		if n != 1 || len(prev) != 1 {
			t.Fatalf("delete: n=%d prev=%d", n, len(prev))
		}
		kvWant(t, prev[0], true, "k", "v2", 2, 3, 2)
		// Deleting a missing key deletes nothing.
		if n, _ := kvDel(t, b, "k", "", true); n != 0 {
			t.Fatalf("second delete n=%d", n)
		}
	})
	if _, ok := kvGet(t, s, 0, "k"); ok {
		t.Fatal("deleted key visible")
	}

	kvApply(t, s, 6, func(b *Batch) {
		if _, existed := kvPut(t, b, "k", "v3"); existed {
			t.Fatal("put after delete reports a previous pair")
		}
	})
	kv, ok = kvGet(t, s, 0, "k")
	kvWant(t, kv, ok, "k", "v3", 6, 6, 1)
	kvApply(t, s, 7, func(b *Batch) { kvPut(t, b, "k", "v4") })
	kv, ok = kvGet(t, s, 0, "k")
	kvWant(t, kv, ok, "k", "v4", 6, 7, 2)

	// Every past revision reads as it was.
	for _, c := range []struct {
		rev    uint64
		value  string
		c, m   int64
		ver    int64
		exists bool
	}{
		{1, "", 0, 0, 0, false},
		{2, "v1", 2, 2, 1, true},
		{3, "v2", 2, 3, 2, true},
		{4, "", 0, 0, 0, false},
		{5, "", 0, 0, 0, false},
		{6, "v3", 6, 6, 1, true},
		{7, "v4", 6, 7, 2, true},
	} {
		kv, ok := kvGet(t, s, c.rev, "k")
		if !c.exists {
			if ok {
				t.Fatalf("rev %d: key exists: %s", c.rev, kvString(kv))
			}
			res := kvRange(t, s, c.rev, "", "\x00", RangeOptions{})
			if res.Count != 0 || len(res.KVs) != 0 {
				t.Fatalf("rev %d: range has %d", c.rev, res.Count)
			}
			continue
		}
		kvWant(t, kv, ok, "k", c.value, c.c, c.m, c.ver)
		res := kvRange(t, s, c.rev, "", "\x00", RangeOptions{})
		if res.Count != 1 || !kvEqual(res.KVs[0], kv) {
			t.Fatalf("rev %d: range = %v", c.rev, res.KVs)
		}
	}
}

func TestKVFutureRevision(t *testing.T) {
	s := kvNew(t)
	kvApply(t, s, 3, func(b *Batch) { kvPut(t, b, "a", "1") })
	if _, _, err := s.Get(4, []byte("a")); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("Get at 4: %v", err)
	}
	if _, err := s.Range(100, []byte("a"), nil, RangeOptions{}); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("Range at 100: %v", err)
	}
	if _, ok := kvGet(t, s, 3, "a"); !ok {
		t.Fatal("read at the applied index failed")
	}
}

func kvFill(t *testing.T, s *KV, index uint64, pairs ...string) {
	t.Helper()
	kvApply(t, s, index, func(b *Batch) {
		for i := 0; i < len(pairs); i += 2 {
			kvPut(t, b, pairs[i], pairs[i+1])
		}
	})
}

func TestKVRangeBounds(t *testing.T) {
	s := kvNew(t)
	kvFill(t, s, 1,
		"", "empty-key",
		"a", "1", "a\x00", "2", "ab", "3", "abc", "4", "b", "5",
		"b\xff", "6", "b\xff\xff", "7", "c", "8",
		"\xff", "9", "\xff\xff", "10", "\xff\xff\x00", "11")

	cases := []struct {
		name       string
		start, end string
		want       []string
	}{
		{"single", "a", "", []string{"a"}},
		{"single missing", "aa", "", []string{}},
		{"single empty key", "", "", []string{""}},
		{"half open", "a", "b", []string{"a", "a\x00", "ab", "abc"}},
		{"half open excludes end", "ab", "abc", []string{"ab"}},
		{"from start on", "b\xff", "\x00", []string{"b\xff", "b\xff\xff", "c", "\xff", "\xff\xff", "\xff\xff\x00"}},
		{"everything", "", "\x00", []string{"", "a", "a\x00", "ab", "abc", "b", "b\xff", "b\xff\xff", "c", "\xff", "\xff\xff", "\xff\xff\x00"}},
		{"end before start", "c", "b", []string{}},
		{"prefix a", "a", string(PrefixEnd([]byte("a"))), []string{"a", "a\x00", "ab", "abc"}},
		{"prefix ab", "ab", string(PrefixEnd([]byte("ab"))), []string{"ab", "abc"}},
		{"prefix b\\xff", "b\xff", string(PrefixEnd([]byte("b\xff"))), []string{"b\xff", "b\xff\xff"}},
		{"prefix \\xff", "\xff", string(PrefixEnd([]byte("\xff"))), []string{"\xff", "\xff\xff", "\xff\xff\x00"}},
		{"prefix \\xff\\xff", "\xff\xff", string(PrefixEnd([]byte("\xff\xff"))), []string{"\xff\xff", "\xff\xff\x00"}},
		{"prefix empty", "", string(PrefixEnd(nil)), []string{"", "a", "a\x00", "ab", "abc", "b", "b\xff", "b\xff\xff", "c", "\xff", "\xff\xff", "\xff\xff\x00"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res := kvRange(t, s, 0, c.start, c.end, RangeOptions{})
			kvWantKeys(t, res, c.want...)
			if res.Count != int64(len(c.want)) || res.More {
				t.Fatalf("count %d more %v", res.Count, res.More)
			}
		})
	}

	for _, c := range []struct{ in, want string }{
		{"a", "b"},
		{"ab", "ac"},
		{"a\xff", "b"},
		{"a\xff\xff", "b"},
		{"\xfe\xff", "\xff"},
		{"\xff", "\x00"},
		{"\xff\xff", "\x00"},
		{"", "\x00"},
	} {
		in := []byte(c.in)
		orig := bytes.Clone(in)
		if got := PrefixEnd(in); string(got) != c.want {
			t.Errorf("PrefixEnd(%q) = %q, want %q", c.in, got, c.want)
		}
		if !bytes.Equal(in, orig) {
			t.Errorf("PrefixEnd modified its argument %q", c.in)
		}
	}
}

func TestKVRangeShape(t *testing.T) {
	s := kvNew(t)
	var pairs []string
	for i := range 10 {
		pairs = append(pairs, fmt.Sprintf("k%02d", i), fmt.Sprintf("value-%02d", i))
	}
	kvFill(t, s, 1, pairs...)
	// A key outside the range must not be counted.
	kvFill(t, s, 2, "z", "outside")

	t.Run("limit", func(t *testing.T) {
		res := kvRange(t, s, 0, "k", "l", RangeOptions{Limit: 3})
		kvWantKeys(t, res, "k00", "k01", "k02")
		if !res.More || res.Count != 10 {
			t.Fatalf("more %v count %d", res.More, res.Count)
		}
		if string(res.KVs[1].Value) != "value-01" || res.KVs[1].Version != 1 || res.KVs[1].CreateRevision != 1 {
			t.Fatalf("pair = %s", kvString(res.KVs[1]))
		}
	})
	t.Run("limit exact", func(t *testing.T) {
		res := kvRange(t, s, 0, "k", "l", RangeOptions{Limit: 10})
		if len(res.KVs) != 10 || res.More || res.Count != 10 {
			t.Fatalf("len %d more %v count %d", len(res.KVs), res.More, res.Count)
		}
	})
	t.Run("limit over", func(t *testing.T) {
		res := kvRange(t, s, 0, "k", "l", RangeOptions{Limit: 11})
		if len(res.KVs) != 10 || res.More || res.Count != 10 {
			t.Fatalf("len %d more %v count %d", len(res.KVs), res.More, res.Count)
		}
	})
	t.Run("paging", func(t *testing.T) {
		var got []string
		start := "k"
		for page := 0; ; page++ {
			if page > 10 {
				t.Fatal("paging does not end")
			}
			res := kvRange(t, s, 2, start, "l", RangeOptions{Limit: 4})
			got = append(got, kvKeys(res.KVs)...)
			if !res.More {
				break
			}
			start = string(res.KVs[len(res.KVs)-1].Key) + "\x00"
		}
		if len(got) != 10 || got[0] != "k00" || got[9] != "k09" {
			t.Fatalf("pages = %q", got)
		}
	})
	t.Run("max bytes", func(t *testing.T) {
		// Each pair is 3+8 = 11 bytes: a budget of 25 fills after the third.
		res := kvRange(t, s, 0, "k", "l", RangeOptions{MaxBytes: 25})
		kvWantKeys(t, res, "k00", "k01", "k02")
		if !res.More || res.Count != 10 {
			t.Fatalf("more %v count %d", res.More, res.Count)
		}
		// Exactly two pairs' worth stops after two.
		res = kvRange(t, s, 0, "k", "l", RangeOptions{MaxBytes: 22})
		kvWantKeys(t, res, "k00", "k01")
		// A budget smaller than one pair still returns one.
		res = kvRange(t, s, 0, "k", "l", RangeOptions{MaxBytes: 1})
		kvWantKeys(t, res, "k00")
		if !res.More {
			t.Fatal("more not set")
		}
		// Limit and bytes together: the tighter wins.
		res = kvRange(t, s, 0, "k", "l", RangeOptions{MaxBytes: 1000, Limit: 2})
		kvWantKeys(t, res, "k00", "k01")
	})
	t.Run("keys only", func(t *testing.T) {
		res := kvRange(t, s, 0, "k", "l", RangeOptions{KeysOnly: true, Limit: 2})
		kvWantKeys(t, res, "k00", "k01")
		for _, kv := range res.KVs {
			if kv.Value != nil || kv.CreateRevision != 1 || kv.ModRevision != 1 || kv.Version != 1 {
				t.Fatalf("keys-only pair = %s", kvString(kv))
			}
		}
		if !res.More || res.Count != 10 {
			t.Fatalf("more %v count %d", res.More, res.Count)
		}
		// Keys only counts keys only against the byte budget.
		res = kvRange(t, s, 0, "k", "l", RangeOptions{KeysOnly: true, MaxBytes: 9})
		kvWantKeys(t, res, "k00", "k01", "k02")
	})
	t.Run("count only", func(t *testing.T) {
		res := kvRange(t, s, 0, "k", "l", RangeOptions{CountOnly: true, Limit: 2})
		if res.Count != 10 || len(res.KVs) != 0 || res.More {
			t.Fatalf("count-only = %+v", res)
		}
		res = kvRange(t, s, 0, "", "\x00", RangeOptions{CountOnly: true})
		if res.Count != 11 {
			t.Fatalf("count all = %d", res.Count)
		}
		res = kvRange(t, s, 1, "", "\x00", RangeOptions{CountOnly: true})
		if res.Count != 10 {
			t.Fatalf("count all at 1 = %d", res.Count)
		}
	})
}

// TestKVBatchOverlay applies several entries in one batch: each sees the ones
// before it, merged with what Badger already holds, in key order.
func TestKVBatchOverlay(t *testing.T) {
	s := kvNew(t)
	// Badger holds b, d, f, h.
	kvFill(t, s, 1, "b", "b1", "d", "d1", "f", "f1", "h", "h1")

	b := s.NewBatch()
	if err := b.Begin(2); err != nil {
		t.Fatal(err)
	}
	kvPut(t, b, "a", "a2") // new, before every Badger key
	kvPut(t, b, "d", "d2") // overwrites a Badger key
	kvPut(t, b, "e", "e2") // between Badger keys
	kvPut(t, b, "z", "z2") // after every Badger key
	if n, _ := kvDel(t, b, "f", "", false); n != 1 {
		t.Fatalf("delete f: %d", n)
	}
	// Within one entry, later calls see earlier ones too.
	got, ok, err := b.Get([]byte("d"))
	if err != nil {
		t.Fatal(err)
	}
	kvWant(t, got, ok, "d", "d2", 1, 2, 2)

	if err := b.Begin(3); err != nil {
		t.Fatal(err)
	}
	// Entry 3 sees entry 2 through Get...
	got, ok, err = b.Get([]byte("e"))
	if err != nil {
		t.Fatal(err)
	}
	kvWant(t, got, ok, "e", "e2", 2, 2, 1)
	if _, ok, _ := b.Get([]byte("f")); ok {
		t.Fatal("f deleted by entry 2 is visible to entry 3")
	}
	got, ok, _ = b.Get([]byte("h"))
	kvWant(t, got, ok, "h", "h1", 1, 1, 1)
	// ...and through Range, merged in order with Badger's keys.
	res, err := b.Range([]byte(""), []byte("\x00"), RangeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kvWantKeys(t, res, "a", "b", "d", "e", "h", "z")
	if res.Count != 6 || res.More {
		t.Fatalf("count %d more %v", res.Count, res.More)
	}
	kvWant(t, res.KVs[2], true, "d", "d2", 1, 2, 2)
	kvWant(t, res.KVs[1], true, "b", "b1", 1, 1, 1)
	// Limits, counts, keys-only and count-only work over the merge.
	res, err = b.Range([]byte("c"), []byte("\x00"), RangeOptions{Limit: 2, KeysOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	kvWantKeys(t, res, "d", "e")
	if !res.More || res.Count != 4 || res.KVs[0].Value != nil || res.KVs[0].Version != 2 {
		t.Fatalf("page = %+v", res)
	}
	res, err = b.Range([]byte("b"), []byte("f\x00"), RangeOptions{CountOnly: true})
	if err != nil || res.Count != 3 {
		t.Fatalf("count only = %+v, %v", res, err)
	}
	// A single-key range over the overlay.
	res, err = b.Range([]byte("e"), nil, RangeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kvWantKeys(t, res, "e")
	res, err = b.Range([]byte("f"), nil, RangeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kvWantKeys(t, res)

	// Entry 3 changes keys entry 2 wrote: counters follow the overlay.
	prev, existed := kvPut(t, b, "d", "d3")
	kvWant(t, prev, existed, "d", "d2", 1, 2, 2)
	if _, existed := kvPut(t, b, "f", "f3"); existed {
		t.Fatal("f re-created after delete reports a previous pair")
	}
	n, prevs := kvDel(t, b, "a", "c", true)
	if n != 2 || len(prevs) != 2 {
		t.Fatalf("delete [a,c) = %d %v", n, prevs)
	}
	kvWant(t, prevs[0], true, "a", "a2", 2, 2, 1)
	kvWant(t, prevs[1], true, "b", "b1", 1, 1, 1)

	if err := b.Begin(4); err != nil {
		t.Fatal(err)
	}
	// Delete everything from "e" on: overlay and Badger keys alike.
	n, _ = kvDel(t, b, "e", "\x00", false)
	if n != 4 { // e, f, h, z
		t.Fatalf("delete [e, end) = %d", n)
	}
	kvPut(t, b, "g", "g4")
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if s.AppliedIndex() != 4 {
		t.Fatalf("AppliedIndex = %d", s.AppliedIndex())
	}

	// Each revision of the batch is readable on its own afterwards.
	want := map[uint64][]string{
		1: {`{"b"="b1" c=1 m=1 v=1}`, `{"d"="d1" c=1 m=1 v=1}`, `{"f"="f1" c=1 m=1 v=1}`, `{"h"="h1" c=1 m=1 v=1}`},
		2: {`{"a"="a2" c=2 m=2 v=1}`, `{"b"="b1" c=1 m=1 v=1}`, `{"d"="d2" c=1 m=2 v=2}`, `{"e"="e2" c=2 m=2 v=1}`, `{"h"="h1" c=1 m=1 v=1}`, `{"z"="z2" c=2 m=2 v=1}`},
		3: {`{"d"="d3" c=1 m=3 v=3}`, `{"e"="e2" c=2 m=2 v=1}`, `{"f"="f3" c=3 m=3 v=1}`, `{"h"="h1" c=1 m=1 v=1}`, `{"z"="z2" c=2 m=2 v=1}`},
		4: {`{"d"="d3" c=1 m=3 v=3}`, `{"g"="g4" c=4 m=4 v=1}`},
	}
	for rev := uint64(1); rev <= 4; rev++ {
		if got := kvDump(t, s, rev); !reflect.DeepEqual(got, want[rev]) {
			t.Errorf("state at %d:\n got %q\nwant %q", rev, got, want[rev])
		}
	}
	if got := kvDump(t, s, 0); !reflect.DeepEqual(got, want[4]) {
		t.Errorf("latest state:\n got %q\nwant %q", got, want[4])
	}
}

// TestKVBatchLargerThanTxn writes more in one batch than one Badger
// transaction takes, then deletes it all in one entry.
func TestKVBatchLargerThanTxn(t *testing.T) {
	const n = 50_000
	s := kvNew(t)
	value := bytes.Repeat([]byte("v"), 100)
	key := func(i int) []byte { return fmt.Appendf(nil, "key-%06d", i) }

	b := s.NewBatch()
	for e := range 5 {
		if err := b.Begin(uint64(10 + e)); err != nil {
			t.Fatal(err)
		}
		for i := e * n / 5; i < (e+1)*n/5; i++ {
			if _, _, err := b.Put(key(i), value, 0, false); err != nil {
				t.Fatalf("put %d: %v", i, err)
			}
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if s.AppliedIndex() != 14 {
		t.Fatalf("AppliedIndex = %d", s.AppliedIndex())
	}
	res := kvRange(t, s, 0, "key-", string(PrefixEnd([]byte("key-"))), RangeOptions{KeysOnly: true})
	if res.Count != n || len(res.KVs) != n {
		t.Fatalf("count %d len %d", res.Count, len(res.KVs))
	}
	for i, kv := range res.KVs {
		if !bytes.Equal(kv.Key, key(i)) || kv.ModRevision != int64(10+i/(n/5)) || kv.Version != 1 {
			t.Fatalf("pair %d = %s", i, kvString(kv))
		}
	}
	kv, ok := kvGet(t, s, 0, string(key(n-1)))
	kvWant(t, kv, ok, string(key(n-1)), string(value), 14, 14, 1)
	// The revision in the middle of the batch has exactly the first entries.
	if got := kvRange(t, s, 12, "", "\x00", RangeOptions{CountOnly: true}).Count; got != 3*n/5 {
		t.Fatalf("count at 12 = %d", got)
	}

	// One entry deletes them all.
	kvApply(t, s, 15, func(b *Batch) {
		if got, _ := kvDel(t, b, "key-", "\x00", false); got != n {
			t.Fatalf("deleted %d", got)
		}
		// The same entry sees the deletion.
		res, err := b.Range([]byte(""), []byte("\x00"), RangeOptions{CountOnly: true})
		if err != nil || res.Count != 0 {
			t.Fatalf("count after delete = %d, %v", res.Count, err)
		}
	})
	if got := kvRange(t, s, 0, "", "\x00", RangeOptions{CountOnly: true}).Count; got != 0 {
		t.Fatalf("count after delete = %d", got)
	}
	if got := kvRange(t, s, 14, "", "\x00", RangeOptions{CountOnly: true}).Count; got != n {
		t.Fatalf("count at 14 = %d", got)
	}
}

// kvEntry is one scripted entry for the replay tests.
type kvEntry func(t *testing.T, b *Batch) string

// kvScript returns entries 11..20 over keys that entries 1..10 wrote. Each
// returns a string of what it observed, to compare results across runs.
func kvScript(bigValue []byte) map[uint64]kvEntry {
	return map[uint64]kvEntry{
		11: func(t *testing.T, b *Batch) string {
			prev, existed := kvPut(t, b, "counter", "11")
			return fmt.Sprint(kvString(prev), existed)
		},
		12: func(t *testing.T, b *Batch) string {
			// Big enough (in entries: the values sit in the value log) to make
			// Badger commit part of the batch early.
			for i := range 15000 {
				if _, _, err := b.Put(fmt.Appendf(nil, "big-%05d", i), bigValue, 0, false); err != nil {
					t.Fatal(err)
				}
			}
			prev, existed := kvPut(t, b, "counter", "12")
			return fmt.Sprint(kvString(prev), existed)
		},
		13: func(t *testing.T, b *Batch) string {
			n, prev := kvDel(t, b, "k", "l", true)
			return fmt.Sprint(n, len(prev))
		},
		14: func(t *testing.T, b *Batch) string {
			prev, existed := kvPut(t, b, "k3", "again")
			return fmt.Sprint(kvString(prev), existed)
		},
		15: func(t *testing.T, b *Batch) string {
			res, err := b.Range([]byte(""), []byte("\x00"), RangeOptions{CountOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(res.Count)
		},
		16: func(t *testing.T, b *Batch) string {
			n, _ := kvDel(t, b, "big-", "big-01000", false)
			return fmt.Sprint(n)
		},
		17: func(t *testing.T, b *Batch) string {
			prev, existed := kvPut(t, b, "counter", "17")
			return fmt.Sprint(kvString(prev), existed)
		},
		18: func(*testing.T, *Batch) string { return "" },
		19: func(t *testing.T, b *Batch) string {
			kv, ok, err := b.Get([]byte("k3"))
			if err != nil {
				t.Fatal(err)
			}
			return fmt.Sprint(kvString(kv), ok)
		},
		20: func(t *testing.T, b *Batch) string {
			prev, existed := kvPut(t, b, "k5", "twenty")
			return fmt.Sprint(kvString(prev), existed)
		},
	}
}

func kvHistory(t *testing.T, s *KV) {
	t.Helper()
	for i := uint64(1); i <= 10; i++ {
		kvApply(t, s, i, func(b *Batch) {
			kvPut(t, b, fmt.Sprintf("k%d", i%6), fmt.Sprint(i))
			kvPut(t, b, "counter", fmt.Sprint(i))
		})
	}
}

func kvRunScript(t *testing.T, s *KV, script map[uint64]kvEntry, from, to uint64) map[uint64]string {
	t.Helper()
	out := map[uint64]string{}
	b := s.NewBatch()
	for i := from; i <= to; i++ {
		if err := b.Begin(i); err != nil {
			t.Fatal(err)
		}
		out[i] = script[i](t, b)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestKVReplayAfterPartialBatch is the crash case the store is built for: a
// batch too large for one Badger transaction had part of its writes reach
// Badger, at versions above the applied index, and then the node died before
// the batch committed. Replaying the same entries must give exactly the
// state and the results of applying them once.
func TestKVReplayAfterPartialBatch(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 1024)
	script := kvScript(big)

	// The reference: history, then 11..20 applied once.
	ref := kvNew(t)
	kvHistory(t, ref)
	wantResults := kvRunScript(t, ref, script, 11, 20)

	dir := t.TempDir()
	s := kvOpen(t, dir)
	kvHistory(t, s)
	b := s.NewBatch()
	for i := uint64(11); i <= 20; i++ {
		if err := b.Begin(i); err != nil {
			t.Fatal(err)
		}
		script[i](t, b)
	}
	// The crash: the batch never commits.
	b.Discard()
	if s.AppliedIndex() != 10 {
		t.Fatalf("AppliedIndex after discard = %d", s.AppliedIndex())
	}
	// Part of the batch did reach Badger (that is what makes this test
	// meaningful): the counter at version 11 at least.
	txn := s.db.NewTransactionAt(math.MaxUint64, false)
	item, err := txn.Get(userKey([]byte("counter")))
	if err != nil {
		t.Fatal(err)
	}
	if item.Version() < 11 {
		t.Fatalf("no write of the lost batch reached Badger (counter at %d); the test needs a bigger batch", item.Version())
	}
	txn.Discard()
	// Reads at the applied index do not see the leftovers.
	if got, want := kvDump(t, s, 0), kvDump(t, ref, 10); !reflect.DeepEqual(got, want) {
		t.Fatalf("state after the lost batch:\n got %q\nwant %q", got, want)
	}

	// Restart, then replay.
	kvClose(t, s)
	s = kvOpen(t, dir)
	if s.AppliedIndex() != 10 {
		t.Fatalf("AppliedIndex after reopen = %d", s.AppliedIndex())
	}
	gotResults := kvRunScript(t, s, script, 11, 20)
	if !reflect.DeepEqual(gotResults, wantResults) {
		t.Fatalf("replayed results differ:\n got %v\nwant %v", gotResults, wantResults)
	}
	for rev := uint64(1); rev <= 20; rev++ {
		if got, want := kvDump(t, s, rev), kvDump(t, ref, rev); !reflect.DeepEqual(got, want) {
			t.Fatalf("state at %d differs after replay (%d vs %d pairs)", rev, len(got), len(want))
		}
	}

	// Replaying once more on top of a committed batch, as a store whose
	// applied index had not reached disk would, changes nothing either.
	kvClose(t, s)
	s = kvOpen(t, dir)
	again := kvRunScript(t, s, script, 11, 20)
	if !reflect.DeepEqual(again, wantResults) {
		t.Fatalf("second replay results differ:\n got %v\nwant %v", again, wantResults)
	}
	for _, rev := range []uint64{10, 11, 12, 13, 16, 20} {
		if got, want := kvDump(t, s, rev), kvDump(t, ref, rev); !reflect.DeepEqual(got, want) {
			t.Fatalf("state at %d differs after the second replay", rev)
		}
	}
}

func TestKVSnapshotRestore(t *testing.T) {
	src := kvNew(t)
	kvFill(t, src, 1, "a", "a1", "b", "b1", "c", "c1")
	kvFill(t, src, 2, "a", "a2")
	kvApply(t, src, 3, func(b *Batch) { kvDel(t, b, "b", "", false) })
	kvFill(t, src, 5, "b", "b5", "d", "d5")
	kvApply(t, src, 6, func(b *Batch) { kvDel(t, b, "c", "", false) })
	kvFill(t, src, 7, "a", "a7")

	var buf bytes.Buffer
	if err := src.Snapshot(&buf, src.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	// Writes after the snapshot's revision are not in it.
	kvFill(t, src, 8, "e", "e8", "a", "a8")
	var atSix bytes.Buffer
	if err := src.Snapshot(&atSix, 6); err != nil {
		t.Fatal(err)
	}

	dst := kvNew(t)
	if err := dst.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	if dst.AppliedIndex() != 7 {
		t.Fatalf("restored AppliedIndex = %d", dst.AppliedIndex())
	}
	for rev := uint64(1); rev <= 7; rev++ {
		if got, want := kvDump(t, dst, rev), kvDump(t, src, rev); !reflect.DeepEqual(got, want) {
			t.Errorf("restored state at %d:\n got %q\nwant %q", rev, got, want)
		}
	}
	if _, _, err := dst.Get(8, []byte("a")); !errors.Is(err, ErrFutureRevision) {
		t.Fatalf("restored store reads at 8: %v", err)
	}
	// The restored store keeps applying where the snapshot ended.
	kvFill(t, dst, 8, "e", "e8", "a", "a8")
	if got, want := kvDump(t, dst, 0), kvDump(t, src, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("after applying 8:\n got %q\nwant %q", got, want)
	}

	// Restoring over a store with other data replaces it, and a waiter for
	// an index the snapshot covers is released.
	other := kvNew(t)
	kvFill(t, other, 1, "zzz", "other", "a", "other")
	kvFill(t, other, 3, "yyy", "other")
	wait := other.WaitApplied(5)
	if err := other.Restore(bytes.NewReader(atSix.Bytes())); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wait:
	default:
		t.Fatal("waiter for 5 not released by a restore to 6")
	}
	if other.AppliedIndex() != 6 {
		t.Fatalf("restored AppliedIndex = %d", other.AppliedIndex())
	}
	for rev := uint64(1); rev <= 6; rev++ {
		if got, want := kvDump(t, other, rev), kvDump(t, src, rev); !reflect.DeepEqual(got, want) {
			t.Errorf("restored-over state at %d:\n got %q\nwant %q", rev, got, want)
		}
	}

	// A restored store survives a reopen.
	dir := t.TempDir()
	re := kvOpen(t, dir)
	if err := re.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	kvClose(t, re)
	re = kvOpen(t, dir)
	if re.AppliedIndex() != 7 {
		t.Fatalf("reopened restored AppliedIndex = %d", re.AppliedIndex())
	}
	if got, want := kvDump(t, re, 7), kvDump(t, src, 7); !reflect.DeepEqual(got, want) {
		t.Fatalf("reopened restored state:\n got %q\nwant %q", got, want)
	}

	// An empty store's snapshot restores to an empty store.
	empty := kvNew(t)
	var eb bytes.Buffer
	if err := empty.Snapshot(&eb, 0); err != nil {
		t.Fatal(err)
	}
	if err := dst.Restore(&eb); err != nil {
		t.Fatal(err)
	}
	if dst.AppliedIndex() != 0 || len(kvDump(t, dst, 0)) != 0 {
		t.Fatalf("restore of an empty snapshot: applied %d, %d keys", dst.AppliedIndex(), len(kvDump(t, dst, 0)))
	}
}

// TestKVSnapshotRestoreManyLists covers a snapshot written as many lists:
// more versions than one list holds, and values large enough to outgrow a
// list's byte budget (and the buffer its keys and values are copied into)
// part way through, so that any reuse of one list's memory in the next
// would show in the restored store.
func TestKVSnapshotRestoreManyLists(t *testing.T) {
	src := kvNew(t)
	const entries, perEntry, keys = 300, 20, 500
	n := 0
	for index := uint64(1); index <= entries; index++ {
		kvApply(t, src, index, func(b *Batch) {
			if index%10 == 0 {
				kvDel(t, b, fmt.Sprintf("k%03d", index), fmt.Sprintf("k%03d", index+20), false)
				return
			}
			for range perEntry {
				n++
				var value []byte
				switch {
				case n%50 == 0:
					value = bytes.Repeat([]byte{byte(n)}, 300<<10) // value log, outgrows a list
				case n%2 == 0:
					value = fmt.Appendf(nil, "%0300d", n) // value log
				default:
					value = fmt.Appendf(nil, "v%d", n) // inline in the LSM tree
				}
				if _, _, err := b.Put(fmt.Appendf(nil, "k%03d", (n*7)%keys), value, 0, false); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	var snap bytes.Buffer
	if err := src.Snapshot(&snap, entries); err != nil {
		t.Fatal(err)
	}
	// Restore over a running store, and RestoreSorted into a new one (kvd
	// restore), reopened: the same state.
	for _, how := range []string{"Restore", "RestoreSorted"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			dst := kvOpen(t, dir)
			restore := dst.Restore
			if how == "RestoreSorted" {
				restore = dst.RestoreSorted
			}
			if err := restore(bytes.NewReader(snap.Bytes())); err != nil {
				t.Fatal(err)
			}
			kvClose(t, dst)
			dst = kvOpen(t, dir)
			defer kvClose(t, dst)
			if dst.AppliedIndex() != entries {
				t.Fatalf("restored AppliedIndex = %d, want %d", dst.AppliedIndex(), entries)
			}
			for _, rev := range []uint64{1, 9, 10, 11, 50, 149, 150, 151, 299, 300} {
				got, want := kvDump(t, dst, rev), kvDump(t, src, rev)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("restored state at %d differs: %d pairs, want %d", rev, len(got), len(want))
				}
				if len(want) == 0 {
					t.Fatalf("state at %d is empty: the test writes nothing", rev)
				}
			}
			// It takes writes where the snapshot ended.
			kvFill(t, dst, entries+1, "k000", "after")
			if kv, ok := kvGet(t, dst, 0, "k000"); !ok || string(kv.Value) != "after" {
				t.Fatalf("after a write: %v %v", kv, ok)
			}
		})
	}
}

func TestKVWaitApplied(t *testing.T) {
	s := kvNew(t)
	select {
	case <-s.WaitApplied(0):
	default:
		t.Fatal("WaitApplied(0) not closed on a fresh store")
	}
	w3 := s.WaitApplied(3)
	w5 := s.WaitApplied(5)
	w5b := s.WaitApplied(5)
	w9 := s.WaitApplied(9)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	if closed(w3) || closed(w5) {
		t.Fatal("waiters closed early")
	}
	kvApply(t, s, 2, func(*Batch) {})
	if closed(w3) {
		t.Fatal("w3 closed at 2")
	}
	// A discarded batch releases nobody.
	b := s.NewBatch()
	if err := b.Begin(7); err != nil {
		t.Fatal(err)
	}
	b.Discard()
	if closed(w3) {
		t.Fatal("w3 closed by a discarded batch")
	}
	kvApply(t, s, 5, func(b *Batch) { kvPut(t, b, "a", "1") })
	if !closed(w3) || !closed(w5) || !closed(w5b) {
		t.Fatal("waiters at or below 5 not closed by a commit at 5")
	}
	if closed(w9) {
		t.Fatal("w9 closed at 5")
	}
	// Once closed, the data is readable.
	if _, ok := kvGet(t, s, 0, "a"); !ok {
		t.Fatal("write not readable once its waiter closed")
	}
	if !closed(s.WaitApplied(4)) || !closed(s.WaitApplied(5)) {
		t.Fatal("WaitApplied for a reached index is not already closed")
	}
	// Concurrent waiters and a writer.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := uint64(6); i <= 20; i++ {
			<-s.WaitApplied(i)
		}
	}()
	for i := uint64(6); i <= 20; i++ {
		kvApply(t, s, i, func(*Batch) {})
	}
	<-done
	if !closed(w9) {
		t.Fatal("w9 not closed")
	}
}

func TestKVReopen(t *testing.T) {
	dir := t.TempDir()
	s := kvOpen(t, dir)
	kvFill(t, s, 3, "a", "1", "b", "2")
	kvApply(t, s, 4, func(b *Batch) { kvDel(t, b, "b", "", false) })
	kvFill(t, s, 8, "a", "3")
	before := [][]string{kvDump(t, s, 3), kvDump(t, s, 4), kvDump(t, s, 8)}
	kvClose(t, s)

	s = kvOpen(t, dir)
	if s.AppliedIndex() != 8 {
		t.Fatalf("AppliedIndex after reopen = %d", s.AppliedIndex())
	}
	after := [][]string{kvDump(t, s, 3), kvDump(t, s, 4), kvDump(t, s, 8)}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("state after reopen:\n got %q\nwant %q", after, before)
	}
	if _, err := s.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	kvFill(t, s, 9, "a", "4")
	kv, ok := kvGet(t, s, 0, "a")
	kvWant(t, kv, ok, "a", "4", 3, 9, 3)
}

func TestKVOpenErrors(t *testing.T) {
	// A file where the directory should be.
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenKV(f, kvTestLogger(t), Options{}); err == nil {
		s.Close()
		t.Fatal("OpenKV over a file succeeded")
	}
	// The same directory cannot be opened twice.
	dir := t.TempDir()
	kvOpen(t, dir)
	if s, err := OpenKV(dir, kvTestLogger(t), Options{}); err == nil {
		s.Close()
		t.Fatal("second OpenKV of one directory succeeded")
	}
}

func TestKVValueCodec(t *testing.T) {
	for _, c := range []struct {
		create, version int64
		value           []byte
	}{
		{1, 1, nil},
		{1 << 40, 3, []byte("hello")},
		{math.MaxInt64, math.MaxInt64, bytes.Repeat([]byte{0}, 300)},
	} {
		cr, ver, _, val, err := decodeValue(encodeValue(c.create, c.version, 0, c.value))
		if err != nil || cr != c.create || ver != c.version || !bytes.Equal(val, c.value) {
			t.Errorf("round trip %+v = %d %d %q %v", c, cr, ver, val, err)
		}
	}
	for _, bad := range [][]byte{nil, {}, {2, 1, 1}, {valueFormat}, {valueFormat, 1}, {valueFormat, 0x80}} {
		if _, _, _, _, err := decodeValue(bad); !errors.Is(err, ErrCorrupt) {
			t.Errorf("decode %v: %v", bad, err)
		}
	}
}

// TestKVRestoreIsolatedFromReads: reads running while Restore replaces the
// state see it whole before or after, never the empty or half-loaded store
// in between.
func TestKVRestoreIsolatedFromReads(t *testing.T) {
	s := kvNew(t)
	kvApply(t, s, 1, func(b *Batch) {
		for i := range 2000 {
			kvPut(t, b, fmt.Sprintf("k%05d", i), "v")
		}
	})
	var snap bytes.Buffer
	if err := s.Snapshot(&snap, 1); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	bad := make(chan int64, 1)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				res, err := s.Range(0, []byte("k"), PrefixEnd([]byte("k")), RangeOptions{CountOnly: true})
				if err != nil || res.Count != 2000 {
					select {
					case bad <- res.Count:
					default:
					}
					return
				}
			}
		})
	}
	for range 5 {
		if err := s.Restore(bytes.NewReader(snap.Bytes())); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case n := <-bad:
		t.Fatalf("a read during Restore counted %d keys, want 2000", n)
	default:
	}
}

// A batch whose last entry compacts, then a clean close: the store opens
// again at that entry, with the compaction. The applied index on disk once
// took the compacted revision's value (a reused buffer), and the store
// then refused to open as "behind its checkpoint".
func TestCompactionBatchSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := kvOpen(t, dir)
	for idx := uint64(1); idx <= 5; idx++ {
		kvApply(t, s, idx, func(b *Batch) { kvPut(t, b, "k", fmt.Sprint(idx)) })
	}
	kvApply(t, s, 6, func(b *Batch) {
		if err := b.Compact(5, false); err != nil {
			t.Fatal(err)
		}
	})
	kvClose(t, s)
	s = kvOpen(t, dir)
	if got, c := s.AppliedIndex(), s.CompactedRevision(); got != 6 || c != 5 {
		t.Fatalf("reopened at applied %d, compacted %d; want 6 and 5", got, c)
	}
}
