package nodetest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// clusterID returns the cluster id every running node of c reports, or an
// error saying how they differ or that one has none.
func clusterID(c *nodetest.Cluster) (string, error) {
	var id string
	for _, nd := range c.Running() {
		got := nd.Node().ClusterID()
		switch {
		case len(got) != 32:
			return "", fmt.Errorf("%s has cluster id %q", nd.Name(), got)
		case id != "" && got != id:
			return "", fmt.Errorf("%s has cluster id %q, another node %q", nd.Name(), got, id)
		}
		id = got
	}
	return id, nil
}

func waitClusterID(t *testing.T, ctx context.Context, c *nodetest.Cluster) string {
	t.Helper()
	for {
		id, err := clusterID(c)
		if err == nil {
			return id
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no common cluster id: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestTwoClustersGivenEachOtherAsSeedsStayApart forms two clusters, then
// restarts a node of each with a node of the other as its first seed (a
// join stops at the first seed that answers): gossip, raft and the members
// list keep them apart, and each keeps serving its own data.
func TestTwoClustersGivenEachOtherAsSeedsStayApart(t *testing.T) {
	ctx := testCtx(t, 90*time.Second)
	a := nodetest.NewCluster(t, 3, nodetest.WithNamePrefix("a"))
	b := nodetest.NewCluster(t, 3, nodetest.WithNamePrefix("b"))
	idA, idB := waitClusterID(t, ctx, a), waitClusterID(t, ctx, b)
	if idA == idB {
		t.Fatalf("two clusters share the id %s", idA)
	}
	for _, pair := range [][2]*nodetest.Cluster{{a, b}, {b, a}} {
		nd, other := pair[0].Nodes()[1], pair[1].Nodes()[0]
		nd.Kill()
		nd.Reconfigure(func(cfg *node.Config) { cfg.Join = append([]string{other.Addr()}, cfg.Join...) })
		if err := nd.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*nodetest.Cluster{a, b} {
		if err := c.WaitMembers(ctx, 3); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := put(ctx, a.Client().KV, "in-a", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := put(ctx, b.Client().KV, "in-b", "1"); err != nil {
		t.Fatal(err)
	}

	apart := func() error {
		for _, side := range []struct {
			c      *nodetest.Cluster
			id     string
			prefix string
		}{{a, idA, "a"}, {b, idB, "b"}} {
			for _, nd := range side.c.Nodes() {
				n := nd.Node()
				for _, m := range n.GossipMembers() {
					if !strings.HasPrefix(m, side.prefix) {
						return fmt.Errorf("%s gossips with %s: %v", nd.Name(), m, n.GossipMembers())
					}
				}
				if ids := n.RaftMembers(); len(ids) != 3 || slices.ContainsFunc(ids, func(id string) bool { return !strings.HasPrefix(id, side.prefix) }) {
					return fmt.Errorf("%s has raft members %v", nd.Name(), ids)
				}
				for _, m := range members(t, ctx, nd) {
					if !strings.HasPrefix(m.GetId(), side.prefix) {
						return fmt.Errorf("%s lists member %s", nd.Name(), m.GetId())
					}
				}
				if got := n.ClusterID(); got != side.id {
					return fmt.Errorf("%s now has cluster id %s, want %s", nd.Name(), got, side.id)
				}
			}
		}
		return nil
	}
	// Fast gossip pushes its state every 2 s; look for several rounds.
	for end := time.Now().Add(6 * time.Second); time.Now().Before(end); {
		if err := apart(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	for _, tc := range []struct {
		c         *nodetest.Cluster
		has, hasn string
	}{{a, "in-a", "in-b"}, {b, "in-b", "in-a"}} {
		for _, nd := range tc.c.Nodes() {
			kv := nd.Client().KV
			if _, err := get(ctx, kv, tc.has, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil {
				t.Fatalf("%s: get %s: %v", nd.Name(), tc.has, err)
			}
			if _, err := get(ctx, kv, tc.hasn, kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("%s: get %s: %v, want NotFound", nd.Name(), tc.hasn, err)
			}
		}
	}
}

// TestClusterIDKeptAcrossRestarts: a cluster has one id on every node, in
// every response header; a node killed and restarted on its own data dir
// rejoins with it, and a node added later takes it.
func TestClusterIDKeptAcrossRestarts(t *testing.T) {
	ctx := testCtx(t, 60*time.Second)
	c := nodetest.NewCluster(t, 3)
	id := waitClusterID(t, ctx, c)
	leader := c.Leader(ctx)
	victim := c.Other(leader)
	victim.Kill()
	if _, err := put(ctx, leader.Client().KV, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := victim.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	resp, err := get(ctx, victim.Client().KV, "k", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetHeader().GetClusterId(); got != id {
		t.Fatalf("the restarted node answers for cluster %q, want %q", got, id)
	}
	added := c.Add(ctx)
	if err := c.WaitMembers(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if got := waitClusterID(t, ctx, c); got != id {
		t.Fatalf("cluster id %q after adding %s, want %q", got, added.Name(), id)
	}
	st, err := added.Client().Cluster.Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if st.Msg.GetClusterId() != id {
		t.Fatalf("the added node's status says cluster %q, want %q", st.Msg.GetClusterId(), id)
	}
	if b, err := os.ReadFile(filepath.Join(added.Dir(), "cluster-id")); err != nil || strings.TrimSpace(string(b)) != id {
		t.Fatalf("the added node's cluster-id file: %q, %v", b, err)
	}
}

// TestPreClusterIDDataDirsDeriveOnce: data dirs from before cluster ids
// (no cluster-id file) get an id once, the same on every node, and keep it
// across restarts: a cluster of three through its log, a one-node cluster
// at once.
func TestPreClusterIDDataDirsDeriveOnce(t *testing.T) {
	for _, size := range []int{1, 3} {
		t.Run(fmt.Sprintf("%d nodes", size), func(t *testing.T) {
			ctx := testCtx(t, 90*time.Second)
			c := nodetest.NewCluster(t, size)
			made := waitClusterID(t, ctx, c)
			if _, err := put(ctx, c.Client().KV, "k", "v"); err != nil {
				t.Fatal(err)
			}
			restartAll := func(removeIDs bool) {
				t.Helper()
				for _, nd := range c.Nodes() {
					nd.Kill()
					if removeIDs {
						if err := os.Remove(filepath.Join(nd.Dir(), "cluster-id")); err != nil && !errors.Is(err, os.ErrNotExist) {
							t.Fatal(err)
						}
					}
				}
				for _, nd := range c.Nodes() {
					if err := nd.Restart(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if err := c.WaitMembers(ctx, size); err != nil {
					t.Fatal(err)
				}
			}
			restartAll(true)
			if size == 1 {
				// Alone in its configuration, it needs nobody: at once.
				if got := c.Nodes()[0].Node().ClusterID(); len(got) != 32 {
					t.Fatalf("a one-node cluster from before cluster ids started with id %q", got)
				}
			}
			derived := waitClusterID(t, ctx, c)
			if derived == made {
				t.Fatalf("the derived id is the one removed")
			}
			for _, nd := range c.Nodes() {
				if b, err := os.ReadFile(filepath.Join(nd.Dir(), "cluster-id")); err != nil || strings.TrimSpace(string(b)) != derived {
					t.Fatalf("%s's cluster-id file: %q, %v; want %s", nd.Name(), b, err, derived)
				}
			}
			restartAll(false)
			if got := waitClusterID(t, ctx, c); got != derived {
				t.Fatalf("after another restart the cluster id is %s, want %s", got, derived)
			}
			if resp, err := get(ctx, c.Client().KV, "k", kvstorev1.Consistency_CONSISTENCY_LINEARIZABLE); err != nil || string(resp.GetKv().GetValue()) != "v" {
				t.Fatalf("k after the restarts: %v, %v", resp, err)
			}
		})
	}
}
