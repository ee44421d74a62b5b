package consensus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

// pair is two replicas over raft's in-memory transport, each copying the
// other's state through CopyState when it rebuilds its own.
type pair struct {
	t     *testing.T
	mu    sync.Mutex
	byAdr map[raft.ServerAddress]*Replica
	reps  [2]*Replica
	kvs   [2]*storage.KV
	dirs  [2]string
	st    [2]*replicaStores
	trans [2]*raft.InmemTransport
}

func newPair(t *testing.T) *pair {
	p := &pair{t: t, byAdr: map[raft.ServerAddress]*Replica{}}
	for i := range 2 {
		p.dirs[i] = filepath.Join(t.TempDir(), "kv")
		kv, err := storage.OpenKV(p.dirs[i], testLogger(t), storage.Options{})
		if err != nil {
			t.Fatal(err)
		}
		p.kvs[i] = kv
		p.st[i] = &replicaStores{logs: raft.NewInmemStore(), snaps: raft.NewInmemSnapshotStore(), kv: kv, addr: raft.NewInmemAddr()}
		_, p.trans[i] = raft.NewInmemTransport(p.st[i].addr)
	}
	p.trans[0].Connect(p.st[1].addr, p.trans[1])
	p.trans[1].Connect(p.st[0].addr, p.trans[0])
	t.Cleanup(func() {
		for i, r := range p.reps {
			if r != nil {
				r.Shutdown()
			}
			p.kvs[i].Close()
		}
	})
	return p
}

// fetch is a StateFetcher over CopyState of the replica at addr.
func (p *pair) fetch(ctx context.Context, addr string, minRev uint64) (io.ReadCloser, uint64, error) {
	p.mu.Lock()
	src := p.byAdr[raft.ServerAddress(addr)]
	p.mu.Unlock()
	if src == nil {
		return nil, 0, fmt.Errorf("no replica at %s", addr)
	}
	pr, pw := io.Pipe()
	revc := make(chan uint64, 1)
	errc := make(chan error, 1)
	go func() {
		err := src.CopyState(ctx, minRev, func(rev uint64) (io.Writer, error) {
			revc <- rev
			return pw, nil
		})
		errc <- err
		pw.CloseWithError(err)
	}()
	select {
	case rev := <-revc:
		return pr, rev, nil
	case err := <-errc:
		return nil, 0, err
	}
}

// readIndex asks the replica at addr for a read index, as a follower asks
// its leader.
func (p *pair) readIndex(ctx context.Context, addr string) (uint64, error) {
	p.mu.Lock()
	src := p.byAdr[raft.ServerAddress(addr)]
	p.mu.Unlock()
	if src == nil {
		return 0, fmt.Errorf("no replica at %s", addr)
	}
	return src.ReadIndex(ctx)
}

func (p *pair) start(i int, rebuild error) *Replica {
	p.t.Helper()
	r, err := NewReplica(Config{
		ID:               fmt.Sprintf("n%d", i),
		Logs:             p.st[i].logs,
		Stable:           p.st[i].logs,
		Snapshots:        p.st[i].snaps,
		Transport:        p.trans[i],
		KV:               p.kvs[i],
		Limits:           Limits{MaxRangePairs: 1000, MaxRangeBytes: 1 << 20},
		HeartbeatTimeout: 50 * time.Millisecond,
		ElectionTimeout:  50 * time.Millisecond,
		FetchState:       p.fetch,
		LeaderReadIndex:  p.readIndex,
		Rebuild:          rebuild,
		Logger:           testLogger(p.t),
	})
	if err != nil {
		p.t.Fatalf("NewReplica: %v", err)
	}
	p.mu.Lock()
	p.byAdr[p.st[i].addr] = r
	p.mu.Unlock()
	p.reps[i] = r
	return r
}

func (p *pair) bootstrap() (leader, follower int) {
	p.t.Helper()
	servers := []raft.Server{
		{ID: "n0", Address: p.st[0].addr, Suffrage: raft.Voter},
		{ID: "n1", Address: p.st[1].addr, Suffrage: raft.Voter},
	}
	for i := range 2 {
		p.start(i, nil)
	}
	if err := p.reps[0].Bootstrap(servers); err != nil {
		p.t.Fatal(err)
	}
	waitFor(p.t, "a leader", func() bool { return p.reps[0].Ready() == nil && p.reps[1].Ready() == nil })
	if p.reps[0].Raft().State() == raft.Leader {
		return 0, 1
	}
	return 1, 0
}

