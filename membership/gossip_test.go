package membership

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

func TestThreeNodesJoinThroughOneSeed(t *testing.T) {
	t.Parallel()
	a, b, c := newTestNode(t, "a"), newTestNode(t, "b"), newTestNode(t, "c")
	a.start(func(c *Config) { c.Meta.HasRaftState = true; c.Meta.BootstrapExpect = 1 })

	// The first node has no seeds: JoinLoop returns at once.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.g.JoinLoop(ctx)
	if ctx.Err() != nil {
		t.Fatal("JoinLoop without seeds did not return at once")
	}

	b.startJoin(a.addr.String())
	c.startJoin(a.addr.String())
	nodes := []*testNode{a, b, c}
	waitFor(t, 5*time.Second, func() string { return allSee(nodes, a, b, c) })

	for _, n := range nodes {
		ms := n.g.Members()
		if len(ms) != 3 || ms[0].ID != "a" || ms[1].ID != "b" || ms[2].ID != "c" {
			t.Fatalf("%s: Members not sorted by id or wrong: %+v", n.id, ms)
		}
		want := Meta{ID: "a", Addr: a.addr.String(), BootstrapExpect: 1, HasRaftState: true}
		if ms[0].Meta != want {
			t.Errorf("%s sees a's meta %+v, want %+v", n.id, ms[0].Meta, want)
		}
		want = Meta{ID: "b", Addr: b.addr.String(), BootstrapExpect: 3}
		if ms[1].Meta != want {
			t.Errorf("%s sees b's meta %+v, want %+v", n.id, ms[1].Meta, want)
		}
		if ms[0].Since.IsZero() {
			t.Errorf("%s: Since not set", n.id)
		}
	}
	if l := b.g.Local(); l.ID != "b" || l.State != StateAlive || l.Addr != b.addr.String() || l.Meta.Addr != b.addr.String() {
		t.Errorf("b.Local() = %+v", l)
	}
	waitFor(t, 5*time.Second, func() string {
		for _, n := range nodes {
			if n.change.Load() == 0 {
				return n.id + ": OnChange never called"
			}
		}
		return ""
	})
}

func TestJoinByHostName(t *testing.T) {
	t.Parallel()
	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	a.start(nil)
	// "localhost" may resolve to ::1 too, where nobody listens: all
	// addresses are tried.
	b.startJoin("localhost:" + strconv.Itoa(a.addr.Port))
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })
}

func TestJoinSkipsSelfAndDeadSeeds(t *testing.T) {
	t.Parallel()
	// A refused port: listen, note the address, close.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	a.start(nil)
	b.startJoin(b.addr.String(), deadAddr, a.addr.String())
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })

	// A node whose seeds are all itself (by address and by name) is the
	// first node: JoinLoop returns at once.
	c := newTestNode(t, "c")
	c.start(func(cfg *Config) {
		cfg.Join = []string{c.addr.String(), "localhost:" + strconv.Itoa(c.addr.Port)}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	c.g.JoinLoop(ctx)
	if ctx.Err() != nil || time.Since(start) > time.Second {
		t.Fatalf("JoinLoop with only ourselves as seed took %s", time.Since(start))
	}
	if ms := c.g.Members(); len(ms) != 1 {
		t.Fatalf("c joined someone: %+v", ms)
	}
}

func TestJoinLoopReturnsWhenContacted(t *testing.T) {
	t.Parallel()
	// b's only seed never answers, but a joins b: b is in a cluster and
	// stops retrying.
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()

	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	b.start(func(c *Config) { c.Join = []string{deadAddr} })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.g.JoinLoop(ctx)
	}()
	a.startJoin(b.addr.String())
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("JoinLoop kept retrying its dead seed after being joined")
	}
	if ctx.Err() != nil {
		t.Fatal("JoinLoop ran into its deadline")
	}
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })
}

