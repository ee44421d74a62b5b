package raftlog

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

func testOptions(t testing.TB) Options {
	return Options{
		SegmentSize: 4096,
		Logger:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
}

// openStore opens a store in dir and closes it at the end of the test.
func openStore(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mkLog(index uint64) *raft.Log {
	return &raft.Log{
		Index: index,
		Term:  index/10 + 1,
		Type:  raft.LogCommand,
		Data:  fmt.Appendf(nil, "data-%d-%s", index, strings.Repeat("x", int(index%50))),
	}
}

func mkLogs(from, to uint64) []*raft.Log {
	var logs []*raft.Log
	for i := from; i <= to; i++ {
		logs = append(logs, mkLog(i))
	}
	return logs
}

func store(t testing.TB, s *Store, from, to uint64) {
	t.Helper()
	if err := s.StoreLogs(mkLogs(from, to)); err != nil {
		t.Fatalf("StoreLogs %d-%d: %v", from, to, err)
	}
}

// checkLog checks that s holds exactly [first, last] as mkLog makes them.
func checkLog(t testing.TB, s *Store, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	l, err := s.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	if f != first || l != last {
		t.Fatalf("log is [%d, %d], want [%d, %d]", f, l, first, last)
	}
	for _, i := range []uint64{first - 1, last + 1} {
		var got raft.Log
		if i == 0 {
			continue
		}
		if err := s.GetLog(i, &got); err != raft.ErrLogNotFound {
			t.Fatalf("GetLog(%d) outside the log: %v, want raft.ErrLogNotFound", i, err)
		}
	}
	if last == 0 {
		return
	}
	for i := first; i <= last; i++ {
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("GetLog(%d): %v", i, err)
		}
		if want := mkLog(i); got.Index != i || got.Term != want.Term || !bytes.Equal(got.Data, want.Data) {
			t.Fatalf("GetLog(%d) = %+v, want %+v", i, got, want)
		}
	}
}

func TestEmptyStore(t *testing.T) {
	s := openStore(t, t.TempDir(), testOptions(t))
	checkLog(t, s, 0, 0)
	var l raft.Log
	for _, i := range []uint64{0, 1, 100} {
		if err := s.GetLog(i, &l); err != raft.ErrLogNotFound {
			t.Fatalf("GetLog(%d) = %v, want raft.ErrLogNotFound", i, err)
		}
	}
	if v, err := s.Get([]byte("CurrentTerm")); v != nil || err != nil {
		t.Fatalf("Get of a missing key = %v, %v; want nil, nil", v, err)
	}
	if v, err := s.GetUint64([]byte("CurrentTerm")); v != 0 || err != nil {
		t.Fatalf("GetUint64 of a missing key = %v, %v; want 0, nil", v, err)
	}
}

// TestRaftAcceptsFreshStore runs raft's own checks of a new store: a
// missing stable key must read as unset, not as an error.
func TestRaftAcceptsFreshStore(t *testing.T) {
	s := openStore(t, t.TempDir(), testOptions(t))
	snaps := raft.NewInmemSnapshotStore()
	has, err := raft.HasExistingState(s, s, snaps)
	if err != nil || has {
		t.Fatalf("HasExistingState = %v, %v; want false, nil", has, err)
	}
	_, trans := raft.NewInmemTransport("a")
	conf := raft.DefaultConfig()
	conf.LocalID = "a"
	conf.Logger = nil
	conf.LogOutput = ioDiscard{}
	if err := raft.BootstrapCluster(conf, s, s, snaps, trans, raft.Configuration{Servers: []raft.Server{{ID: "a", Address: trans.LocalAddr()}}}); err != nil {
		t.Fatalf("BootstrapCluster: %v", err)
	}
	r, err := raft.NewRaft(conf, &raft.MockFSM{}, NewCache(s, 1<<20), s, snaps, trans)
	if err != nil {
		t.Fatalf("NewRaft: %v", err)
	}
	defer r.Shutdown()
	deadline := time.Now().Add(10 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("no leader within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := r.Apply([]byte("hello"), 5*time.Second).Error(); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if err := r.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	if has, err := raft.HasExistingState(s, s, snaps); err != nil || !has {
		t.Fatalf("HasExistingState after a run = %v, %v; want true, nil", has, err)
	}
}

type ioDiscard struct{}

func (ioDiscard) Write(p []byte) (int, error) { return len(p), nil }

func TestRoundTripFields(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	at := time.Unix(1700000000, 123456789)
	in := []*raft.Log{
		{Index: 7, Term: 3, Type: raft.LogConfiguration, Data: []byte("conf"), Extensions: []byte("ext"), AppendedAt: at},
		{Index: 8, Term: 1 << 60, Type: raft.LogNoop},
	}
	if err := s.StoreLogs(in); err != nil {
		t.Fatal(err)
	}
	check := func(s *Store) {
		for _, want := range in {
			var got raft.Log
			if err := s.GetLog(want.Index, &got); err != nil {
				t.Fatal(err)
			}
			if got.Index != want.Index || got.Term != want.Term || got.Type != want.Type ||
				!bytes.Equal(got.Data, want.Data) || !bytes.Equal(got.Extensions, want.Extensions) ||
				!got.AppendedAt.Equal(want.AppendedAt) {
				t.Fatalf("got %+v, want %+v", got, *want)
			}
		}
	}
	check(s)
	s.Close()
	check(openStore(t, dir, testOptions(t)))
}

func TestReopenKeepsLogAndStable(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	store(t, s, 1, 100) // several segments of 4 KiB
	store(t, s, 101, 101)
	if err := s.SetUint64([]byte("CurrentTerm"), 42); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("LastVoteCand"), []byte("node-2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Set([]byte("empty"), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openStore(t, dir, testOptions(t))
	checkLog(t, s, 1, 101)
	if v, err := s.GetUint64([]byte("CurrentTerm")); v != 42 || err != nil {
		t.Fatalf("GetUint64 = %d, %v", v, err)
	}
	if v, err := s.Get([]byte("LastVoteCand")); string(v) != "node-2" || err != nil {
		t.Fatalf("Get = %q, %v", v, err)
	}
	if v, err := s.Get([]byte("empty")); v == nil || len(v) != 0 || err != nil {
		t.Fatalf("Get of an empty value = %#v, %v; want empty, not nil", v, err)
	}
	store(t, s, 102, 110)
	checkLog(t, s, 1, 110)
}

func TestDeletePrefix(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	for i := uint64(1); i <= 200; i += 10 {
		store(t, s, i, i+9)
	}
	segsBefore := len(segFiles(t, dir))
	if err := s.DeleteRange(1, 150); err != nil {
		t.Fatal(err)
	}
	checkLog(t, s, 151, 200)
	if n := len(segFiles(t, dir)); n >= segsBefore {
		t.Fatalf("%d segment files after deleting a prefix, %d before", n, segsBefore)
	}
	s.Close()
	s = openStore(t, dir, testOptions(t))
	checkLog(t, s, 151, 200)
	store(t, s, 201, 210)
	checkLog(t, s, 151, 210)
}

func TestDeleteSuffix(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	for i := uint64(1); i <= 200; i += 10 {
		store(t, s, i, i+9)
	}
	for _, min := range []uint64{180, 100, 2} {
		if err := s.DeleteRange(min, 1000); err != nil {
			t.Fatal(err)
		}
		checkLog(t, s, 1, min-1)
		s.Close()
		s = openStore(t, dir, testOptions(t))
		checkLog(t, s, 1, min-1)
		store(t, s, min, min+20)
		checkLog(t, s, 1, min+20)
	}
}

func TestDeleteAllThenStart(t *testing.T) {
	for _, next := range []uint64{1, 150, 5000} {
		t.Run(fmt.Sprint(next), func(t *testing.T) {
			dir := t.TempDir()
			s := openStore(t, dir, testOptions(t))
			store(t, s, 100, 200)
			if err := s.DeleteRange(100, 200); err != nil {
				t.Fatal(err)
			}
			checkLog(t, s, 0, 0)
			if n := len(segFiles(t, dir)); n != 0 {
				t.Fatalf("%d segment files left", n)
			}
			store(t, s, next, next+9)
			checkLog(t, s, next, next+9)
			s.Close()
			s = openStore(t, dir, testOptions(t))
			checkLog(t, s, next, next+9)
		})
	}
}

// TestGapStartsOver: raft appends past a gap only when a snapshot covers
// what is before it (a crash between installing a snapshot and deleting
// the old log); refusing would leave the follower stuck.
func TestGapStartsOver(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	store(t, s, 1, 50)
	store(t, s, 1000, 1010)
	checkLog(t, s, 1000, 1010)
	s.Close()
	checkLog(t, openStore(t, dir, testOptions(t)), 1000, 1010)
}

func TestRefusals(t *testing.T) {
	s := openStore(t, t.TempDir(), testOptions(t))
	store(t, s, 1, 50)
	if err := s.StoreLogs(mkLogs(50, 51)); err == nil {
		t.Fatal("StoreLogs over stored entries: no error")
	}
	if err := s.StoreLogs([]*raft.Log{mkLog(51), mkLog(53)}); err == nil {
		t.Fatal("StoreLogs of a batch with a hole: no error")
	}
	if err := s.StoreLogs([]*raft.Log{{Index: 0}}); err == nil {
		t.Fatal("StoreLogs of index 0: no error")
	}
	if err := s.DeleteRange(10, 20); err == nil {
		t.Fatal("DeleteRange inside the log: no error")
	}
	checkLog(t, s, 1, 50)
	// A refusal is no failure: the store goes on.
	store(t, s, 51, 60)
	checkLog(t, s, 1, 60)
}

func TestBatchLargerThanSegment(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	big := &raft.Log{Index: 1, Term: 1, Data: bytes.Repeat([]byte("b"), 20000)}
	if err := s.StoreLogs([]*raft.Log{big}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openStore(t, dir, testOptions(t))
	var got raft.Log
	if err := s.GetLog(1, &got); err != nil || !bytes.Equal(got.Data, big.Data) {
		t.Fatalf("GetLog: %v", err)
	}
}

func TestStableStoreFull(t *testing.T) {
	s := openStore(t, t.TempDir(), testOptions(t))
	if err := s.Set([]byte("k"), make([]byte, metaSlotLen)); !errors.Is(err, errMetaFull) {
		t.Fatalf("Set of a value larger than a slot: %v", err)
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatalf("Set after a refusal: %v", err)
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	openStore(t, dir, testOptions(t))
	if s, err := Open(dir, testOptions(t)); err == nil {
		s.Close()
		t.Fatal("a second Open of the same directory succeeded")
	}
}

func TestMissingMetaWithSegments(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, dir, testOptions(t))
	store(t, s, 1, 10)
	s.Close()
	if err := os.Remove(filepath.Join(dir, metaName)); err != nil {
		t.Fatal(err)
	}
	if s, err := Open(dir, testOptions(t)); err == nil {
		s.Close()
		t.Fatal("Open without the meta file succeeded")
	}
}

func TestClosed(t *testing.T) {
	s := openStore(t, t.TempDir(), testOptions(t))
	store(t, s, 1, 3)
	s.Close()
	var l raft.Log
	for name, err := range map[string]error{
		"GetLog":      s.GetLog(1, &l),
		"StoreLogs":   s.StoreLogs(mkLogs(4, 4)),
		"DeleteRange": s.DeleteRange(1, 1),
		"Set":         s.Set([]byte("a"), nil),
	} {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
	if _, err := s.FirstIndex(); !errors.Is(err, ErrClosed) {
		t.Errorf("FirstIndex after Close: %v", err)
	}
}

func segFiles(t testing.TB, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}
