package ctl

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kvstore/kvstore/node/nodetest"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// The commands of watches, leases and locks run against real nodes.

func protojsonUnmarshal(s string, m proto.Message) error {
	return protojson.Unmarshal([]byte(s), m)
}

// syncBuffer is a bytes.Buffer safe to read while kvctl writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// background is a kvctl run in a goroutine.
type background struct {
	stdout, stderr syncBuffer
	cancel         context.CancelFunc
	done           chan struct{}
	code           int
}

// start runs kvctl with args in the background until it ends or stop is
// called; the test's cleanup stops it.
func start(t *testing.T, endpoints string, args ...string) *background {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	b := &background{cancel: cancel, done: make(chan struct{})}
	args = append([]string{"--endpoints", endpoints}, args...)
	go func() {
		defer close(b.done)
		b.code = run(ctx, args, strings.NewReader(""), &b.stdout, &b.stderr)
	}()
	t.Cleanup(func() { b.stop(t) })
	return b
}

// stop cancels the run, as Ctrl-C does, and returns its exit code.
func (b *background) stop(t *testing.T) int {
	t.Helper()
	b.cancel()
	return b.wait(t)
}

// wait waits for the run to end by itself and returns its exit code.
func (b *background) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("kvctl did not end; stderr %q", b.stderr.String())
	}
	return b.code
}

// waitFor polls until cond holds, for at most 30s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func put(t *testing.T, addr, key, value string) int64 {
	t.Helper()
	out := ok(t, addr, "", "put", key, value, "-o", "json")
	var resp kvstorev1.PutResponse
	if err := protojsonUnmarshal(out, &resp); err != nil {
		t.Fatal(err)
	}
	return resp.GetHeader().GetRevision()
}

func TestLeaseCommands(t *testing.T) {
	cl := nodetest.NewCluster(t, 1)
	addr := cl.Endpoints()[0]

	id := strings.TrimSpace(ok(t, addr, "", "lease", "grant", "1500ms"))
	if _, err := strconv.ParseInt(id, 16, 64); err != nil {
		t.Fatalf("grant printed %q, want a hex id", id)
	}
	want(t, "put --lease", ok(t, addr, "", "put", "--lease", id, "svc/a", "up"), "OK\n")
	want(t, "put --lease 0x", ok(t, addr, "", "put", "--lease", "0x"+id, "svc/b", "up"), "OK\n")
	ttl := ok(t, addr, "", "lease", "ttl", id, "--keys")
	if !strings.HasPrefix(ttl, "lease "+id+": ") || !strings.Contains(ttl, " of 2s\n") || !strings.HasSuffix(ttl, "\nsvc/a\nsvc/b\n") {
		t.Fatalf("lease ttl --keys: %q", ttl)
	}
	if out := ok(t, addr, "", "lease", "list"); !strings.Contains(out, id+"  2s") {
		t.Fatalf("lease list: %q", out)
	}
	if out := ok(t, addr, "", "lease", "keepalive", id, "--once"); out != "lease "+id+" kept alive, TTL 2s\n" {
		t.Fatalf("keepalive --once: %q", out)
	}
	want(t, "revoke", ok(t, addr, "", "lease", "revoke", id), "OK\n")
	fails(t, addr, 1, `kvctl: get: not_found: key "svc/a" not found`, "get", "svc/a")
	fails(t, addr, 1, "kvctl: lease ttl: not_found: lease "+id+" not found (expired or revoked)", "lease", "ttl", id)
	fails(t, addr, 1, "kvctl: lease revoke: not_found: lease "+id+" not found (expired or revoked)", "lease", "revoke", id)
	fails(t, addr, 1, "kvctl: put: not_found: lease "+id+" not found (expired or revoked)", "put", "--lease", id, "k", "v")
	fails(t, addr, 2, `kvctl: grant: invalid TTL "soon": want a duration like 10s or 1m`, "lease", "grant", "soon")
	fails(t, addr, 2, `kvctl: ttl: invalid lease id "xyz": want the id in hex, as lease grant prints it`, "lease", "ttl", "xyz")

	// A number is seconds; --id picks the id.
	if out := ok(t, addr, "", "lease", "grant", "7", "--id", "abc"); out != "abc\n" {
		t.Fatalf("grant --id: %q", out)
	}
	if out := ok(t, addr, "", "lease", "ttl", "abc"); !strings.HasSuffix(out, " of 7s\n") {
		t.Fatalf("ttl: %q", out)
	}
}