func TestJoinLoopRetriesUntilSeedAppears(t *testing.T) {
	t.Parallel()
	// Reserve an address for the seed, then free it so dials are refused.
	ln, pc := listenShared(t)
	seedAddr := ln.Addr().String()
	ln.Close()
	pc.Close()

	b := newTestNode(t, "b")
	b.start(func(c *Config) { c.Join = []string{seedAddr} })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	joined := make(chan struct{})
	go func() {
		defer close(joined)
		b.g.JoinLoop(ctx)
	}()
	// Every retry is a warning naming the seed, the reason, the attempt
	// and the wait before the next; the backoff keeps them few.
	waitFor(t, 5*time.Second, func() string {
		for i := 1; i <= 3; i++ {
			if len(b.logs.find(slog.LevelWarn, "cannot join the cluster yet", seedAddr, "refused", fmt.Sprintf(`attempt="%d"`, i), "retry_in=")) != 1 {
				return fmt.Sprintf("no single warning for attempt %d:\n%s", i, b.logs.String())
			}
		}
		return ""
	})

	ln2, err := net.Listen("tcp", seedAddr)
	if err != nil {
		t.Fatalf("re-bind seed address (taken meanwhile?): %v", err)
	}
	pc2, err := net.ListenPacket("udp", seedAddr)
	if err != nil {
		ln2.Close()
		t.Fatalf("re-bind seed address (taken meanwhile?): %v", err)
	}
	a := newTestNodeOn(t, "a", ln2, pc2)
	a.start(nil)
	select {
	case <-joined:
	case <-time.After(10 * time.Second):
		t.Fatal("JoinLoop did not return after the seed appeared")
	}
	if ctx.Err() != nil {
		t.Fatal("JoinLoop gave up instead of joining")
	}
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })
}

func TestSetMetaPropagates(t *testing.T) {
	t.Parallel()
	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	a.start(nil)
	b.startJoin(a.addr.String())
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })

	before := b.change.Load()
	want := Meta{ID: "a", Addr: a.addr.String(), BootstrapExpect: 5, HasRaftState: true}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.g.SetMeta(ctx, want); err != nil {
		t.Fatalf("SetMeta: %v", err)
	}
	if got := a.g.Local().Meta; got != want {
		t.Errorf("a.Local().Meta = %+v, want %+v", got, want)
	}
	waitFor(t, 5*time.Second, func() string {
		if m, _ := b.member("a"); m.Meta != want {
			return fmt.Sprintf("b sees a's meta as %+v", m.Meta)
		}
		if b.change.Load() == before {
			return "b's OnChange not called"
		}
		return ""
	})
	if err := a.g.SetMeta(ctx, Meta{ID: "other"}); err == nil {
		t.Error("SetMeta changed the id")
	}
}

func TestLeaveIsDistinguishableFromCrash(t *testing.T) {
	t.Parallel()
	a, b, c := newTestNode(t, "a"), newTestNode(t, "b"), newTestNode(t, "c")
	a.start(nil)
	b.startJoin(a.addr.String())
	c.startJoin(a.addr.String())
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b, c}, a, b, c) })

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.g.Leave(ctx); err != nil {
		t.Fatalf("Leave: %v", err)
	}
	if err := c.g.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitFor(t, 5*time.Second, func() string {
		for _, n := range []*testNode{a, b} {
			if m, ok := n.member("c"); !ok || m.State != StateLeft || !m.Meta.Leaving {
				return fmt.Sprintf("%s sees c as %+v", n.id, m)
			}
		}
		return ""
	})

	// A crash: Shutdown without Leave. The failure detector declares it
	// dead, not left.
	crashed := time.Now()
	if err := b.g.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	waitFor(t, 5*time.Second, func() string {
		if m, ok := a.member("b"); !ok || m.State != StateDead || m.Meta.Leaving {
			return fmt.Sprintf("a sees b as %+v", m)
		}
		return ""
	})
	t.Logf("crash detected after %s", time.Since(crashed).Round(10*time.Millisecond))
	if m, _ := a.member("c"); m.State != StateLeft {
		t.Errorf("a now sees c as %v, want left", m.State)
	}
	if err := b.g.Shutdown(); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
	if err := b.g.Leave(ctx); err == nil {
		t.Error("Leave after Shutdown did not fail")
	}
}

