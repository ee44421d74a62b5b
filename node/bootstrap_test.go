package node

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// poll runs f until it returns nil or ctx ends.
func poll(t *testing.T, ctx context.Context, f func() error) {
	t.Helper()
	for {
		err := f()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("gave up: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func readyz(addr string) (int, string, error) {
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestBootstrapWaitSaysWhatItSees: a node waiting for --bootstrap-expect
// servers says how many it sees and waits for, in the log (once per change,
// not on every look), in /readyz and in Status, and stops saying it once
// the cluster formed.
func TestBootstrapWaitSaysWhatItSees(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var logs syncBuffer
	start := func(name string, join ...string) *Node {
		cfg := testConfig(t.TempDir())
		cfg.Name, cfg.BootstrapExpect, cfg.Join, cfg.FastGossip = name, 3, join, true
		cfg.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		n, err := Start(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close(context.Background()) })
		return n
	}
	status := func(n *Node) (*kvstorev1.StatusResponse, error) {
		resp, err := kvstorev1connect.NewClusterServiceClient(http.DefaultClient, n.URL()).Status(ctx, connect.NewRequest(&kvstorev1.StatusRequest{}))
		if err != nil {
			return nil, err
		}
		return resp.Msg, nil
	}
	sees := func(n *Node, seen int) func() error {
		return func() error {
			code, body, err := readyz(n.Addr())
			if err != nil {
				return err
			}
			want := fmt.Sprintf("waiting for 3 servers with bootstrap-expect 3; sees %d", seen)
			if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
				return fmt.Errorf("/readyz: %d %q, want 503 and %q", code, body, want)
			}
			st, err := status(n)
			if err != nil {
				return err
			}
			if st.GetBootstrapExpect() != 3 || st.GetBootstrapSeen() != uint32(seen) || !strings.Contains(st.GetBootstrapWaiting(), want) {
				return fmt.Errorf("status: expect %d seen %d waiting %q; want 3, %d, %q", st.GetBootstrapExpect(), st.GetBootstrapSeen(), st.GetBootstrapWaiting(), seen, want)
			}
			if err := n.Ready(); err == nil || !strings.Contains(err.Error(), want) {
				return fmt.Errorf("Ready: %v, want %q", err, want)
			}
			return nil
		}
	}

	a := start("a")
	poll(t, ctx, sees(a, 1))
	b := start("b", a.Addr())
	poll(t, ctx, sees(a, 2))
	poll(t, ctx, sees(b, 2))
	// Several looks a second, a line per change.
	time.Sleep(1500 * time.Millisecond) // lets the loop look again, unchanged
	c := start("c", a.Addr())
	for _, n := range []*Node{a, b, c} {
		if err := n.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		st, err := status(n)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetBootstrapExpect() != 0 || st.GetBootstrapSeen() != 0 || st.GetBootstrapWaiting() != "" {
			t.Errorf("%s after bootstrap: expect %d seen %d waiting %q; want none", n.ID(), st.GetBootstrapExpect(), st.GetBootstrapSeen(), st.GetBootstrapWaiting())
		}
	}

	// Once ready, each says so once, at INFO.
	var waits map[string][]int
	readies := map[string]int{}
	poll(t, ctx, func() error {
		waits, readies = map[string][]int{}, map[string]int{}
		scanLog(t, logs.String(), waits, readies)
		for _, id := range []string{"a", "b", "c"} {
			if readies[id] != 1 {
				return fmt.Errorf("%s logged %d ready lines, want 1", id, readies[id])
			}
		}
		return nil
	})
	// a saw 1 then 2 (and perhaps 2 of 3 in an instant before c
	// bootstrapped it); b saw 2 at once (or 1, before gossip settled). A
	// loaded machine can make a member look gone for an instant (3 then
	// 2): that is a change too, and gets its line.
	if got := waits["a"]; len(got) < 2 || got[0] != 1 || got[1] != 2 || !onePerChange(got) {
		t.Errorf("a logged seen=%v while waiting; want [1 2 ...], one line per change", got)
	}
	if got := waits["b"]; len(got) < 1 || !onePerChange(got) {
		t.Errorf("b logged seen=%v while waiting; want a line per change", got)
	}
}

// onePerChange reports whether seen counts, each of 1 to 3 servers, never
// repeat from one line to the next: the unchanged looks of the 1.5 s
// above logged nothing.
func onePerChange(seen []int) bool {
	for i, n := range seen {
		if n < 1 || n > 3 || (i > 0 && seen[i-1] == n) {
			return false
		}
	}
	return true
}

// scanLog collects, per node, the seen counts of its "waiting to
// bootstrap" lines and the number of its ready lines.
func scanLog(t *testing.T, log string, waits map[string][]int, readies map[string]int) {
	t.Helper()
	for _, line := range strings.Split(log, "\n") {
		var l struct {
			Msg    string `json:"msg"`
			Node   string `json:"node"`
			Expect int    `json:"expect"`
			Seen   int    `json:"seen"`
		}
		if json.Unmarshal([]byte(line), &l) != nil {
			continue
		}
		switch l.Msg {
		case "ready: serving requests":
			readies[l.Node]++
		case "waiting to bootstrap a new cluster":
			if l.Expect != 3 {
				t.Errorf("log line %s: expect %d", line, l.Expect)
			}
			waits[l.Node] = append(waits[l.Node], l.Seen)
		}
	}
}