func TestLeaseKeepAliveCommand(t *testing.T) {
	cl := nodetest.NewCluster(t, 1)
	addr := cl.Endpoints()[0]
	id := strings.TrimSpace(ok(t, addr, "", "lease", "grant", "2s"))
	ok(t, addr, "", "put", "--lease", id, "svc/a", "up")

	ka := start(t, addr, "lease", "keepalive", id)
	began := time.Now()
	// Renewals every 2s/3: once 3s have passed, the key lives only thanks
	// to them.
	waitFor(t, "3s of renewals", func() bool {
		return time.Since(began) > 3*time.Second && strings.Count(ka.stdout.String(), "kept alive") >= 4
	})
	want(t, "key kept alive", ok(t, addr, "", "get", "svc/a"), "up\n")
	if code := ka.stop(t); code != 0 || ka.stderr.String() != "" {
		t.Fatalf("keepalive stopped by Ctrl-C: exit %d, stderr %q", code, ka.stderr.String())
	}
	if line := strings.SplitN(ka.stdout.String(), "\n", 2)[0]; line != "lease "+id+" kept alive, TTL 2s" {
		t.Fatalf("first line %q", line)
	}

	// A keepalive that loses its lease says so and fails.
	ka = start(t, addr, "lease", "keepalive", id)
	waitFor(t, "a renewal", func() bool { return strings.Contains(ka.stdout.String(), "kept alive") })
	ok(t, addr, "", "lease", "revoke", id)
	if code := ka.wait(t); code != 1 || ka.stderr.String() != "kvctl: lease keepalive: not_found: lease "+id+" lost: expired or revoked\n" {
		t.Fatalf("keepalive of a revoked lease: exit %d, stderr %q", code, ka.stderr.String())
	}
}

// TestWatchCommand watches a prefix through all three nodes, the first one
// first, kills that one mid-way, and checks the output: every change once,
// in order, with its revision.
func TestWatchCommand(t *testing.T) {
	cl := nodetest.NewCluster(t, 3)
	// The node killed is a follower, so that the writes never wait for an
	// election.
	leader := cl.Leader(t.Context())
	var nodes []*nodetest.Node
	for _, n := range cl.Nodes() {
		if n != leader {
			nodes = append(nodes, n)
		}
	}
	nodes = append(nodes, leader)
	first := nodes[0]
	endpoints := strings.Join([]string{nodes[0].Addr(), nodes[1].Addr(), nodes[2].Addr()}, ",")
	others := nodes[1].Addr() + "," + nodes[2].Addr()

	// The watches start right after a revision, so that they see every
	// later write however long they take to get going.
	from := strconv.FormatInt(put(t, others, "x", "x")+1, 10)
	w := start(t, endpoints, "watch", "w/", "--prefix", "--prev-kv", "--rev", from)
	jw := start(t, endpoints, "watch", "w/a", "-o", "json", "--rev", from)
	rev0 := put(t, others, "w/a", "0")
	wantOut := fmt.Sprintf("%d PUT w/a 0\n", rev0)
	prev := map[string]string{"w/a": "0"}
	line := func(rev int64, typ, key, value string) string {
		s := fmt.Sprintf("%d %s %s", rev, typ, key)
		if typ == "PUT" {
			s += " " + value
		}
		if p, ok := prev[key]; ok {
			s += " (prev " + p + ")"
		}
		if typ == "PUT" {
			prev[key] = value
		} else {
			delete(prev, key)
		}
		return s + "\n"
	}
	for i := range 40 {
		if i == 20 {
			first.Kill()
		}
		key := fmt.Sprintf("w/%c", 'a'+i%3)
		if i%4 == 3 {
			if _, exists := prev[key]; exists {
				out := ok(t, others, "", "del", key, "-o", "json")
				var resp kvstorev1.DeleteResponse
				if err := protojsonUnmarshal(out, &resp); err != nil {
					t.Fatal(err)
				}
				wantOut += line(resp.GetHeader().GetRevision(), "DELETE", key, "")
				continue
			}
		}
		v := strconv.Itoa(i + 1)
		wantOut += line(put(t, others, key, v), "PUT", key, v)
	}
	waitFor(t, "every change", func() bool { return len(w.stdout.String()) >= len(wantOut) })
	if code := w.stop(t); code != 0 {
		t.Fatalf("watch exit %d, stderr %q", code, w.stderr.String())
	}
	if got := w.stdout.String(); got != wantOut {
		t.Fatalf("watch printed\n%s\nwant\n%s", got, wantOut)
	}
	if !strings.Contains(w.stderr.String(), "resuming from revision") {
		t.Errorf("no word of the resume on stderr: %q", w.stderr.String())
	}
	// The JSON watch: the created response first, then one response per
	// line with the events of w/a.
	jw.stop(t)
	jl := strings.Split(strings.TrimSpace(jw.stdout.String()), "\n")
	var created kvstorev1.WatchResponse
	if err := protojsonUnmarshal(jl[0], &created); err != nil || !created.GetCreated() {
		t.Fatalf("first JSON line %q: %v", jl[0], err)
	}

	// Replay from a revision, and the error of a compacted one.
	replay := start(t, others, "watch", "w/a", "--rev", strconv.FormatInt(rev0, 10), "--no-delete")
	waitFor(t, "the replay", func() bool {
		return strings.HasPrefix(replay.stdout.String(), wantOut[:strings.Index(wantOut, "\n")+1])
	})
	replay.stop(t)
	want(t, "compact", ok(t, others, "", "compact", strconv.FormatInt(rev0+2, 10)), "OK\n")
	// Every node applies the compaction in its own time: poll.
	wantErr := fmt.Sprintf("kvctl: watch: revision %d was compacted: the oldest revision left is %d\n", rev0, rev0+2)
	waitFor(t, "the compacted error", func() bool {
		r := kvctl(t, others, "", "--timeout", "1s", "watch", "w/a", "--rev", strconv.FormatInt(rev0, 10))
		return r.code == 1 && r.stderr == wantErr
	})
}