func TestDuplicateLiveIDRefused(t *testing.T) {
	t.Parallel()
	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	a.start(nil)
	b.startJoin(a.addr.String())
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })

	dup := newTestNode(t, "b")
	dup.start(func(c *Config) { c.Join = []string{a.addr.String()} })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	dup.g.JoinLoop(ctx)
	if ctx.Err() == nil {
		t.Fatal("JoinLoop of a node with a duplicate id reported success")
	}

	// The cluster still has the original b, at its own address.
	if msg := allSee([]*testNode{a, b}, a, b); msg != "" {
		t.Fatal(msg)
	}
	if len(a.g.Members()) != 2 {
		t.Fatalf("a's members: %+v", a.g.Members())
	}
	// Both sides say so clearly.
	if len(a.logs.find(slog.LevelError, `"b"`, b.addr.String(), dup.addr.String(), "live node")) == 0 {
		t.Errorf("seed did not log the conflict:\n%s", a.logs.String())
	}
	if len(dup.logs.find(slog.LevelError, "node id conflict", b.addr.String(), dup.addr.String())) == 0 {
		t.Errorf("newcomer did not log the conflict:\n%s", dup.logs.String())
	}
}

func TestRestartWithSameIDOnNewAddress(t *testing.T) {
	t.Parallel()
	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	a.start(nil)
	b.startJoin(a.addr.String())
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })

	if err := b.g.Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() string {
		if m, _ := a.member("b"); m.State != StateDead {
			return fmt.Sprintf("a sees b as %v", m.State)
		}
		return ""
	})

	b2 := newTestNode(t, "b")
	b2.startJoin(a.addr.String())
	// Accepted once the old address has been dead DeadNodeReclaimTime
	// (2 s with Fast) and b2 announced itself again (push/pull, 2 s).
	waitFor(t, 10*time.Second, func() string { return allSee([]*testNode{a, b2}, a, b2) })
}

func TestEncryption(t *testing.T) {
	t.Parallel()
	key1, key2 := make([]byte, 32), make([]byte, 16)
	rand.Read(key1)
	rand.Read(key2)
	withKey := func(key []byte, seeds ...string) func(*Config) {
		return func(c *Config) { c.Key = key; c.Join = seeds }
	}

	a, b := newTestNode(t, "a"), newTestNode(t, "b")
	a.start(withKey(key1))
	b.start(withKey(key1, a.addr.String()))
	b.join()
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b}, a, b) })

	wrong, none := newTestNode(t, "wrong"), newTestNode(t, "none")
	wrong.start(withKey(key2, a.addr.String()))
	none.start(withKey(nil, a.addr.String()))
	var wg sync.WaitGroup
	for _, n := range []*testNode{wrong, none} {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			n.g.JoinLoop(ctx)
			if ctx.Err() == nil {
				t.Errorf("%s joined a cluster with a different key", n.id)
			}
		})
	}
	wg.Wait()

	if msg := allSee([]*testNode{a, b}, a, b); msg != "" {
		t.Fatal(msg)
	}
	for _, n := range []*testNode{wrong, none} {
		if ms := n.g.Members(); len(ms) != 1 {
			t.Errorf("%s sees %+v", n.id, ms)
		}
		if len(n.logs.find(slog.LevelWarn, "cannot join", "encryption mismatch")) == 0 {
			t.Errorf("%s: no clear log about the key:\n%s", n.id, n.logs.String())
		}
	}
	for _, peer := range []*testNode{wrong, none} {
		if len(a.logs.find(slog.LevelError, "memberlist:", "crypt")) == 0 {
			t.Errorf("seed did not log the refused %s node:\n%s", peer.id, a.logs.String())
		}
	}
}

