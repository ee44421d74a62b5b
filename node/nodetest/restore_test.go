package nodetest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage/snapfile"
)

// logRecorder keeps what a node logs, to wait for a message.
type logRecorder struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logRecorder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logRecorder) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(l.buf.String(), s)
}

// saveSnapshot saves a snapshot of the cluster behind cl to path, as
// kvctl snapshot save does.
func saveSnapshot(ctx context.Context, cl *client.Client, path string) (*snapfile.Checked, error) {
	_, err := snapfile.Save(path, func(w io.Writer) (snapfile.Info, error) {
		s, err := cl.Snapshot(ctx, w)
		if err != nil {
			return snapfile.Info{}, err
		}
		return snapfile.Info{Revision: s.Header.GetRevision(), CompactedRevision: s.Trailer.GetCompactedRevision(),
			Keys: s.Trailer.GetKeys(), Entries: s.Trailer.GetEntries(), ClusterID: s.Header.GetClusterId(), Member: s.Header.GetNodeId()}, nil
	})
	if err != nil {
		return nil, err
	}
	return snapfile.Verify(path)
}

// rangeAll reads every key through cl at rev (0: now), linearizably.
func rangeAll(ctx context.Context, cl *client.Client, rev int64) ([]*kvstorev1.KeyValue, error) {
	var out []*kvstorev1.KeyValue
	key := []byte{0}
	for {
		resp, err := cl.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: key, RangeEnd: []byte{0}, Revision: rev}))
		if err != nil {
			return nil, err
		}
		out = append(out, resp.Msg.GetKvs()...)
		if !resp.Msg.GetMore() {
			return out, nil
		}
		key = resp.Msg.GetNextKey()
	}
}

func sameKVs(a, b []*kvstorev1.KeyValue) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d keys, want %d", len(a), len(b))
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return fmt.Errorf("key %d: %v, want %v", i, a[i], b[i])
		}
	}
	return nil
}

