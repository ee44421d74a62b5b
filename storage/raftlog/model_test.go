package raftlog

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/hashicorp/raft"
)

// TestAgainstInmemStore runs random sequences of the calls raft makes, on
// a Store, on a Cache over a Store, and on raft's in-memory store as the
// model, reopening the Store between steps, and compares every answer.
func TestAgainstInmemStore(t *testing.T) {
	seeds := 8
	if testing.Short() {
		seeds = 2
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { randomRun(t, seed, 200) })
	}
}

func randomRun(t *testing.T, seed uint64, steps int) {
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	opts := quietOptions(nil)
	opts.SegmentSize = int64(512 + rng.IntN(4096))
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	cache := NewCache(s, 1+rng.IntN(4000))
	model := raft.NewInmemStore()
	gen := 0
	for step := range steps {
		first, _ := model.FirstIndex()
		last, _ := model.LastIndex()
		var what string
		var got, want error
		switch p := rng.IntN(100); {
		case p < 40: // append
			from := last + 1
			if last == 0 {
				from = 1 + rng.Uint64N(1000)
			}
			gen++
			logs := randomLogs(rng, from, 1+rng.IntN(20), gen)
			what = fmt.Sprintf("store %d+%d", from, len(logs))
			got, want = cache.StoreLogs(logs), model.StoreLogs(logs)
		case p < 50 && last != 0: // compact a prefix, or all
			max := first + rng.Uint64N(last-first+2)
			what = fmt.Sprintf("delete %d-%d", first, max)
			got, want = cache.DeleteRange(first, max), model.DeleteRange(first, max)
		case p < 60 && last > first: // a conflicting suffix
			min := first + 1 + rng.Uint64N(last-first)
			what = fmt.Sprintf("delete %d-%d", min, last)
			got, want = cache.DeleteRange(min, last+rng.Uint64N(3)), model.DeleteRange(min, last)
		case p < 70:
			k, v := fmt.Sprintf("k%d", rng.IntN(4)), fmt.Appendf(nil, "v%d", step)
			what = "set " + k
			got, want = s.Set([]byte(k), v), model.Set([]byte(k), v)
		case p < 75:
			k, v := fmt.Sprintf("n%d", rng.IntN(3)), rng.Uint64()
			what = "set uint64 " + k
			got, want = s.SetUint64([]byte(k), v), model.SetUint64([]byte(k), v)
		case p < 82:
			what = "reopen"
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = Open(dir, opts); err != nil {
				t.Fatalf("step %d: reopen: %v", step, err)
			}
			cache = NewCache(s, 1+rng.IntN(4000))
		default:
			what = "read"
		}
		if (got == nil) != (want == nil) {
			t.Fatalf("step %d %s: store says %v, model %v", step, what, got, want)
		}
		compare(t, step, what, rng, s, cache, model)
	}
}

func randomLogs(rng *rand.Rand, from uint64, n, gen int) []*raft.Log {
	logs := make([]*raft.Log, n)
	for i := range logs {
		l := &raft.Log{Index: from + uint64(i), Term: uint64(gen), Type: raft.LogType(rng.IntN(6)),
			Data: fmt.Appendf(nil, "%d/%d/%s", from+uint64(i), gen, bytes.Repeat([]byte{'d'}, rng.IntN(300)))}
		if rng.IntN(3) == 0 {
			l.Extensions = []byte("ext")
		}
		logs[i] = l
	}
	return logs
}

func compare(t *testing.T, step int, what string, rng *rand.Rand, s *Store, cache *Cache, model *raft.InmemStore) {
	t.Helper()
	mf, _ := model.FirstIndex()
	ml, _ := model.LastIndex()
	for _, st := range []raft.LogStore{s, cache} {
		f, err1 := st.FirstIndex()
		l, err2 := st.LastIndex()
		if err1 != nil || err2 != nil || f != mf || l != ml {
			t.Fatalf("step %d %s: %T log is [%d, %d] (%v, %v), model [%d, %d]", step, what, st, f, l, err1, err2, mf, ml)
		}
		probe := []uint64{0, mf - 1, mf, ml, ml + 1, mf + rng.Uint64N(ml-mf+1)}
		for _, i := range probe {
			var got, want raft.Log
			gerr, werr := st.GetLog(i, &got), model.GetLog(i, &want)
			if gerr != werr { // both nil or both raft.ErrLogNotFound itself
				t.Fatalf("step %d %s: %T GetLog(%d) = %v, model %v", step, what, st, i, gerr, werr)
			}
			if gerr == nil && (!sameEntry(&got, &want) || !bytes.Equal(got.Extensions, want.Extensions)) {
				t.Fatalf("step %d %s: %T GetLog(%d) = %+v, model %+v", step, what, st, i, got, want)
			}
		}
	}
	for i := range 4 {
		k := []byte(fmt.Sprintf("k%d", i))
		got, err := s.Get(k)
		want, werr := model.Get(k)
		if err != nil || (werr != nil) != (got == nil) || !bytes.Equal(got, want) {
			t.Fatalf("step %d %s: Get(%s) = %q, %v; model %q, %v", step, what, k, got, err, want, werr)
		}
	}
	for i := range 3 {
		k := []byte(fmt.Sprintf("n%d", i))
		got, err := s.GetUint64(k)
		want, _ := model.GetUint64(k)
		if err != nil || got != want {
			t.Fatalf("step %d %s: GetUint64(%s) = %d, %v; model %d", step, what, k, got, err, want)
		}
	}
}
