package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"
)

// model is what a store should hold: the log and the stable keys.
type model struct {
	first, last uint64
	logs        map[uint64]*raft.Log
	kv          map[string]string
}

func newModel() model { return model{logs: map[uint64]*raft.Log{}, kv: map[string]string{}} }

func (m model) clone() model {
	c := m
	c.logs = maps.Clone(m.logs)
	c.kv = maps.Clone(m.kv)
	return c
}

// op is one call that writes.
type op struct {
	kind     string // "store", "delete", "set"
	logs     []*raft.Log
	min, max uint64
	key, val string
}

func (o op) String() string {
	switch o.kind {
	case "store":
		return fmt.Sprintf("store %d-%d", o.logs[0].Index, o.logs[len(o.logs)-1].Index)
	case "delete":
		return fmt.Sprintf("delete %d-%d", o.min, o.max)
	}
	return fmt.Sprintf("set %s=%s", o.key, o.val)
}

func (o op) do(s *Store) error {
	switch o.kind {
	case "store":
		return s.StoreLogs(o.logs)
	case "delete":
		return s.DeleteRange(o.min, o.max)
	}
	return s.Set([]byte(o.key), []byte(o.val))
}

// apply does o to m as the store does it (doc.go: gaps).
func (m *model) apply(o op) {
	switch o.kind {
	case "store":
		if m.last != 0 && o.logs[0].Index > m.last+1 {
			*m = model{logs: map[uint64]*raft.Log{}, kv: m.kv}
		}
		for _, l := range o.logs {
			m.logs[l.Index] = l
		}
		if m.last == 0 {
			m.first = o.logs[0].Index
		}
		m.last = o.logs[len(o.logs)-1].Index
	case "delete":
		for i := max(o.min, m.first); i <= min(o.max, m.last); i++ {
			delete(m.logs, i)
		}
		if o.min <= m.first {
			m.first = o.max + 1
		}
		if o.max >= m.last {
			m.last = o.min - 1
		}
		if m.first > m.last {
			m.first, m.last = 0, 0
		}
	case "set":
		m.kv[o.key] = o.val
	}
}

// entry makes entry i of generation gen: a suffix written again gets
// other data, so that an old entry coming back shows.
func entry(i uint64, gen int) *raft.Log {
	return &raft.Log{Index: i, Term: uint64(gen), Type: raft.LogCommand,
		Data: fmt.Appendf(nil, "%d/%d/%s", i, gen, strings.Repeat("z", int(i*7%90)))}
}

func entries(from, to uint64, gen int) []*raft.Log {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, entry(i, gen))
	}
	return logs
}

// workload is a run of writes that rolls segments (of 2 KiB), deletes
// prefixes, suffixes and everything, writes the stable keys and appends
// after a gap.
func workload() []op {
	st := func(from, to uint64, gen int) op { return op{kind: "store", logs: entries(from, to, gen)} }
	del := func(min, max uint64) op { return op{kind: "delete", min: min, max: max} }
	set := func(k, v string) op { return op{kind: "set", key: k, val: v} }
	return []op{
		set("CurrentTerm", "1"),
		st(1, 5, 1), st(6, 30, 1), st(31, 31, 1),
		set("LastVoteCand", "n1"), set("CurrentTerm", "2"),
		del(1, 10),
		st(32, 60, 2),
		del(50, 60),
		st(50, 55, 3),
		del(11, 55),
		st(100, 110, 4),
		st(200, 205, 5),
		del(200, 203),
		st(206, 240, 5),
		set("CurrentTerm", "3"),
	}
}

func quietOptions(fs FS) Options {
	return Options{FS: fs, SegmentSize: 2048, Logger: slog.New(slog.DiscardHandler)}
}

// checkExact checks that s holds what m holds.
func checkExact(t *testing.T, s *Store, m model) {
	t.Helper()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	if first != m.first || last != m.last {
		t.Fatalf("log is [%d, %d], want [%d, %d]", first, last, m.first, m.last)
	}
	for i := m.first; i <= m.last && m.last != 0; i++ {
		checkEntry(t, s, i, m.logs[i])
	}
	for k, v := range m.kv {
		if got, err := s.Get([]byte(k)); err != nil || string(got) != v {
			t.Fatalf("Get(%s) = %q, %v; want %q", k, got, err, v)
		}
	}
}