// put writes through whichever replica leads, waiting out elections: with
// the tests' 50ms raft timeouts a busy machine makes them common.
func (p *pair) put(t *testing.T, key, value string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var err error
		for _, r := range p.reps {
			if r != nil && r.Raft().State() == raft.Leader {
				if _, err = r.Put(testCtx(t), &kvstorev1.PutRequest{Key: []byte(key), Value: []byte(value)}); err == nil {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("put %s: no leader took it: %v", key, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantKeys reads keys k0..k(n-1) from r, serializably.
func wantKeys(t *testing.T, r *Replica, n int) {
	t.Helper()
	for i := range n {
		resp, err := r.Get(testCtx(t), &kvstorev1.GetRequest{Key: fmt.Appendf(nil, "k%d", i), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE})
		if err != nil || string(resp.GetKv().GetValue()) != fmt.Sprintf("v%d", i) {
			t.Fatalf("k%d: %v %v", i, resp.GetKv(), err)
		}
	}
}

// A follower that finds its state damaged while it runs refuses requests,
// sets the state aside, rebuilds it from the leader, counts it, and then
// applies and serves as before.
func TestReplicaRebuildsCorruptStateOnline(t *testing.T) {
	p := newPair(t)
	_, fi := p.bootstrap()
	follower := p.reps[fi]
	for i := range 50 {
		p.put(t, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
	}
	waitFor(t, "the follower to apply", func() bool { return p.kvs[fi].AppliedIndex() >= p.kvs[1-fi].AppliedIndex() })

	// What a read that meets a damaged value reports.
	var heard []error
	follower.onCorrupt = func(err error) { heard = append(heard, err) }
	p.kvs[fi].Corrupted(&storage.CorruptError{Path: filepath.Join(p.dirs[fi], "000001.vlog"), Err: storage.ErrCorrupt})
	if len(heard) != 1 || storage.CorruptPath(heard[0]) != filepath.Join(p.dirs[fi], "000001.vlog") {
		t.Fatalf("OnStateCorrupt heard %v", heard)
	}
	if _, err := follower.Get(testCtx(t), &kvstorev1.GetRequest{Key: []byte("k1"), Consistency: kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE}); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("read while rebuilding: %v, want ErrRebuilding", err)
	}
	waitFor(t, "the rebuild", func() bool { return follower.StateRebuilds() == 1 && follower.Ready() == nil })
	wantKeys(t, follower, 50)
	aside, _ := filepath.Glob(p.dirs[fi] + ".corrupt-*")
	if len(aside) != 1 {
		t.Fatalf("set aside: %v", aside)
	}
	st, err := follower.Status(testCtx(t))
	if err != nil || st.GetStateRebuilds() != 1 || st.GetStateRebuild() != "" {
		t.Fatalf("status after the rebuild: %v %v", st, err)
	}

	// It applies again.
	p.put(t, "after", "x")
	waitFor(t, "the follower to apply after the rebuild", func() bool { return p.kvs[fi].AppliedIndex() >= p.kvs[1-fi].AppliedIndex() })
	if kv, ok, err := p.kvs[fi].Get(0, []byte("after")); err != nil || !ok || string(kv.Value) != "x" {
		t.Fatalf("after the rebuild: %v %v %v", kv, ok, err)
	}
}

// A node that set its state aside before it started (Config.Rebuild)
// serves nothing, then rebuilds it from the other member and goes on.
func TestReplicaRebuildsStateSetAsideAtStart(t *testing.T) {
	p := newPair(t)
	li, fi := p.bootstrap()
	for i := range 30 {
		p.put(t, fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i))
	}
	waitFor(t, "the follower to apply", func() bool { return p.kvs[fi].AppliedIndex() >= p.kvs[li].AppliedIndex() })
	if err := p.reps[fi].Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := p.kvs[fi].Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := storage.SetAside(p.dirs[fi]); err != nil {
		t.Fatal(err)
	}
	kv, err := storage.OpenKV(p.dirs[fi], testLogger(t), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p.kvs[fi], p.st[fi].kv = kv, kv
	_, p.trans[fi] = raft.NewInmemTransport(p.st[fi].addr)
	p.trans[fi].Connect(p.st[li].addr, p.trans[li])
	p.trans[li].Connect(p.st[fi].addr, p.trans[fi])
	r := p.start(fi, storage.ErrCorrupt)
	if err := r.Ready(); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("Ready right after a start with the state set aside: %v", err)
	}
	if _, err := r.Put(testCtx(t), &kvstorev1.PutRequest{Key: []byte("x"), Value: []byte("y")}); !errors.Is(err, ErrRebuilding) {
		t.Fatalf("write while rebuilding: %v", err)
	}
	waitFor(t, "the rebuild", func() bool { return r.StateRebuilds() == 1 && r.Ready() == nil })
	wantKeys(t, r, 30)
	p.put(t, "after", "x")
	waitFor(t, "the rebuilt node to apply", func() bool { return p.kvs[fi].AppliedIndex() >= p.kvs[1-fi].AppliedIndex() })
}

// A node whose newest raft snapshot is damaged gets it replaced, with the
// same metadata, once its state is rebuilt.
func TestCheckAndRepairSnapshots(t *testing.T) {
	dir := t.TempDir()
	store, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, trans := raft.NewInmemTransport("")
	conf := raft.Configuration{Servers: []raft.Server{{ID: "n0", Address: "a"}, {ID: "n1", Address: "b"}}}
	for _, idx := range []uint64{10, 20} {
		sink, err := store.Create(1, idx, 2, conf, 1, trans)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkpointSnapshot(idx).Persist(sink); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // snapshot ids carry the millisecond
	}
	if bad, err := CheckSnapshots(filepath.Join(dir, "snapshots")); err != nil || len(bad) != 0 {
		t.Fatalf("healthy snapshots: %v %v", bad, err)
	}
	list, _ := store.List()
	newest := filepath.Join(dir, "snapshots", list[0].ID)
	state := filepath.Join(newest, "state.bin")
	b, _ := os.ReadFile(state)
	b[len(b)-1] ^= 0xff
	os.WriteFile(state, b, 0o600)
	bad, err := CheckSnapshots(filepath.Join(dir, "snapshots"))
	if err != nil || len(bad) != 1 || !bad[0].Newest || bad[0].Meta == nil || bad[0].Meta.Index != 20 || !strings.Contains(bad[0].Error(), "state.bin") {
		t.Fatalf("damaged state.bin: %+v %v", bad, err)
	}
	older := filepath.Join(dir, "snapshots", list[1].ID, "meta.json")
	os.WriteFile(older, []byte("{garbage"), 0o600)
	bad, _ = CheckSnapshots(filepath.Join(dir, "snapshots"))
	if len(bad) != 2 {
		t.Fatalf("two damaged: %+v", bad)
	}
	for _, d := range bad {
		if (d.Meta == nil) == d.Newest {
			t.Fatalf("which is the newest: %+v", d)
		}
	}

	kv := openKV(t)
	kvApplyN(t, kv, 25)
	d := bad[0]
	if d.Meta == nil {
		d = bad[1]
	}
	r := &Replica{kv: kv, snaps: newSnapshotStore(store, kv, func() error { return nil }, t.TempDir(), nil, testLogger(t)), trans: trans, repair: &d, logger: testLogger(t)}
	if err := r.repairSnapshot(); err != nil {
		t.Fatal(err)
	}
	list, _ = store.List()
	if list[0].Index != 20 || list[0].ID == filepath.Base(newest) {
		t.Fatalf("after the repair the newest is %+v", list[0])
	}
	if _, err := os.Stat(newest); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the damaged snapshot is still in place: %v", err)
	}
	if _, rc, err := store.Open(list[0].ID); err != nil {
		t.Fatalf("open the replacement: %v", err)
	} else {
		rc.Close()
	}
}

// kvApplyN applies n empty entries, so the store is at index n.
func kvApplyN(t *testing.T, kv *storage.KV, n uint64) {
	t.Helper()
	b := kv.NewBatch()
	for i := uint64(1); i <= n; i++ {
		if err := b.Begin(i); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}