// TestSnapshotRestoreRoundTrip saves a snapshot of a three-node cluster,
// restores it into a new data dir, starts a new cluster on it with two
// nodes joining on empty data dirs, and checks that every node of the new
// cluster holds every key with its value, revisions, version and lease,
// the history down to the compacted revision, and the leases; and that a
// member of the old cluster cannot join the new one.
func TestSnapshotRestoreRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	src := nodetest.NewCluster(t, 3)
	cl := src.Client()

	// Puts, overwrites, deletes, keys on a lease, and a compaction, so the
	// copy carries history and a compacted revision.
	var compactAt, pastRev int64
	for i := range 60 {
		resp, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "k/%03d", i), Value: fmt.Appendf(nil, "v%d", i)}))
		if err != nil {
			t.Fatal(err)
		}
		if i == 10 {
			compactAt = resp.Msg.GetHeader().GetRevision()
		}
	}
	for i := range 20 {
		resp, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "k/%03d", i*2), Value: fmt.Appendf(nil, "again%d", i)}))
		if err != nil {
			t.Fatal(err)
		}
		pastRev = resp.Msg.GetHeader().GetRevision()
	}
	if _, err := cl.KV.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("k/050"), RangeEnd: []byte("k/055")})); err != nil {
		t.Fatal(err)
	}
	lease, err := cl.Lease.Grant(ctx, connect.NewRequest(&kvstorev1.GrantRequest{TtlSeconds: 600}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "leased/%d", i), Value: []byte("x"), Lease: lease.Msg.GetId()})); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cl.KV.Compact(ctx, connect.NewRequest(&kvstorev1.CompactRequest{Revision: compactAt})); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("last"), Value: []byte("write")})); err != nil {
		t.Fatal(err)
	}

	// An alarm of the old cluster: its member is not in the new one, so the
	// restore leaves it out.
	if _, err := cl.Cluster.Alarm(ctx, connect.NewRequest(&kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_ACTIVATE,
		MemberId: "gone", Alarm: kvstorev1.AlarmType_ALARM_TYPE_NOSPACE, Reason: "test"})); err != nil {
		t.Fatal(err)
	}

	// Saved from a follower: any node makes one, at a linearizable revision.
	leader := src.Leader(ctx)
	var follower *nodetest.Node
	for _, nd := range src.Nodes() {
		if nd != leader {
			follower = nd
		}
	}
	file := filepath.Join(t.TempDir(), "backup.snap")
	snap, err := saveSnapshot(ctx, follower.Client(), file)
	if err != nil {
		t.Fatal(err)
	}
	want, err := rangeAll(ctx, cl, 0)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Keys != int64(len(want)) || snap.CompactedRevision != compactAt || snap.Member != follower.Name() {
		t.Fatalf("snapshot says %d keys, compacted at %d, from %s; want %d, %d, %s", snap.Keys, snap.CompactedRevision, snap.Member, len(want), compactAt, follower.Name())
	}
	if last := want[0]; snap.Revision < last.GetModRevision() {
		t.Fatalf("snapshot at revision %d, before writes acknowledged earlier", snap.Revision)
	}
	wantPast, err := rangeAll(ctx, cl, pastRev)
	if err != nil {
		t.Fatal(err)
	}

	// Restore, with an address the node does not get: it corrects it.
	base := t.TempDir()
	dir := filepath.Join(base, "r1")
	res, err := node.Restore(node.RestoreConfig{From: file, DataDir: dir, Name: "r1", Advertise: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if res.ClusterID == src.Nodes()[0].Node().ClusterID() {
		t.Fatal("the restored cluster kept the old cluster id")
	}
	var r1log logRecorder
	start := func(name string, join []string, w io.Writer) *node.Node {
		t.Helper()
		n, err := node.Start(ctx, node.Config{
			DataDir: filepath.Join(base, name), Listen: "127.0.0.1:0", Name: name, Join: join,
			HeartbeatTimeout: time.Second, ElectionTimeout: time.Second,
			FastGossip: true, ReconcileInterval: 200 * time.Millisecond, DeadAfter: 30 * time.Second,
			Logger: slog.New(slog.NewTextHandler(w, nil)),
		})
		if err != nil {
			t.Fatalf("start %s: %v", name, err)
		}
		t.Cleanup(func() {
			cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			n.Close(cctx)
		})
		return n
	}
	r1 := start("r1", nil, &r1log)
	if err := r1.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	r2 := start("r2", []string{r1.Addr()}, io.Discard)
	r3 := start("r3", []string{r1.Addr()}, io.Discard)
	restored := []*node.Node{r1, r2, r3}
	newClient := func(n *node.Node) *client.Client {
		c, err := client.New([]string{n.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		return c
	}
	// Every node of the new cluster a voter, at its real address.
	err = pollUntil(ctx, func() error {
		resp, err := newClient(r1).Cluster.Members(ctx, connect.NewRequest(&kvstorev1.MembersRequest{}))
		if err != nil {
			return err
		}
		addrs := map[string]string{}
		for _, m := range resp.Msg.GetMembers() {
			if m.GetSuffrage() == kvstorev1.Suffrage_SUFFRAGE_VOTER {
				addrs[m.GetId()] = m.GetAddress()
			}
		}
		for _, n := range restored {
			if addrs[n.ID()] != n.Addr() {
				return fmt.Errorf("members %v, want every restored node a voter at its address", addrs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range restored {
		c := newClient(n)
		err := pollUntil(ctx, func() error {
			got, err := rangeAll(ctx, c, 0)
			if err != nil {
				return err
			}
			return sameKVs(got, want)
		})
		if err != nil {
			t.Fatalf("%s: %v", n.ID(), err)
		}
		gotPast, err := rangeAll(ctx, c, pastRev)
		if err != nil {
			t.Fatalf("%s: read at revision %d: %v", n.ID(), pastRev, err)
		}
		if err := sameKVs(gotPast, wantPast); err != nil {
			t.Fatalf("%s at revision %d: %v", n.ID(), pastRev, err)
		}
		_, err = c.KV.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k/000"), Revision: compactAt - 1}))
		if connect.CodeOf(err) != connect.CodeOutOfRange {
			t.Fatalf("%s: read below the compacted revision: %v, want OutOfRange", n.ID(), err)
		}
		ttl, err := c.Lease.TimeToLive(ctx, connect.NewRequest(&kvstorev1.TimeToLiveRequest{Id: lease.Msg.GetId(), Keys: true}))
		if err != nil {
			t.Fatalf("%s: lease: %v", n.ID(), err)
		}
		if len(ttl.Msg.GetKeys()) != 3 {
			t.Fatalf("%s: lease holds %d keys, want 3", n.ID(), len(ttl.Msg.GetKeys()))
		}
	}
	alarms, err := newClient(r1).Cluster.Alarm(ctx, connect.NewRequest(&kvstorev1.AlarmRequest{}))
	if err != nil || len(alarms.Msg.GetAlarms()) != 0 {
		t.Fatalf("alarms of the restored cluster: %v %v", alarms, err)
	}
	// The new cluster takes writes, at revisions after the snapshot's.
	put, err := newClient(r2).KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("after"), Value: []byte("restore")}))
	if err != nil {
		t.Fatal(err)
	}
	if put.Msg.GetHeader().GetRevision() <= snap.Revision {
		t.Fatalf("a write after the restore at revision %d, not after the snapshot's %d", put.Msg.GetHeader().GetRevision(), snap.Revision)
	}

	// A member of the old cluster pointed at the new one is refused, and
	// keeps its own cluster. Its old peers are stopped first: while they
	// run, their gossip reaches it on restart and it need not contact r1.
	old := src.Nodes()[2]
	oldID := old.Node().ClusterID()
	for _, nd := range src.Nodes() {
		nd.Kill()
	}
	old.Reconfigure(func(cfg *node.Config) { cfg.Join = []string{r1.Addr()} })
	if err := old.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pollUntil(ctx, func() error {
		if !r1log.has("refused a node of another cluster") {
			return errors.New("r1 has not refused the old member yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := old.Node().ClusterID(); got != oldID {
		t.Fatalf("the old member's cluster id is %s, was %s", got, oldID)
	}
	if got := r1.RaftMembers(); len(got) != 3 {
		t.Fatalf("restored cluster members %v, want r1, r2, r3", got)
	}
}

// TestRestoreRefusesDamagedFiles: a truncated or changed snapshot file, or
// a data dir that is not empty, fails the restore before anything is
// written.
func TestRestoreRefusesDamagedFiles(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	src := nodetest.NewCluster(t, 1)
	cl := src.Client()
	for i := range 20 {
		if _, err := cl.KV.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: fmt.Appendf(nil, "k%d", i), Value: bytes.Repeat([]byte("v"), 100)})); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "good.snap")
	if _, err := saveSnapshot(ctx, cl, file); err != nil {
		t.Fatal(err)
	}
	whole, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(whole)
	flipped[len(flipped)/2] ^= 1
	for name, b := range map[string][]byte{
		"truncated":    whole[:len(whole)-100],
		"cut in half":  whole[:len(whole)/2],
		"byte flipped": flipped,
		"empty":        nil,
	} {
		bad := filepath.Join(dir, "bad.snap")
		if err := os.WriteFile(bad, b, 0o600); err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, "data", "r1")
		_, err := node.Restore(node.RestoreConfig{From: bad, DataDir: target})
		if !errors.Is(err, snapfile.ErrInvalid) {
			t.Errorf("%s: Restore = %v, want ErrInvalid", name, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "data")); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: the restore left %s behind (%v)", name, filepath.Join(dir, "data"), err)
		}
	}
	busy := filepath.Join(dir, "busy")
	if err := os.MkdirAll(busy, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(busy, "node-id"), []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Restore(node.RestoreConfig{From: file, DataDir: busy}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("restore into a data dir in use: %v", err)
	}
	// An empty directory is fine.
	empty := filepath.Join(dir, "empty")
	if err := os.MkdirAll(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Restore(node.RestoreConfig{From: file, DataDir: empty}); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), "restoring") {
			t.Fatalf("staging directory %s left behind", e.Name())
		}
	}
}
