package diskspace

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeFS is a filesystem whose free space a test sets.
type fakeFS struct {
	total uint64
	avail atomic.Uint64
}

func (f *fakeFS) stat(string) (FS, error) { return FS{Total: f.total, Avail: f.avail.Load()}, nil }

func newFake(total, avail uint64) *fakeFS {
	f := &fakeFS{total: total}
	f.avail.Store(avail)
	return f
}

func newGuard(t *testing.T, dir string, f *fakeFS, reserve uint64) *Guard {
	t.Helper()
	g, err := New(Config{Dir: dir, Stat: f.stat, Slack: MiB, Headroom: 4 * MiB, Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	g.AddReserve(func() uint64 { return reserve })
	g.Measure()
	t.Cleanup(g.Close)
	return g
}

// sparse creates a file of size bytes with only its first page written.
func sparse(t *testing.T, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
}

func TestFreeCountsWhatSparseFilesPromise(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("free space is measured on Linux only")
	}
	dir := t.TempDir()
	sparse(t, filepath.Join(dir, "00001.mem"), 10*MiB)
	if err := os.WriteFile(filepath.Join(dir, "small"), make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGuard(t, dir, newFake(1<<30, 100*MiB), 5*MiB)
	st := g.Status()
	// The written page is allocated; the rest of the 10 MiB is promised.
	if st.Promised < 10*MiB-64<<10 || st.Promised > 10*MiB {
		t.Fatalf("promised %d, want about 10 MiB", st.Promised)
	}
	if want := int64(100*MiB) - int64(st.Promised); st.Free != want {
		t.Fatalf("free %d, want avail less promised %d", st.Free, want)
	}
	if st.Hard != 6*MiB || st.Soft != 10*MiB || st.Level != OK {
		t.Fatalf("hard %d soft %d level %v, want 6 MiB, 10 MiB, ok", st.Hard, st.Soft, st.Level)
	}
	// Charged writes come off free space until the next measure.
	g.Charge(3 * MiB)
	if got := g.Status().Free; got != st.Free-3*MiB {
		t.Fatalf("free after a charge %d, want %d", got, st.Free-3*MiB)
	}
	if got := g.Measure().Free; got != st.Free {
		t.Fatalf("free after a measure %d, want %d again", got, st.Free)
	}
}

func TestWatchReservesHoles(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("files are reserved on Linux only")
	}
	dir := t.TempDir()
	old := filepath.Join(dir, "000001.vlog")
	sparse(t, old, 8*MiB)
	if err := Reserve(mustOpen(t, old), 8*MiB); err != nil {
		t.Skipf("this filesystem cannot fallocate: %v", err)
	}
	sparse(t, old, 8*MiB) // holes again: Create truncated it
	g := newGuard(t, dir, newFake(1<<30, 100*MiB), 0)
	g.Watch(dir)
	g.Run()
	if p := g.Measure().Promised; p != 0 {
		t.Fatalf("promised %d after Watch, want 0", p)
	}
	if alloc := allocatedOf(t, old); alloc < 8*MiB {
		t.Fatalf("%s has %d bytes allocated, want its 8 MiB", old, alloc)
	}
	// A file that appears later is reserved as it appears, not at the
	// next measure (an hour away).
	late := filepath.Join(dir, "00002.mem")
	sparse(t, late, 4*MiB)
	deadline := time.Now().Add(10 * time.Second)
	for allocatedOf(t, late) < 4*MiB {
		if time.Now().After(deadline) {
			t.Fatalf("%s not reserved: %d bytes allocated", late, allocatedOf(t, late))
		}
		time.Sleep(time.Millisecond)
	}
	// Reserving changes neither size nor contents.
	info, err := os.Stat(late)
	if err != nil || info.Size() != 4*MiB {
		t.Fatalf("size after reserving: %v %v", info, err)
	}
}

func mustOpen(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func allocatedOf(t *testing.T, path string) int64 {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return allocated(info)
}

func TestLevelsWithHysteresis(t *testing.T) {
	dir := t.TempDir()
	f := newFake(1<<30, 100*MiB)
	// hard 6 MiB (5 reserved, 1 slack), soft 10 MiB, hysteresis 2 MiB.
	g := newGuard(t, dir, f, 5*MiB)
	changed := g.Changed()
	steps := []struct {
		avail uint64
		want  Level
	}{
		{100 * MiB, OK},
		{9 * MiB, Low},
		{11 * MiB, Low}, // above soft, but not by the hysteresis
		{12 * MiB, OK},
		{5 * MiB, Critical},
		{7 * MiB, Critical}, // above hard, but not by the hysteresis
		{8 * MiB, Low},
		{100 * MiB, OK},
	}
	for _, s := range steps {
		f.avail.Store(s.avail)
		promised := g.Measure().Promised
		st := g.Status()
		if st.Level != s.want {
			t.Fatalf("avail %d MiB (promised %d): level %v, want %v", s.avail/MiB, promised, st.Level, s.want)
		}
	}
	select {
	case <-changed:
	default:
		t.Fatal("Changed not closed after the level changed")
	}
}

func TestAllowByLevel(t *testing.T) {
	dir := t.TempDir()
	f := newFake(1<<30, 100*MiB)
	g := newGuard(t, dir, f, 5*MiB)
	if err := g.Allow(Low, MiB); err != nil {
		t.Fatalf("a put with plenty of space: %v", err)
	}
	// Accepted only if it leaves the soft margin.
	err := g.Allow(Low, 95*MiB)
	if !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "has 100 MiB free, too little for a write of 95 MiB above the 10 MiB margin") {
		t.Fatalf("a put that would cross the margin: %v", err)
	}

	f.avail.Store(8 * MiB)
	g.Measure()
	err = g.Allow(Low, 1)
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a put below the soft margin: %v", err)
	}
	want := "no space: data dir " + dir + " has 8 MiB free, below the 10 MiB margin"
	if promised := g.Status().Promised; promised == 0 && err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if !strings.HasPrefix(err.Error(), "no space: data dir "+dir+" has ") {
		t.Fatalf("message %q", err)
	}
	if err := g.Allow(Critical, 1); err != nil {
		t.Fatalf("a delete below the soft margin but above the hard one: %v", err)
	}

	f.avail.Store(3 * MiB)
	g.Measure()
	if err := g.Allow(Critical, 1); !errors.Is(err, ErrNoSpace) || !strings.Contains(err.Error(), "6 MiB margin") {
		t.Fatalf("a delete below the hard margin: %v", err)
	}
	var none *Guard
	if err := none.Allow(Critical, 1); err != nil {
		t.Fatalf("a nil guard refused: %v", err)
	}
}

