package nodetest_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/diskspace"
)

// fakeDisk is a filesystem whose free space the test sets: the disk of
// one node, made full without filling it.
type fakeDisk struct{ avail atomic.Uint64 }

func (d *fakeDisk) stat(string) (diskspace.FS, error) {
	return diskspace.FS{Total: 1 << 40, Avail: d.avail.Load()}, nil
}

func alarmList(t *testing.T, ctx context.Context, nd *nodetest.Node) []*kvstorev1.AlarmMember {
	t.Helper()
	resp, err := nd.Client().Cluster.Alarm(ctx, connect.NewRequest(&kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_LIST}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetAlarms()
}

func hasAlarm(list []*kvstorev1.AlarmMember, typ kvstorev1.AlarmType, member string) bool {
	for _, a := range list {
		if a.GetAlarm() == typ && a.GetMemberId() == member {
			return true
		}
	}
	return false
}

// eventually polls cond until it holds or ctx ends.
func eventually(t *testing.T, ctx context.Context, what string, cond func() error) {
	t.Helper()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v (last: %v)", what, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestNoSpaceAlarm: one node of three runs short of disk. It raises a
// NOSPACE alarm through raft and every node refuses puts, naming the
// cause, while reads and deletes go on; disarmed by hand while still
// short, the alarm comes back; with space again the node clears it itself
// and writes resume.
func TestNoSpaceAlarm(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	disk := &fakeDisk{}
	disk.avail.Store(1 << 40)
	c := nodetest.NewCluster(t, 3, nodetest.WithConfig(func(name string, cfg *node.Config) {
		if name == "n3" {
			cfg.DiskStat = disk.stat
		}
	}))
	n1, n2, n3 := c.Node("n1"), c.Node("n2"), c.Node("n3")
	if _, err := put(ctx, n1.Client().KV, "a", "1"); err != nil {
		t.Fatal(err)
	}
	st, err := n3.Client().Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	hard, soft := st.Msg.GetDiskHardMarginBytes(), st.Msg.GetDiskMarginBytes()
	if hard == 0 || soft <= hard || st.Msg.GetWritesRefused() != "" {
		t.Fatalf("status of a node with room: %v", st.Msg)
	}

	// Short: between the margins, so it still appends and applies.
	disk.avail.Store(hard + (soft-hard)/2)
	eventually(t, ctx, "puts refused", func() error {
		_, err := put(ctx, n1.Client().KV, "b", "2")
		if connect.CodeOf(err) == connect.CodeResourceExhausted {
			if !strings.Contains(err.Error(), "no space: data dir "+n3.Dir()) || !strings.Contains(err.Error(), "n3") {
				t.Fatalf("refusal %q does not name n3's data dir", err)
			}
			return nil
		}
		return errors.New("put accepted")
	})
	for _, nd := range c.Nodes() {
		eventually(t, ctx, nd.Name()+" refuses puts", func() error {
			if _, err := put(ctx, nd.Client().KV, "c", "3"); connect.CodeOf(err) != connect.CodeResourceExhausted {
				return err
			}
			return nil
		})
		if got, err := get(ctx, nd.Client().KV, "a", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || string(got.GetKv().GetValue()) != "1" {
			t.Fatalf("read on %s under a NOSPACE alarm: %v %v", nd.Name(), got, err)
		}
	}
	if _, err := n2.Client().KV.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("a")})); err != nil {
		t.Fatalf("a delete under a NOSPACE alarm: %v", err)
	}
	if !hasAlarm(alarmList(t, ctx, n1), kvstorev1.AlarmType_ALARM_TYPE_NOSPACE, "n3") {
		t.Fatalf("alarms: %v", alarmList(t, ctx, n1))
	}
	resp, err := http.Get(n2.Node().URL() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	text, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(text), "alarm NOSPACE of member n3") {
		t.Fatalf("/readyz of n2: %d %q", resp.StatusCode, text)
	}

	// Disarmed while n3 is still short: n3 raises it again.
	if _, err := n2.Client().Cluster.Alarm(ctx, connect.NewRequest(&kvstorev1.AlarmRequest{Action: kvstorev1.AlarmAction_ALARM_ACTION_DEACTIVATE})); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "the alarm raised again", func() error {
		if !hasAlarm(alarmList(t, ctx, n1), kvstorev1.AlarmType_ALARM_TYPE_NOSPACE, "n3") {
			return errors.New("not yet")
		}
		return nil
	})

	// Below the hard margin n3's raft log refuses appends: raft takes that
	// as a rejection, n3 falls behind without dying, and the other two
	// go on with what needs little room.
	disk.avail.Store(hard / 2)
	status := func(nd *nodetest.Node) *kvstorev1.StatusResponse {
		st, err := nd.Client().Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		return st.Msg
	}
	eventually(t, ctx, "n3 measures its disk below the hard margin", func() error {
		if st := status(n3); st.GetDiskFreeBytes() >= hard {
			return errors.New("not yet")
		}
		return nil
	})
	// Should n3 lead, it hands leadership over.
	var del *connect.Response[kvstorev1.DeleteResponse]
	eventually(t, ctx, "a delete with n3 below its hard margin", func() error {
		del, err = n1.Client().KV.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("b")}))
		return err
	})
	if st := status(n3); st.GetAppliedIndex() >= uint64(del.Msg.GetHeader().GetRevision()) || !n3.Running() {
		t.Fatalf("n3 below its hard margin applied the delete at %d: %v", del.Msg.GetHeader().GetRevision(), st)
	}
	// n3 cannot catch up, so the leader serves its linearizable reads:
	// they see the delete. Serializable reads stay on n3, behind.
	rangeAt := func(c kvstorev1.Consistency) (int64, error) {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		resp, err := n3.Client().KV.Range(rctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("b"), Consistency: c}))
		if err != nil {
			return 0, err
		}
		return resp.Msg.GetHeader().GetRevision(), nil
	}
	if rev, err := rangeAt(kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || rev < del.Msg.GetHeader().GetRevision() {
		t.Fatalf("a linearizable read on n3 below its hard margin: revision %d, %v; want at least the delete's %d", rev, err, del.Msg.GetHeader().GetRevision())
	}
	if rev, err := rangeAt(kvstorev1.Consistency_CONSISTENCY_SERIALIZABLE); err != nil || rev >= del.Msg.GetHeader().GetRevision() {
		t.Fatalf("a serializable read on n3 below its hard margin: revision %d, %v; want n3's own, before the delete's %d", rev, err, del.Msg.GetHeader().GetRevision())
	}
	if _, err := get(ctx, n3.Client().KV, "b", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("a linearizable get of a missing key on n3 below its hard margin: %v, want NotFound", err)
	}

	// Space back (the guard's tests cover the hysteresis on the way): n3
	// catches up.
	disk.avail.Store(1 << 40)
	eventually(t, ctx, "puts accepted again", func() error {
		_, err := put(ctx, n1.Client().KV, "d", "4")
		return err
	})
	if l := alarmList(t, ctx, n1); len(l) != 0 {
		t.Fatalf("alarms once space came back: %v", l)
	}
	if got, err := get(ctx, n3.Client().KV, "d", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || string(got.GetKv().GetValue()) != "4" {
		t.Fatalf("n3 after space came back: %v %v", got, err)
	}
}

// TestConsistencyCheckFindsCorruptMember changes one member's state while
// it is down, behind raft's back, and runs the leader's check: it names
// that member in a CORRUPT alarm, which every node then acts on.
func TestConsistencyCheckFindsCorruptMember(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	for _, k := range []string{"a", "b", "c"} {
		if _, err := put(ctx, leader.Client().KV, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	var bad *nodetest.Node
	for _, nd := range c.Nodes() {
		if nd != leader {
			bad = nd
		}
	}
	// Every member has applied the puts before the check and the kill.
	eventually(t, ctx, "members agree", func() error {
		rep, err := leader.Node().CheckConsistency(ctx)
		if err != nil {
			return err
		}
		if len(rep.Hashes) != 3 || len(rep.Corrupt) != 0 {
			return errors.New("not every member answered alike")
		}
		return nil
	})

	bad.Kill()
	kv, err := storage.OpenKV(filepath.Join(bad.Dir(), "kv"), slog.New(slog.DiscardHandler), storage.Options{})
	if err != nil {
		t.Fatal(err)
	}
	b := kv.NewBatch()
	if err := b.Begin(kv.AppliedIndex()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Put([]byte("b"), []byte("not what the cluster wrote"), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := kv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := bad.Restart(ctx); err != nil {
		t.Fatal(err)
	}

	leader = c.Leader(ctx)
	eventually(t, ctx, "the check names "+bad.Name(), func() error {
		rep, err := leader.Node().CheckConsistency(ctx)
		if err != nil {
			return err
		}
		if len(rep.Corrupt) != 1 || rep.Corrupt[0] != bad.Name() {
			return errors.New("not named yet")
		}
		return nil
	})
	for _, nd := range c.Nodes() {
		eventually(t, ctx, nd.Name()+" applies the alarm", func() error {
			if !hasAlarm(alarmList(t, ctx, nd), kvstorev1.AlarmType_ALARM_TYPE_CORRUPT, bad.Name()) {
				return errors.New("not yet")
			}
			return nil
		})
	}
	if _, err := put(ctx, leader.Client().KV, "d", "1"); connect.CodeOf(err) != connect.CodeDataLoss {
		t.Fatalf("a put under a CORRUPT alarm: %v", err)
	}
	if err := bad.Node().Ready(); err == nil || !strings.Contains(err.Error(), "CORRUPT") {
		t.Fatalf("the corrupt member is ready: %v", err)
	}
}