func TestLockCommand(t *testing.T) {
	cl := nodetest.NewCluster(t, 1)
	addr := cl.Endpoints()[0]

	// The command's output and exit code come through.
	r := kvctl(t, addr, "", "lock", "job", "--", "sh", "-c", "echo hi; echo oops >&2; exit 3")
	if r.code != 3 || r.stdout != "hi\n" || r.stderr != "oops\n" {
		t.Fatalf("lock -- sh: %+v", r)
	}

	// Mutual exclusion: concurrent read-modify-writes of a file, each
	// under the lock, lose no increment.
	file := filepath.Join(t.TempDir(), "n")
	if err := os.WriteFile(file, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `n=$(cat "$1"); sleep 0.05; echo $((n+1)) > "$1"`
	const runs = 5
	var wg sync.WaitGroup
	for range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if r := kvctl(t, addr, "", "lock", "counter", "--", "sh", "-c", script, "sh", file); r.code != 0 {
				t.Errorf("lock -- increment: %+v", r)
			}
		}()
	}
	wg.Wait()
	if b, _ := os.ReadFile(file); string(b) != fmt.Sprintf("%d\n", runs) {
		t.Fatalf("counter file %q, want %d", b, runs)
	}

	// Without a command: print the key and hold until Ctrl-C.
	hold := start(t, addr, "lock", "maint")
	waitFor(t, "the lock", func() bool { return strings.HasPrefix(hold.stdout.String(), "maint/") })
	fails(t, addr, 1, "kvctl: lock maint: context deadline exceeded", "--timeout", "300ms", "lock", "maint", "--", "true")
	if code := hold.stop(t); code != 0 {
		t.Fatalf("hold: exit %d, stderr %q", code, hold.stderr.String())
	}
	if r := kvctl(t, addr, "", "--timeout", "5s", "lock", "maint", "--", "true"); r.code != 0 {
		t.Fatalf("lock after release: %+v", r)
	}
	fails(t, addr, 2, `kvctl: lock: invalid --ttl 0s: must be positive`, "lock", "x", "--ttl", "0")
}

// TestLockLostKillsCommand revokes the lease of a kvctl lock while its
// command runs: kvctl must kill the command and fail.
func TestLockLostKillsCommand(t *testing.T) {
	cl := nodetest.NewCluster(t, 1)
	addr := cl.Endpoints()[0]
	c := cl.Client()
	ctx := t.Context()
	lk := start(t, addr, "lock", "job", "--ttl", "3s", "--", "sleep", "60")
	var leases []*kvstorev1.LeaseStatus
	waitFor(t, "the lock's lease", func() bool {
		resp, err := c.Lease.Leases(ctx, connect.NewRequest(&kvstorev1.LeasesRequest{}))
		if err != nil {
			return false
		}
		leases = resp.Msg.GetLeases()
		return len(leases) == 1
	})
	// The lock is held once its key exists.
	waitFor(t, "the lock key", func() bool {
		resp, err := c.KV.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("job/"), Prefix: true, CountOnly: true}))
		return err == nil && resp.Msg.GetCount() == 1
	})
	if _, err := c.Lease.Revoke(ctx, connect.NewRequest(&kvstorev1.RevokeRequest{Id: leases[0].GetId()})); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	code := lk.wait(t)
	if code != 1 || !strings.HasPrefix(lk.stderr.String(), "kvctl: lock job lost while sleep ran") {
		t.Fatalf("exit %d, stderr %q", code, lk.stderr.String())
	}
	if d := time.Since(began); d > 10*time.Second {
		t.Fatalf("took %v to notice", d)
	}
}