func TestPacketFilterPartitionAndHeal(t *testing.T) {
	t.Parallel()
	a, b, c := newTestNode(t, "a"), newTestNode(t, "b"), newTestNode(t, "c")
	a.start(nil)
	b.startJoin(a.addr.String())
	c.startJoin(a.addr.String())
	all := []*testNode{a, b, c}
	waitFor(t, 5*time.Second, func() string { return allSee(all, a, b, c) })

	// Cut c off: its gossip streams at the "demux" and "dialer", its
	// packets in both directions with the packet filter.
	cAddr := c.addr.String()
	c.cut.Store(true)
	c.tr.SetPacketFilter(func(net.Addr) bool { return false })
	for _, n := range []*testNode{a, b} {
		n.tr.SetPacketFilter(func(from net.Addr) bool { return from.String() != cAddr })
	}

	sawSuspect := false
	waitFor(t, 5*time.Second, func() string {
		for _, n := range []*testNode{a, b} {
			m, _ := n.member("c")
			switch m.State {
			case StateSuspect:
				sawSuspect = true
				return "c is suspect"
			case StateAlive:
				return n.id + " still sees c alive"
			}
		}
		for _, id := range []string{"a", "b"} {
			if m, _ := c.member(id); m.State == StateAlive {
				return "c still sees " + id + " alive"
			}
		}
		return ""
	})
	t.Logf("suspect state observed before dead: %v", sawSuspect)
	if m, _ := a.member("c"); m.State != StateDead {
		t.Errorf("a sees cut-off c as %v, want dead", m.State)
	}

	// Heal: the reconnect loop brings the sides together again.
	c.cut.Store(false)
	for _, n := range all {
		n.tr.SetPacketFilter(nil)
	}
	waitFor(t, 10*time.Second, func() string { return allSee(all, a, b, c) })
}

func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	if _, err := New(Config{Meta: Meta{ID: "a"}}); err == nil {
		t.Error("New without transport succeeded")
	}
	for name, mod := range map[string]func(*Config){
		"empty id":   func(c *Config) { c.Meta.ID = "" },
		"id spaces":  func(c *Config) { c.Meta.ID = "a b" },
		"bad key":    func(c *Config) { c.Key = []byte("short") },
		"huge meta":  func(c *Config) { c.Meta.Addr = string(make([]byte, 600)) },
		"neg expect": func(c *Config) { c.Meta.BootstrapExpect = -1 },
	} {
		n := newTestNode(t, "a")
		if _, err := n.tryStart(mod); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
		// A failed New shuts the transport down (its listener too).
		if _, err := n.gln.Accept(); err == nil {
			t.Errorf("%s: transport still running after failed New", name)
		}
	}

	n := newTestNode(t, "a")
	n.addr = &net.TCPAddr{IP: net.IPv4zero, Port: n.addr.Port}
	if _, err := n.tryStart(nil); err == nil {
		t.Error("New with a wildcard advertise address succeeded")
	}
}

// admitByCluster is the node's rule for gossip, reduced to cluster ids:
// nodes with two different ids refuse each other; a node with none is
// taken by all.
func admitByCluster(self string) func(Meta) error {
	return func(m Meta) error {
		if self != "" && m.ClusterID != "" && m.ClusterID != self {
			return otherClusterErr{}
		}
		return nil
	}
}

// startIn starts n as a node of cluster id (none when empty) joining seeds.
func (n *testNode) startIn(id string, seeds ...string) {
	n.t.Helper()
	n.start(func(c *Config) {
		c.Meta.ClusterID = id
		c.Admit = admitByCluster(id)
		c.Join = seeds
	})
	if len(seeds) > 0 {
		n.join()
	}
}