func checkEntry(t *testing.T, s *Store, i uint64, want *raft.Log) {
	t.Helper()
	var got raft.Log
	if err := s.GetLog(i, &got); err != nil {
		t.Fatalf("GetLog(%d): %v", i, err)
	}
	if !sameEntry(&got, want) {
		t.Fatalf("GetLog(%d) = %d/%d/%q, want %+v", i, got.Index, got.Term, got.Data, want)
	}
}

func sameEntry(a, b *raft.Log) bool {
	return a != nil && b != nil && a.Index == b.Index && a.Term == b.Term && a.Type == b.Type && bytes.Equal(a.Data, b.Data)
}

// checkBetween checks that s holds a state that a crash in the middle of
// the op from before to after may leave: a run of entries each of which
// one of the two holds, with every entry that both hold; each stable key
// as in one of them.
func checkBetween(t *testing.T, s *Store, before, after model) {
	t.Helper()
	first, _ := s.FirstIndex()
	last, _ := s.LastIndex()
	for i := first; i <= last && last != 0; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d) in [%d, %d]: %v", i, first, last, err)
		}
		if !sameEntry(&got, before.logs[i]) && !sameEntry(&got, after.logs[i]) {
			t.Fatalf("entry %d is %d/%q: neither before (%v) nor after (%v) the failed op", i, got.Term, got.Data, before.logs[i], after.logs[i])
		}
	}
	for i, l := range before.logs {
		if sameEntry(l, after.logs[i]) && (i < first || i > last || last == 0) {
			t.Fatalf("entry %d, held before and after the failed op, is gone: log is [%d, %d]", i, first, last)
		}
	}
	for k := range after.kv {
		got, _ := s.Get([]byte(k))
		v, ok := before.kv[k]
		if (ok && string(got) != v || !ok && got != nil) && string(got) != after.kv[k] {
			t.Fatalf("Get(%s) = %q: neither %q nor %q", k, got, v, after.kv[k])
		}
	}
}

// TestFaults fails each file operation the workload makes, one at a time,
// and checks that the store then refuses writes (or, for a segment whose
// creation failed before its rename, that nothing changed and a retry
// works), and that reopening gives a consistent state.
func TestFaults(t *testing.T) {
	clean := newFaultFS("", 0, nil)
	s, err := Open(t.TempDir(), quietOptions(clean))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range workload() {
		if err := o.do(s); err != nil {
			t.Fatalf("%v: %v", o, err)
		}
	}
	s.Close()
	t.Logf("file operations in the workload: %v", clean.count)

	for _, name := range []string{"create", "write", "sync", "allocate", "truncate", "rename", "remove", "syncdir"} {
		for n := 1; n <= clean.count[name]; n++ {
			for _, half := range []bool{false, true} {
				if half && name != "write" {
					continue
				}
				t.Run(fmt.Sprintf("%s-%d-half=%v", name, n, half), func(t *testing.T) {
					fault := syscall.EIO
					if name == "allocate" {
						fault = syscall.ENOSPC
					}
					ffs := newFaultFS(name, n, fault)
					ffs.half = half
					runFault(t, ffs)
				})
			}
		}
	}
}

