package storage

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// hookSyncs makes syncFile call hook before syncing a file in dir, and
// fail with its error. Tests using it must not run in parallel with others.
func hookSyncs(t *testing.T, dir string, hook func() error) {
	t.Helper()
	orig := syncFile
	syncFile = func(f *os.File) error {
		if filepath.Dir(f.Name()) == dir {
			if err := hook(); err != nil {
				return err
			}
		}
		return orig(f)
	}
	t.Cleanup(func() { syncFile = orig })
}

// holdSyncs makes syncs of files in dir wait until the returned function
// is called.
func holdSyncs(t *testing.T, dir string) (release func()) {
	t.Helper()
	gate := make(chan struct{})
	var once atomic.Bool
	release = func() {
		if once.CompareAndSwap(false, true) {
			close(gate)
		}
	}
	// Released before the store's own cleanup (registered earlier, so run
	// later) closes it.
	t.Cleanup(release)
	hookSyncs(t, dir, func() error { <-gate; return nil })
	return release
}

// callWithin runs f and fails the test if it has not returned within a
// generous bound: for calls that must not wait for a held sync.
func callWithin(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s waited for a held sync", what)
		return nil
	}
}

// While the store is told it leads, StoreLogs returns before its sync,
// SyncedIndex stays behind until the sync is done, and WaitSynced waits
// for it; appends made while following are synced before they return.
func TestRaftStoreDefersLeaderSyncs(t *testing.T) {
	skipWithoutOwnSync(t)
	dir := t.TempDir()
	s := openTestStore(t, dir)
	var leading atomic.Bool
	leading.Store(true)
	if !s.DeferSyncs(leading.Load) {
		t.Fatal("DeferSyncs: the store cannot defer")
	}
	release := holdSyncs(t, dir)

	if err := callWithin(t, "StoreLogs as leader", func() error { return s.StoreLogs(mkLogs(1, 10)) }); err != nil {
		t.Fatalf("StoreLogs: %v", err)
	}
	if got := s.SyncedIndex(); got != 0 {
		t.Fatalf("SyncedIndex = %d while the sync is held, want 0", got)
	}
	assertBounds(t, s, 1, 10)
	assertPresent(t, s, 1, 10) // raft reads them back to replicate them
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	err := s.WaitSynced(ctx, 10)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitSynced while the sync is held = %v, want a deadline error", err)
	}

	release()
	if err := s.WaitSynced(t.Context(), 10); err != nil {
		t.Fatalf("WaitSynced: %v", err)
	}
	if got := s.SyncedIndex(); got < 10 {
		t.Fatalf("SyncedIndex = %d after WaitSynced(10)", got)
	}

	leading.Store(false)
	if err := s.StoreLogs(mkLogs(11, 12)); err != nil {
		t.Fatalf("StoreLogs as follower: %v", err)
	}
	if got := s.SyncedIndex(); got != 12 {
		t.Fatalf("SyncedIndex = %d right after a follower's append of 12", got)
	}
}

// A follower that truncates its log (a conflicting suffix) moves its
// synced index back with it.
func TestRaftStoreSyncedIndexFollowsTruncation(t *testing.T) {
	s := newTestStore(t)
	if err := s.StoreLogs(mkLogs(1, 10)); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteRange(6, 10); err != nil {
		t.Fatal(err)
	}
	if got := s.SyncedIndex(); got != 5 {
		t.Fatalf("SyncedIndex = %d after truncating to 5", got)
	}
}

// openDeferring opens a store in dir that defers every append's sync; the
// test closes it.
func openDeferring(t *testing.T, dir string) *RaftStore {
	t.Helper()
	s, err := OpenRaftStore(dir, testLogger(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	s.DeferSyncs(func() bool { return true })
	return s
}

// A failed deferred sync fails the waiters and every later append: whether
// the writes reached the disk is unknown.
func TestRaftStoreDeferredSyncFailure(t *testing.T) {
	skipWithoutOwnSync(t)
	dir := t.TempDir()
	s := openDeferring(t, dir)
	broken := errors.New("disk on fire")
	hookSyncs(t, dir, func() error { return broken })

	if err := s.StoreLogs(mkLogs(1, 3)); err != nil {
		t.Fatalf("StoreLogs as leader: %v (the sync had not run yet)", err)
	}
	if err := s.WaitSynced(t.Context(), 3); !errors.Is(err, broken) {
		t.Fatalf("WaitSynced after a failed sync = %v, want %v", err, broken)
	}
	if got := s.SyncedIndex(); got != 0 {
		t.Fatalf("SyncedIndex = %d after a failed sync", got)
	}
	if err := s.StoreLogs(mkLogs(4, 4)); !errors.Is(err, broken) {
		t.Fatalf("StoreLogs after a failed sync = %v, want %v", err, broken)
	}
	s.DeferSyncs(nil)
	if err := s.StoreLogs(mkLogs(4, 4)); !errors.Is(err, broken) {
		t.Fatalf("StoreLogs as follower after a failed sync = %v, want %v", err, broken)
	}
	if err := s.Close(); !errors.Is(err, broken) {
		t.Fatalf("Close after a failed sync = %v, want %v", err, broken)
	}
}

// Close syncs deferred appends and ends later waits; a reopened store
// counts what it holds as synced (it syncs its files at open).
func TestRaftStoreCloseSyncsDeferred(t *testing.T) {
	skipWithoutOwnSync(t)
	dir := t.TempDir()
	s := openDeferring(t, dir)
	// Hold the syncer so that Close finds the append unsynced.
	gate := make(chan struct{})
	var held atomic.Bool
	hookSyncs(t, dir, func() error {
		if held.CompareAndSwap(false, true) {
			<-gate
		}
		return nil
	})
	if err := s.StoreLogs(mkLogs(1, 5)); err != nil {
		t.Fatal(err)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	close(gate)
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got := s.SyncedIndex(); got != 5 {
		t.Fatalf("SyncedIndex = %d after Close, want 5", got)
	}
	if err := s.WaitSynced(t.Context(), 6); !errors.Is(err, errClosed) {
		t.Fatalf("WaitSynced past the log after Close = %v, want %v", err, errClosed)
	}

	s = openTestStore(t, dir)
	if got := s.SyncedIndex(); got != 5 {
		t.Fatalf("SyncedIndex = %d after reopening, want 5", got)
	}
	assertPresent(t, s, 1, 5)
}
