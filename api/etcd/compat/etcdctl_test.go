package compat

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvstore/kvstore/node/nodetest"
	"github.com/kvstore/kvstore/storage/snapfile"
)

// needTools skips a test when etcd's binaries are not installed (CI
// installs Debian's etcd-client and etcd-server).
func needTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			t.Skipf("%s is not installed (Debian: apt-get install etcd-client etcd-server)", n)
		}
	}
}

// transcript runs testdata/etcdctl.sh against endpoints.
func transcript(t *testing.T, ctx context.Context, endpoints []string) string {
	t.Helper()
	tmp := t.TempDir()
	cmd := exec.CommandContext(ctx, "bash", "testdata/etcdctl.sh")
	cmd.Env = append(os.Environ(), "ENDPOINTS="+strings.Join(endpoints, ","), "TMP="+tmp)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl.sh: %v\n%s", err, out)
	}
	return strings.ReplaceAll(string(out), tmp, "TMP")
}

// normalizers turn what legitimately differs between two clusters into
// placeholders: addresses, member and lease ids, revisions (kvstore's are
// raft indexes), raft terms and indexes, versions, sizes, hashes, names,
// latencies and which member leads.
var normalizers = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "ADDR"},
	{regexp.MustCompile(`"(cluster_id|member_id|revision|raft_term|create_revision|mod_revision|ID|lease)":\d+`), `"$1":N`},
	{regexp.MustCompile(`"(ClusterID|MemberID|Revision|RaftTerm|CreateRevision|ModRevision)" : \d+`), `"$1" : N`},
	// etcdctl prints member ids in hex without leading zeros.
	{regexp.MustCompile(`\b[0-9a-f]{12,16}\b`), "ID"},
	{regexp.MustCompile(`remaining\(\d+s\)`), "remaining(Ns)"},
	{regexp.MustCompile(`(--rev=|compaction |compacted revision )\d+`), "${1}N"},
	{regexp.MustCompile(`took = \S+`), "took = T"},
	{regexp.MustCompile(`^ADDR, ID, \d+\.\d+\.\d+, [\d.]+ [kMG]?B, (true|false), false, \d+, \d+, \d+, $`), "ADDR, ID, VERSION, SIZE, LEADER?, false, TERM, INDEX, INDEX, "},
	{regexp.MustCompile(`^ID, started, [^,]+, `), "ID, started, NAME, "},
	{regexp.MustCompile(`"name":"[^"]*"`), `"name":"NAME"`},
	{regexp.MustCompile(`^ADDR, \d+$`), "ADDR, HASH"},
}

// attachedKeys is a lease's keys as etcdctl prints them; etcd lists them
// in its map's order, which changes from run to run.
var attachedKeys = regexp.MustCompile(`attached keys\(\[([^\]]*)\]\)`)

// normalize applies normalizers line by line, sorts a lease's attached
// keys, and sorts the runs of lines that name one member each (members
// come in another order).
func normalize(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		for _, n := range normalizers {
			l = n.re.ReplaceAllString(l, n.with)
		}
		l = attachedKeys.ReplaceAllStringFunc(l, func(m string) string {
			keys := strings.Fields(attachedKeys.FindStringSubmatch(m)[1])
			sort.Strings(keys)
			return "attached keys([" + strings.Join(keys, " ") + "])"
		})
		lines[i] = l
	}
	for i := 0; i < len(lines); {
		j := i
		for j < len(lines) && strings.HasPrefix(lines[j], "ADDR") || j < len(lines) && strings.HasPrefix(lines[j], "ID, started") {
			j++
		}
		if j > i {
			sort.Strings(lines[i:j])
			i = j
		} else {
			i++
		}
	}
	return strings.Join(lines, "\n")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startEtcd runs a real etcd cluster of n members on loopback and returns