func TestChargeMeasuresAtOnce(t *testing.T) {
	dir := t.TempDir()
	f := newFake(1<<30, 30*MiB)
	g := newGuard(t, dir, f, 5*MiB)
	g.Run()
	changed := g.Changed()
	// The writes take the space (the filesystem says so) and are
	// charged: the guard measures without waiting for its hour.
	f.avail.Store(8 * MiB)
	g.Charge(22 * MiB)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no measure after charges crossed the margin")
	}
	if st := g.Status(); st.Level != Low {
		t.Fatalf("level %v, want low", st.Level)
	}
}

func TestNewFailsWhenStatFails(t *testing.T) {
	_, err := New(Config{Dir: t.TempDir(), Stat: func(string) (FS, error) { return FS{}, errors.New("boom") }})
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("New with a failing statfs: %v", err)
	}
}

// TestRunWalksNowAndThen: between walks, Run's measures still see the
// filesystem's free space each interval, and a sparse file that no kick
// announced is counted by the next walk, within walkEvery intervals.
func TestRunWalksNowAndThen(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("free space is measured on Linux only")
	}
	dir := t.TempDir()
	f := newFake(1<<30, 100*MiB)
	g, err := New(Config{Dir: dir, Stat: f.stat, Slack: MiB, Headroom: 4 * MiB, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	g.Run()
	t.Cleanup(g.Close)
	waitStatus := func(what string, ok func(Status) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok(g.Status()) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s: %+v", what, g.Status())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	f.avail.Store(90 * MiB)
	waitStatus("the new free space", func(st Status) bool { return st.Avail == 90*MiB })
	// Not in a watched directory, and not charged: only a walk finds it.
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	sparse(t, filepath.Join(dir, "sub", "00001.mem"), 10*MiB)
	waitStatus("the sparse file's promise", func(st Status) bool { return st.Promised >= 9*MiB })
}