func runFault(t *testing.T, ffs *faultFS) {
	dir := t.TempDir()
	reopen := func() *Store { return openStore(t, dir, quietOptions(nil)) }
	s, err := Open(dir, quietOptions(ffs))
	if err != nil {
		if !ffs.fired {
			t.Fatalf("Open failed with no fault: %v", err)
		}
		checkExact(t, reopen(), newModel())
		return
	}
	defer s.Close()
	m := newModel()
	for _, o := range workload() {
		after := m.clone()
		after.apply(o)
		err := o.do(s)
		if err == nil {
			m = after
			continue
		}
		if !ffs.fired {
			t.Fatalf("%v failed with no fault: %v", o, err)
		}
		t.Logf("%v failed: %v", o, err)
		if !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("%v: error does not carry the cause: %v", o, err)
		}
		if s.failed == nil {
			// A clean failure: nothing changed, and a retry works.
			t.Logf("clean failure")
			checkExact(t, s, m)
			if err := o.do(s); err != nil {
				t.Fatalf("%v again after a clean failure: %v", o, err)
			}
			checkExact(t, s, after)
			m = after
			continue
		}
		for _, o2 := range []op{o, {kind: "set", key: "k", val: "v"}, {kind: "delete", min: 1, max: 1 << 40}} {
			if err := o2.do(s); err == nil || !strings.Contains(err.Error(), "earlier write failed") {
				t.Fatalf("%v after a failed write: %v; want a refusal", o2, err)
			}
		}
		// What was acknowledged is still served, but what the op drops.
		for i := m.first; i <= m.last && m.last != 0 && o.kind == "store"; i++ {
			if sameEntry(m.logs[i], after.logs[i]) {
				checkEntry(t, s, i, m.logs[i])
			}
		}
		s.Close()
		checkBetween(t, reopen(), m, after)
		return
	}
	s.Close()
	checkExact(t, reopen(), m)
}

// TestFailedSyncRefusesWrites: after a failed fdatasync of an append, the
// store refuses writes, serves what it acknowledged, and a reopen finds
// the log as it was before the failed append.
func TestFailedSyncRefusesWrites(t *testing.T) {
	dir := t.TempDir()
	ffs := newFaultFS("", 0, syscall.EIO)
	opts := quietOptions(ffs)
	var heard []error
	opts.OnFail = func(err error) { heard = append(heard, err) }
	s := openStore(t, dir, opts)
	for i := uint64(1); i <= 40; i += 5 {
		if err := s.StoreLogs(entries(i, i+4, 1)); err != nil {
			t.Fatal(err)
		}
	}
	ffs.mu.Lock()
	ffs.op, ffs.n = "sync", ffs.count["sync"]+1
	ffs.mu.Unlock()
	if err := s.StoreLogs(entries(41, 45, 1)); !errors.Is(err, syscall.EIO) {
		t.Fatalf("StoreLogs with a failing sync: %v", err)
	}
	if err := s.StoreLogs(entries(41, 45, 1)); err == nil {
		t.Fatal("StoreLogs after a failed sync succeeded")
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 9); err == nil {
		t.Fatal("Set after a failed sync succeeded")
	}
	if len(heard) != 1 || !errors.Is(heard[0], syscall.EIO) {
		t.Fatalf("OnFail heard %v, want the one failed sync", heard)
	}
	want := newModel()
	want.apply(op{kind: "store", logs: entries(1, 40, 1)})
	checkExact(t, s, want)
	s.Close()
	checkExact(t, openStore(t, dir, quietOptions(nil)), want)
}

// TestFullDiskAtSegmentCreation: with no room to allocate a segment,
// StoreLogs fails with ENOSPC, changes nothing, and works once there is
// room again.
func TestFullDiskAtSegmentCreation(t *testing.T) {
	dir := t.TempDir()
	ffs := newFaultFS("", 0, syscall.ENOSPC)
	s := openStore(t, dir, quietOptions(ffs))
	if err := s.StoreLogs(entries(1, 5, 1)); err != nil {
		t.Fatal(err)
	}
	ffs.mu.Lock()
	ffs.op, ffs.n = "allocate", ffs.count["allocate"]+1
	ffs.mu.Unlock()
	big := entries(6, 60, 1) // does not fit in the 2 KiB segment
	if err := s.StoreLogs(big); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("StoreLogs on a full disk: %v, want ENOSPC", err)
	}
	want := newModel()
	want.apply(op{kind: "store", logs: entries(1, 5, 1)})
	checkExact(t, s, want)
	if n := len(segFiles(t, dir)); n != 1 {
		t.Fatalf("%d segment files after the failed creation, want 1", n)
	}
	if err := s.StoreLogs(big); err != nil {
		t.Fatalf("StoreLogs once there is room: %v", err)
	}
	want.apply(op{kind: "store", logs: big})
	s.Close()
	checkExact(t, openStore(t, dir, quietOptions(nil)), want)
}
