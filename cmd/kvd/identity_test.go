package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// count is how many lines the process logged with this msg.
func (lp *logProc) count(msg string) int {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	n := 0
	for _, l := range lp.lines {
		var line struct {
			Msg string `json:"msg"`
		}
		if json.Unmarshal(l, &line) == nil && line.Msg == msg {
			n++
		}
	}
	return n
}

func status(ctx context.Context, n *clusterNode) (*kvstorev1.StatusResponse, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := n.cluster().Status(cctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

func get(ctx context.Context, n *clusterNode, key string) (string, error) {
	resp, err := n.kv().Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte(key)}))
	if err != nil {
		return "", err
	}
	return string(resp.Msg.GetKv().GetValue()), nil
}

// strangerMsg is what a node logs, once, when the nodes it was told to join
// (or its raft peers) belong to another cluster.
const strangerMsg = "this node belongs to another cluster than the nodes it contacts; not joining them"

// TestForeignDataDirNeverJoins follows issue 31 with real processes: a data
// dir holding a one-node cluster of its own, from before cluster ids (no
// cluster-id file), with keys old1..old20, is started with --join to a fresh
// three-node cluster holding new1..new3. It is never a member: the cluster's
// members do not list it, it does not list them, it says it is in another
// cluster, it logs one clear error, and each side keeps its own data.
func TestForeignDataDirNeverJoins(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	old := &clusterNode{name: "old", dir: filepath.Join(t.TempDir(), "old")}
	old.start(t, ctx, "127.0.0.1:0")
	waitReady(t, ctx, old.p.addr)
	for i := 1; i <= 20; i++ {
		if _, err := old.kv().Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("old" + strconv.Itoa(i)), Value: []byte("x")})); err != nil {
			t.Fatal(err)
		}
	}
	oldAddr := old.p.addr
	if err := old.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-old.p.done; err != nil {
		t.Fatalf("old node: exit %v", err)
	}
	old.p.done <- nil
	// A data dir from before cluster ids has no cluster-id file.
	if err := os.Remove(filepath.Join(old.dir, "cluster-id")); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}

	nodes := startCluster(t, ctx)
	for i := 1; i <= 3; i++ {
		if _, err := nodes[i-1].kv().Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("new" + strconv.Itoa(i)), Value: []byte("y")})); err != nil {
			t.Fatal(err)
		}
	}
	st, err := status(ctx, nodes[0])
	if err != nil {
		t.Fatal(err)
	}
	clusterID := st.GetClusterId()
	if len(clusterID) != 32 {
		t.Fatalf("the cluster's id is %q, want 32 hex digits", clusterID)
	}

	old.args = []string{"--join", nodes[0].p.addr}
	old.start(t, ctx, oldAddr)
	waitReady(t, ctx, old.p.addr)
	oldID := ""
	if st, err := status(ctx, old); err != nil {
		t.Fatal(err)
	} else {
		oldID = st.GetNodeId()
		if id := st.GetClusterId(); len(id) != 32 || id == clusterID {
			t.Fatalf("the old node says it is in cluster %q; the cluster is %q", id, clusterID)
		}
	}

	// It tries to join, is refused, and says so once; look a while longer
	// for anything that would make it a member.
	observe := func() {
		t.Helper()
		for _, n := range nodes {
			v, err := members(ctx, n)
			if err != nil {
				t.Fatalf("members of %s: %v", n.name, err)
			}
			if slices.Contains(v.ids, oldID) || len(v.ids) != 3 {
				t.Fatalf("%s lists %v: the old node %s joined the cluster", n.name, v, oldID)
			}
		}
		v, err := members(ctx, old)
		if err != nil {
			t.Fatalf("members of the old node: %v", err)
		}
		if len(v.ids) != 1 || v.ids[0] != oldID {
			t.Fatalf("the old node lists %v", v)
		}
	}
	for old.p.count(strangerMsg) == 0 {
		observe()
		select {
		case <-ctx.Done():
			t.Fatalf("the old node never said it belongs to another cluster: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); {
		observe()
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if n := old.p.count(strangerMsg); n != 1 {
		t.Fatalf("the old node logged %q %d times, want once", strangerMsg, n)
	}

	// Each side keeps its own data.
	if v, err := get(ctx, old, "old5"); err != nil || v != "x" {
		t.Fatalf("old5 on the old node: %q, %v", v, err)
	}
	if _, err := get(ctx, old, "new1"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("new1 on the old node: %v, want NotFound (it is not in that cluster)", err)
	}
	for _, n := range nodes {
		for i := 1; i <= 3; i++ {
			if v, err := get(ctx, n, "new"+strconv.Itoa(i)); err != nil || v != "y" {
				t.Fatalf("new%d on %s: %q, %v", i, n.name, v, err)
			}
		}
		if _, err := get(ctx, n, "old5"); connect.CodeOf(err) != connect.CodeNotFound {
			t.Fatalf("old5 on %s: %v, want NotFound", n.name, err)
		}
		if st, err := status(ctx, n); err != nil || st.GetClusterId() != clusterID {
			t.Fatalf("%s: cluster id %q (%v), want %q", n.name, st.GetClusterId(), err, clusterID)
		}
	}
}