// TestAdmitKeepsClustersApart: two gossip pools whose nodes refuse each
// other (Config.Admit) never merge. A join through the other pool fails,
// quietly after the first time (the node reports it itself); a node of no
// cluster yet is taken by both, and gossip through it still does not merge
// them; once it says it is of one, the other records that.
func TestAdmitKeepsClustersApart(t *testing.T) {
	t.Parallel()
	a1, a2 := newTestNode(t, "a1"), newTestNode(t, "a2")
	b1, b2 := newTestNode(t, "b1"), newTestNode(t, "b2")
	a1.startIn("A")
	a2.startIn("A", a1.addr.String())
	b1.startIn("B")
	b2.startIn("B", b1.addr.String())
	as, bs := []*testNode{a1, a2}, []*testNode{b1, b2}
	waitFor(t, 5*time.Second, func() string { return allSee(as, a1, a2) + allSee(bs, b1, b2) })

	// b3 is of B and given A's node as its seed: refused.
	b3 := newTestNode(t, "b3")
	b3.startIn("B")
	b3.g.seeds = []string{a1.addr.String()}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	b3.g.JoinLoop(ctx)
	cancel()
	if ctx.Err() == nil {
		t.Fatal("a node of cluster B joined through a node of cluster A")
	}
	if b3.g.otherCluster.Load() == 0 {
		t.Error("the refused join was not counted as one by another cluster")
	}
	if w := b3.logs.find(slog.LevelWarn, "cannot join"); len(w) > 0 {
		t.Errorf("a join refused by another cluster warned %d times: %v", len(w), w)
	}
	// With a seed that is merely down besides, it keeps warning about that.
	b4 := newTestNode(t, "b4")
	b4.startIn("B")
	down := newTestNode(t, "down")
	b4.g.seeds = []string{a1.addr.String(), down.addr.String()}
	down.ln.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 2*time.Second)
	b4.g.JoinLoop(ctx)
	cancel()
	if w := b4.logs.find(slog.LevelWarn, "cannot join"); len(w) == 0 {
		t.Error("a join that failed for another reason too did not warn")
	}
	for _, n := range []*testNode{a1, b3} {
		if w := n.logs.find(slog.LevelWarn, "belongs to cluster x"); len(w) > 0 {
			t.Errorf("%s: memberlist's own lines about refusals were logged: %v", n.id, w)
		}
	}

	// f is of no cluster: both pools take it, and through it each pool
	// hears of the other, and refuses it.
	f := newTestNode(t, "f")
	f.startIn("", a1.addr.String())
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b1.g.ml.Join([]string{f.addr.String()}); err != nil {
		t.Fatalf("b1 joining f: %v", err)
	}
	waitFor(t, 5*time.Second, func() string {
		return allSee(as, a1, a2, f) + allSee(bs, b1, b2, f) + allSee([]*testNode{f}, a1, a2, b1, b2, f)
	})
	// Some gossip rounds later, still apart.
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if msg := allSee(as, a1, a2, f) + allSee(bs, b1, b2, f); msg != "" {
			t.Fatal(msg)
		}
	}

	// f joins A: B's nodes, who knew it, learn it.
	if err := f.g.SetMeta(ctx, Meta{ID: "f", Addr: f.addr.String(), BootstrapExpect: 3, ClusterID: "A"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, func() string {
		for _, n := range bs {
			if m, _ := n.member("f"); m.Meta.ClusterID != "A" {
				return fmt.Sprintf("%s sees f as %+v", n.id, m.Meta)
			}
		}
		return ""
	})
}

// TestJoinThroughEverySeed: a node whose seeds answer from two separate
// pools (as when nodes starting together each joined the first one they
// reached through a DNS name, and formed islands) joins through all of
// them, which merges the pools. Joining through the first seed that
// answers left the islands apart for good: with --bootstrap-expect 5, five
// containers started at once never bootstrapped.
func TestJoinThroughEverySeed(t *testing.T) {
	t.Parallel()
	a, b, c := newTestNode(t, "a"), newTestNode(t, "b"), newTestNode(t, "c")
	a.start(nil)
	b.start(nil)
	c.startJoin(a.addr.String(), b.addr.String())
	waitFor(t, 5*time.Second, func() string { return allSee([]*testNode{a, b, c}, a, b, c) })
}
