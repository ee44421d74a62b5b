package node

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage/legacytest"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// extractOld unpacks legacytest's data dir: see there what it holds.
func extractOld(t *testing.T) string { return legacytest.DataDir(t) }

// checkOldData checks that the node serves what oldDataDir holds, and
// takes a write.
func checkOldData(t *testing.T, ctx context.Context, n *Node) {
	t.Helper()
	c := kvClient(n)
	for i := 1; i <= 39; i++ {
		k := "k" + strconv.Itoa(i)
		got, err := c.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(k)}))
		if err != nil || string(got.Msg.GetKv().GetValue()) != "v"+strconv.Itoa(i) {
			t.Fatalf("%s after the migration: %v, %v", k, got, err)
		}
	}
	for i := 1; i <= 5; i++ {
		k := "big" + strconv.Itoa(i)
		got, err := c.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(k)}))
		if err != nil || !bytes.Equal(got.Msg.GetKv().GetValue(), bytes.Repeat([]byte{byte('0' + i)}, 3000)) {
			t.Fatalf("%s after the migration: %v", k, err)
		}
	}
	got, err := c.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k40")}))
	if err == nil && got.Msg.GetKv() != nil {
		t.Fatalf("k40, deleted, is back: %v", got.Msg.GetKv())
	}
	resp, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("after"), Value: []byte("x")}))
	if err != nil {
		t.Fatal(err)
	}
	if rev := resp.Msg.GetHeader().GetRevision(); rev <= 49 {
		t.Fatalf("a put after the migration got revision %d, at or below the old log's 49", rev)
	}
}

// wantMigrated checks that the data dir holds the new log and not the old.
func wantMigrated(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, oldRaftDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the old raft log is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, raftLogDir+".migrating")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the migration's temporary directory is still there: %v", err)
	}
	s, err := raftlog.Open(filepath.Join(dir, raftLogDir), raftlog.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if last, _ := s.LastIndex(); last < 49 {
		t.Fatalf("the new log ends at %d, before the old one's 49", last)
	}
}

func migrationConfig(dir string) Config {
	cfg := testConfig(dir)
	cfg.Name = "old1"
	return cfg
}

// TestMigrateBadgerRaftLog starts a node on a data dir written by the
// release that kept the raft log in Badger: it serves every write, with
// its revision, and the old log is gone.
func TestMigrateBadgerRaftLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := extractOld(t)
	n := startConfig(t, ctx, migrationConfig(dir))
	checkOldData(t, ctx, n)
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wantMigrated(t, dir)
	// And again, on the migrated dir.
	n = startConfig(t, ctx, migrationConfig(dir))
	defer n.Close(context.Background())
	checkOldData(t, ctx, n)
}

// TestMigrateAfterCrash: a migration that a crash stopped is done again,
// or finished, at the next start.
func TestMigrateAfterCrash(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	t.Run("before the rename", func(t *testing.T) {
		dir := extractOld(t)
		// What a crash while copying leaves: part of a new log, under
		// its temporary name.
		tmp := filepath.Join(dir, raftLogDir+".migrating")
		s, err := raftlog.Open(tmp, raftlog.Options{SegmentSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetUint64([]byte("CurrentTerm"), 1); err != nil {
			t.Fatal(err)
		}
		s.Close()
		n := startConfig(t, ctx, migrationConfig(dir))
		checkOldData(t, ctx, n)
		if err := n.Close(ctx); err != nil {
			t.Fatal(err)
		}
		wantMigrated(t, dir)
	})

	t.Run("after the rename", func(t *testing.T) {
		dir := extractOld(t)
		// What a crash after the rename leaves: both logs.
		kept := filepath.Join(t.TempDir(), "raft")
		if err := os.CopyFS(kept, os.DirFS(filepath.Join(dir, oldRaftDir))); err != nil {
			t.Fatal(err)
		}
		if err := migrateRaftLog(dir, 1<<20, slog.New(slog.DiscardHandler)); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(kept, filepath.Join(dir, oldRaftDir)); err != nil {
			t.Fatal(err)
		}
		n := startConfig(t, ctx, migrationConfig(dir))
		checkOldData(t, ctx, n)
		if err := n.Close(ctx); err != nil {
			t.Fatal(err)
		}
		wantMigrated(t, dir)
	})
}
