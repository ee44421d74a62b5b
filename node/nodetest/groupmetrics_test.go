package nodetest_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// scrapeGroups returns nd's kvstore_group_* samples, sample line (name and
// labels, as the text format writes them) to value.
func scrapeGroups(ctx context.Context, nd *nodetest.Node) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, nd.URL()+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", nd.Name(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", nd.Name(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", nd.Name(), resp.Status)
	}
	out := map[string]float64{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "kvstore_group_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("scrape %s: bad sample line %q: %w", nd.Name(), line, err)
		}
		out[line[:i]] = v
	}
	return out, nil
}

// statusPage returns nd's status page.
func statusPage(ctx context.Context, nd *nodetest.Node) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, nd.URL()+"/", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("status page of %s: %w", nd.Name(), err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("status page of %s: %w", nd.Name(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status page of %s: %s", nd.Name(), resp.Status)
	}
	return string(body), nil
}

// waitFor calls check until it returns nil, or fails the test with its
// last error once ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, check func() error) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		err := check()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-tick.C:
		}
	}
}

// TestGroupMetrics: each node hosting a replica of a data group reports
// the group's kvstore_group_* series, labelled with its id and name; one
// replica, the leader the group's info names, reports itself leader; and
// once the group moves off a node, that node's series of it are gone. The
// status page lists the group on the nodes that host it.
func TestGroupMetrics(t *testing.T) {
	ctx := testCtx(t, 120*time.Second)
	c := nodetest.NewCluster(t, 4)
	n1 := c.Node("n1")
	g := createGroup(t, ctx, n1, "b", "/b/", "n1", "n2", "n3")
	labels := fmt.Sprintf(`{group="%d",group_name="b"}`, g.GetId())
	raftState := func(state string) string {
		return fmt.Sprintf(`kvstore_group_raft_state{group="%d",group_name="b",state=%q}`, g.GetId(), state)
	}
	for i := range 5 {
		if _, err := put(ctx, n1.Client().KV, fmt.Sprintf("/b/%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}

	// check says whether the nodes named by hosts, and only they, report
	// the group, all with the same leader, which is the one ListGroups
	// names, and with no move under way.
	var leader string
	check := func(hosts ...string) error {
		list, err := c.Node(hosts[0]).Client().Cluster.ListGroups(ctx, connect.NewRequest(&kvstorev1.ListGroupsRequest{}))
		if err != nil {
			return err
		}
		leader = ""
		for _, info := range list.Msg.GetGroups() {
			if info.GetId() == g.GetId() {
				leader = info.GetLeader()
			}
		}
		if leader == "" {
			return fmt.Errorf("group b has no leader yet")
		}
		for _, nd := range c.Nodes() {
			m, err := scrapeGroups(ctx, nd)
			if err != nil {
				return err
			}
			hosting := false
			for _, h := range hosts {
				hosting = hosting || h == nd.Name()
			}
			if !hosting {
				for sample := range m {
					if strings.Contains(sample, labels) {
						return fmt.Errorf("%s does not host group b but reports %s", nd.Name(), sample)
					}
				}
				if m["kvstore_group_replicas_hosted"] != 0 {
					return fmt.Errorf("%s: kvstore_group_replicas_hosted %v, want 0", nd.Name(), m["kvstore_group_replicas_hosted"])
				}
				continue
			}
			isLeader := 0.0
			if nd.Name() == leader {
				isLeader = 1
			}
			for sample, want := range map[string]float64{
				"kvstore_group_replicas_hosted":     1,
				"kvstore_group_moves_in_progress":   0,
				"kvstore_group_is_leader" + labels:  isLeader,
				"kvstore_group_has_leader" + labels: 1,
				raftState("leader"):                 isLeader,
				raftState("follower"):               1 - isLeader,
			} {
				if got, ok := m[sample]; !ok || got != want {
					return fmt.Errorf("%s: %s = %v (present %v), want %v (leader %s)", nd.Name(), sample, got, ok, want, leader)
				}
			}
			for _, name := range []string{"kvstore_group_term", "kvstore_group_commit_index", "kvstore_group_applied_index", "kvstore_group_current_revision"} {
				if m[name+labels] <= 0 {
					return fmt.Errorf("%s: %s = %v, want > 0", nd.Name(), name+labels, m[name+labels])
				}
			}
			if v, ok := m["kvstore_group_last_contact_seconds"+labels]; !ok || v < 0 || (isLeader == 1 && v != 0) {
				return fmt.Errorf("%s: last contact %v (present %v), leader %v", nd.Name(), v, ok, isLeader == 1)
			}
		}
		return nil
	}
	// Leadership may move meanwhile (the leaders spread): the page is read
	// in the same poll.
	row := fmt.Sprintf(`<tr class="group" data-id="%d" data-role=`, g.GetId())
	waitFor(t, ctx, "group b's series on n1, n2, n3, and the leader's status page", func() error {
		if err := check("n1", "n2", "n3"); err != nil {
			return err
		}
		page, err := statusPage(ctx, c.Node(leader))
		if err == nil && !strings.Contains(page, row+`"leader">`) {
			err = fmt.Errorf("the status page of %s, the leader, lacks %s\"leader\"", leader, row)
		}
		return err
	})

	if _, err := c.Node("n2").Client().Cluster.MoveGroup(ctx, connect.NewRequest(&kvstorev1.MoveGroupRequest{Name: "b", Replicas: []string{"n2", "n3", "n4"}})); err != nil {
		t.Fatalf("move: %v", err)
	}
	waitFor(t, ctx, "group b's series on n2, n3, n4 and gone from n1", func() error { return check("n2", "n3", "n4") })
	for _, nd := range []*nodetest.Node{n1, c.Node("n4")} {
		page, err := statusPage(ctx, nd)
		if err != nil {
			t.Fatal(err)
		}
		if listed := strings.Contains(page, row); listed != (nd != n1) {
			t.Errorf("the status page of %s lists group b: %v", nd.Name(), listed)
		}
	}
}