// their client addresses; the processes are killed at cleanup.
func startEtcd(t *testing.T, ctx context.Context, n int) []string {
	t.Helper()
	var clients, peers, initial []string
	for i := range n {
		clients = append(clients, fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		peers = append(peers, fmt.Sprintf("http://127.0.0.1:%d", freePort(t)))
		initial = append(initial, fmt.Sprintf("e%d=%s", i+1, peers[i]))
	}
	dir := t.TempDir()
	for i := range n {
		cmd := exec.Command("etcd",
			"--name", fmt.Sprintf("e%d", i+1),
			"--data-dir", filepath.Join(dir, fmt.Sprint(i)),
			"--listen-client-urls", "http://"+clients[i], "--advertise-client-urls", "http://"+clients[i],
			"--listen-peer-urls", peers[i], "--initial-advertise-peer-urls", peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "differential", "--logger", "zap", "--log-level", "error")
		log, err := os.Create(filepath.Join(dir, fmt.Sprintf("e%d.log", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			log.Close()
		})
	}
	for {
		out, err := exec.CommandContext(ctx, "etcdctl", "--endpoints", strings.Join(clients, ","), "endpoint", "health").CombinedOutput()
		if err == nil {
			return clients
		}
		select {
		case <-ctx.Done():
			t.Fatalf("etcd never became healthy: %v\n%s", err, out)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// The same etcdctl session against kvstore's etcd face and against a real
// etcd gives the same output, once normalized.
func TestEtcdctlDifferential(t *testing.T) {
	needTools(t, "etcdctl", "etcd")
	ctx := testCtx(t, 3*time.Minute)
	c := nodetest.NewCluster(t, 3)
	c.Leader(ctx)
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	ours := normalize(transcript(t, ctx, c.Endpoints()))
	theirs := normalize(transcript(t, ctx, startEtcd(t, ctx, 3)))
	if ours == theirs {
		return
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "etcd.txt"), filepath.Join(dir, "kvstore.txt")
	os.WriteFile(a, []byte(theirs), 0o644)
	os.WriteFile(b, []byte(ours), 0o644)
	diff, _ := exec.Command("diff", "-u", a, b).CombinedOutput()
	t.Fatalf("etcdctl differs between etcd and kvstore:\n%s", diff)
}

// etcdctl snapshot save writes a kvstore snapshot file, the one kvctl
// snapshot save writes and kvd restore takes (the differential test leaves
// it out: etcd's is a bbolt file).
func TestEtcdctlSnapshotSave(t *testing.T) {
	needTools(t, "etcdctl")
	ctx := testCtx(t, time.Minute)
	c := nodetest.NewCluster(t, 1)
	c.Leader(ctx)
	cl := newClient(t, c)
	for i := range 20 {
		if _, err := cl.Put(ctx, fmt.Sprintf("s%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(t.TempDir(), "snap.db")
	out, err := exec.CommandContext(ctx, "etcdctl", "--endpoints", c.Endpoints()[0], "snapshot", "save", path).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Snapshot saved at "+path) {
		t.Fatalf("snapshot save: %v\n%s", err, out)
	}
	checked, err := snapfile.Verify(path)
	if err != nil || checked.Keys != 20 {
		t.Fatalf("the saved file: %+v, %v", checked, err)
	}
}

// etcdctl watch with every member as an endpoint keeps going across the
// kill of the member it watched on: every value written comes, in order.
func TestEtcdctlWatchAcrossKill(t *testing.T) {
	needTools(t, "etcdctl")
	c, ctx := cluster(t, 3)
	// The victim is a follower: killing the leader would leave the others
	// without one for an election, and a watch opened with etcd's
	// require-leader (as etcdctl's are) that lands there is cancelled
	// with "no leader", by etcd as by kvd, which etcdctl does not retry.
	leader := c.Leader(ctx)
	victim := c.Other(leader)
	// The victim first: etcdctl 3.4's client watches on the first
	// endpoint it reaches.
	eps := []string{victim.Addr()}
	for _, nd := range c.Nodes() {
		if nd != victim {
			eps = append(eps, nd.Addr())
		}
	}
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	cmd := exec.CommandContext(wctx, "etcdctl", "--endpoints", strings.Join(eps, ","), "watch", "kw", "--prefix")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stop(); _ = cmd.Wait() }()
	cl := newClient(t, c)
	// The watch is in place once it reports a first write.
	for !strings.Contains(out.String(), "ready") {
		if _, err := cl.Put(ctx, "kw/ready", "ready"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("etcdctl watch never started: %s", out.String())
		case <-time.After(200 * time.Millisecond):
		}
	}
	const n = 20
	for i := 1; i <= n; i++ {
		if i == n/2 {
			victim.Kill()
		}
		if err := retry(ctx, func(ctx context.Context) error {
			_, err := cl.Put(ctx, "kw/v", strconv.Itoa(i))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	for !strings.Contains(out.String(), "\n"+strconv.Itoa(n)+"\n") {
		select {
		case <-ctx.Done():
			t.Fatalf("the watch never saw %d:\n%s", n, out.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	// Values come in order; a put retried after an unknown outcome may
	// come twice in a row.
	next := 1
	for _, line := range strings.Split(out.String(), "\n") {
		v, err := strconv.Atoi(line)
		if err != nil {
			continue
		}
		switch v {
		case next:
			next++
		case next - 1:
		default:
			t.Fatalf("value %d after %d:\n%s", v, next-1, out.String())
		}
	}
	if next != n+1 {
		t.Fatalf("saw up to %d:\n%s", next-1, out.String())
	}
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
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

// TestNormalizeSortsAttachedKeys: two runs that list a lease's keys in
// different orders compare equal.
func TestNormalizeSortsAttachedKeys(t *testing.T) {
	a := normalize("lease 1a2b3c4d5e6f7a8b granted with TTL(100s), remaining(97s), attached keys([lk2 lk1])")
	b := normalize("lease 1a2b3c4d5e6f7a8b granted with TTL(100s), remaining(99s), attached keys([lk1 lk2])")
	if a != b || !strings.Contains(a, "attached keys([lk1 lk2])") {
		t.Fatalf("%q and %q", a, b)
	}
}
