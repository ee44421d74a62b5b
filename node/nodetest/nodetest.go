// Package nodetest starts throwaway kvstore clusters inside a Go test: real
// nodes (raft, gossip, Badger, sockets on 127.0.0.1) in the test process,
// each in a temporary directory, with faults to inject.
//
//	func TestSomething(t *testing.T) {
//		c := nodetest.NewCluster(t, 3)
//		ctx := t.Context()
//		kv := c.Client().KV
//		if _, err := kv.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
//			t.Fatal(err)
//		}
//		c.Leader(ctx).Kill()       // abrupt: no leave
//		c.WaitLeader(ctx)          // a new one is elected
//	}
//
// Everything is cleaned up with t.Cleanup.
package nodetest

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kvstore/kvstore/api/client"
	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// Option changes how a cluster is built.
type Option func(*options)

type options struct {
	configure func(name string, cfg *node.Config)
	logger    *slog.Logger
	formTime  time.Duration
	prefix    string
	tls       bool
}

// WithNamePrefix names the nodes prefix1, prefix2, ... instead of n1, n2,
// ...: two clusters in one test can then tell their nodes apart.
func WithNamePrefix(prefix string) Option { return func(o *options) { o.prefix = prefix } }

// WithConfig lets a test change each node's configuration before it starts
// (for instance MaxVoters or DeadAfter).
func WithConfig(f func(name string, cfg *node.Config)) Option {
	return func(o *options) { o.configure = f }
}

// WithLogger sends the nodes' logs to l; by default they go nowhere unless
// the test runs with -v, when they go to t.Log.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithFormTimeout bounds how long NewCluster waits for the cluster to form
// (default 60s).
func WithFormTimeout(d time.Duration) Option { return func(o *options) { o.formTime = d } }

// Cluster is a set of nodes started by NewCluster.
type Cluster struct {
	t    testing.TB
	base string
	opts options
	logs testWriter

	mu    sync.Mutex
	nodes []*Node
	// blocked holds the links cut by Partition, both ways, by address.
	blocked map[[2]string]bool
	conns   map[*trackedConn]struct{}
	pki     *PKI // nil without WithTLS
}

// Node is one node of a test cluster.
type Node struct {
	c    *Cluster
	name string
	dir  string
	cfg  node.Config
	// raftFS is the raft log's file system, for FailRaftLogSync.
	raftFS *raftLogFS

	mu     sync.Mutex
	n      *node.Node     // nil while stopped
	addr   string         // set by the first start, then kept
	client *client.Client // Client's, made on its first call
}

// NewCluster starts n nodes that form one cluster: they start at once with
// bootstrap-expect n, every node given the first as its seed, and it waits
// until every node sees the same leader and every node is a member.
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	// The data dirs' parent first: cleanups run last-in first-out, and the
	// nodes must stop before their dirs go.
	c := &Cluster{t: t, base: t.TempDir(), blocked: map[[2]string]bool{}, conns: map[*trackedConn]struct{}{}}
	c.logs.t = t
	c.opts.formTime = 60 * time.Second
	c.opts.prefix = "n"
	for _, o := range opts {
		o(&c.opts)
	}
	t.Cleanup(c.close)
	if c.opts.tls {
		pki, err := newPKI(filepath.Join(c.base, "pki"))
		if err != nil {
			t.Fatalf("nodetest: certificates: %v", err)
		}
		c.pki = pki
	}

	// Bind the first node's port before the others start, so they can all
	// name it as their seed.
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.formTime)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, n)
	first := c.newNode(c.opts.prefix+"1", n, nil)
	if err := first.start(ctx); err != nil {
		t.Fatalf("nodetest: start %s: %v", first.name, err)
	}
	for i := 2; i <= n; i++ {
		nd := c.newNode(c.opts.prefix+strconv.Itoa(i), n, []string{first.Addr()})
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i-1] = nd.start(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("nodetest: start n%d: %v", i+1, err)
		}
	}
	if err := c.WaitMembers(ctx, n); err != nil {
		t.Fatalf("nodetest: cluster did not form: %v", err)
	}
	return c
}

func (c *Cluster) newNode(name string, expect int, join []string) *Node {
	dir := filepath.Join(c.base, name)
	cfg := node.Config{
		DataDir:         dir,
		Listen:          "127.0.0.1:0",
		Name:            name,
		Join:            join,
		BootstrapExpect: expect,
		// Short enough for quick failovers, long enough that a leader
		// starved of CPU (two cores, the race detector, five nodes in one
		// process) is not deposed by mistake.
		HeartbeatTimeout:  time.Second,
		ElectionTimeout:   time.Second,
		FastGossip:        true,
		ReconcileInterval: 200 * time.Millisecond,
		DeadAfter:         30 * time.Second,
		Logger:            c.logger(name),
	}
	if c.pki != nil {
		if err := c.pki.configure(name, &cfg); err != nil {
			c.t.Fatalf("nodetest: certificates of %s: %v", name, err)
		}
	}
	if c.opts.configure != nil {
		c.opts.configure(name, &cfg)
	}
	nd := &Node{c: c, name: name, dir: dir, cfg: cfg, raftFS: &raftLogFS{FS: cmp.Or(cfg.RaftLogFS, raftlog.OS)}}
	nd.cfg.Dial = c.dialer(nd)
	nd.cfg.RaftLogFS = nd.raftFS
	c.mu.Lock()
	c.nodes = append(c.nodes, nd)
	c.mu.Unlock()
	return nd
}

func (c *Cluster) logger(name string) *slog.Logger {
	if c.opts.logger != nil {
		return c.opts.logger.With("test_node", name)
	}
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(&c.logs, &slog.HandlerOptions{Level: slog.LevelInfo})).With("test_node", name)
	}
	return slog.New(slog.DiscardHandler)
}

// testWriter sends log lines to t.Log until the cluster is closed: gossip
// may still log from a probe that was under way at shutdown, and t.Log
// after the test panics.
type testWriter struct {
	t    testing.TB
	mu   sync.RWMutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

func (nd *Node) start(ctx context.Context) error {
	nd.mu.Lock()
	cfg := nd.cfg
	nd.mu.Unlock()
	if addr := nd.Addr(); addr != "" {
		// A restart keeps its address.
		cfg.Listen = addr
	}
	n, err := node.Start(ctx, cfg)
	if err != nil {
		return err
	}
	nd.mu.Lock()
	nd.n = n
	nd.addr = n.Addr()
	nd.mu.Unlock()
	return nil
}

func (c *Cluster) close() {
	for _, nd := range c.Nodes() {
		nd.Kill()
	}
	c.logs.stop()
}

// Nodes returns the nodes, running or not, in the order they were added.
func (c *Cluster) Nodes() []*Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// Node returns the node with that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, nd := range c.Nodes() {
		if nd.name == name {
			return nd
		}
	}
	return nil
}

// Running returns the nodes that are running.
func (c *Cluster) Running() []*Node {
	var out []*Node
	for _, nd := range c.Nodes() {
		if nd.Running() {
			out = append(out, nd)
		}
	}
	return out
}

// Endpoints are the addresses of the running nodes.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, nd := range c.Running() {
		out = append(out, nd.Addr())
	}
	return out
}

// Client returns a client over every running node, closed at cleanup.
func (c *Cluster) Client() *client.Client {
	cl, err := client.New(c.Endpoints(), c.clientOptions()...)
	if err != nil {
		c.t.Fatalf("nodetest: client: %v", err)
	}
	c.t.Cleanup(cl.Close)
	return cl
}

// Leader waits until the running nodes agree on a leader and returns it.
func (c *Cluster) Leader(ctx context.Context) *Node {
	c.t.Helper()
	nd, err := c.WaitLeader(ctx)
	if err != nil {
		c.t.Fatalf("nodetest: %v", err)
	}
	return nd
}

// Other returns the first of the cluster's nodes, in the order they were
// made, that is not nd: a follower, given the leader.
func (c *Cluster) Other(nd *Node) *Node {
	for _, o := range c.Nodes() {
		if o != nd {
			return o
		}
	}
	c.t.Fatalf("nodetest: no node other than %s", nd.name)
	return nil
}

// WaitLeader waits until every running node names the same running leader.
func (c *Cluster) WaitLeader(ctx context.Context) (*Node, error) {
	var last string
	err := poll(ctx, func() bool {
		running := c.Running()
		if len(running) == 0 {
			last = "no node is running"
			return false
		}
		var leaderID string
		for _, nd := range running {
			id, _ := nd.Node().Leader()
			if id == "" || (leaderID != "" && id != leaderID) {
				last = fmt.Sprintf("%s sees leader %q", nd.name, id)
				return false
			}
			leaderID = id
		}
		return c.Node(leaderID) != nil && c.Node(leaderID).Running()
	})
	if err != nil {
		return nil, fmt.Errorf("no agreed leader: %w (last: %s)", err, last)
	}
	id, _ := c.Running()[0].Node().Leader()
	return c.Node(id), nil
}

// WaitMembers waits until there is a leader whose raft configuration holds
// exactly want members, and every running node's configuration holds as
// many.
//
// Every node's, not only the leader's: a follower learns who leads from
// the leader's first append, and its configuration from the entries that
// follow, so right after a cluster formed a follower can know the leader
// and still list no members.
func (c *Cluster) WaitMembers(ctx context.Context, want int) error {
	var last string
	err := poll(ctx, func() bool {
		leader, err := c.WaitLeader(ctx)
		if err != nil {
			last = err.Error()
			return false
		}
		ids := leader.Node().RaftMembers()
		if len(ids) != want {
			last = fmt.Sprintf("leader %s has members %v", leader.name, ids)
			return false
		}
		for _, nd := range c.Running() {
			if ids := nd.Node().RaftMembers(); len(ids) != want {
				last = fmt.Sprintf("%s has members %v", nd.name, ids)
				return false
			}
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("want %d members: %w (last: %s)", want, err, last)
	}
	return nil
}

// Add starts a new node that joins through the first running node.
func (c *Cluster) Add(ctx context.Context) *Node {
	c.t.Helper()
	seeds := c.Endpoints()
	nd := c.newNode(c.opts.prefix+strconv.Itoa(len(c.Nodes())+1), 0, seeds[:1])
	if err := nd.start(ctx); err != nil {
		c.t.Fatalf("nodetest: add %s: %v", nd.name, err)
	}
	return nd
}

// Name is the node's name, also its id.
func (nd *Node) Name() string { return nd.name }

// Addr is the node's address; empty before its first start.
func (nd *Node) Addr() string {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.addr
}

// URL is the node's base URL for HTTP clients: https:// with TLS on
// (WithTLS), else http://.
func (nd *Node) URL() string {
	if nd.c.pki != nil {
		return "https://" + nd.Addr()
	}
	return "http://" + nd.Addr()
}

// Cluster is the cluster the node belongs to.
func (nd *Node) Cluster() *Cluster { return nd.c }

// Dir is the node's data dir.
func (nd *Node) Dir() string { return nd.dir }

// Node returns the running node, or nil.
func (nd *Node) Node() *node.Node {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	return nd.n
}

// Running tells whether the node runs.
func (nd *Node) Running() bool { return nd.Node() != nil }

// Client returns a client of this node only: one per node, made on the
// first call and closed when the test ends, so calling it in a loop opens
// no more connections. It is safe for concurrent use, and works across
// restarts (the node keeps its address).
func (nd *Node) Client() *client.Client {
	addr := nd.Addr()
	nd.mu.Lock()
	defer nd.mu.Unlock()
	if nd.client != nil {
		return nd.client
	}
	cl, err := client.New([]string{addr}, nd.c.clientOptions()...)
	if err != nil {
		nd.c.t.Fatalf("nodetest: client: %v", err)
	}
	nd.c.t.Cleanup(cl.Close)
	nd.client = cl
	return cl
}

// Stop stops the node gracefully: it leaves the cluster first.
func (nd *Node) Stop(ctx context.Context) error {
	n := nd.take()
	if n == nil {
		return nil
	}
	lerr := n.Leave(ctx)
	cerr := n.Close(ctx)
	if lerr != nil {
		return lerr
	}
	return cerr
}

// Kill stops the node abruptly: no leave, its links drop at once, as if the
// process died (its data dir keeps what it had written).
func (nd *Node) Kill() {
	n := nd.take()
	if n == nil {
		return
	}
	nd.c.cutConns(nd.Addr(), "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n.Close(ctx)
}

func (nd *Node) take() *node.Node {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	n := nd.n
	nd.n = nil
	return n
}

// Restart starts a stopped or killed node again on its data dir and
// address.
func (nd *Node) Restart(ctx context.Context) error {
	if nd.Running() {
		return fmt.Errorf("nodetest: %s is running", nd.name)
	}
	return nd.start(ctx)
}

// Reconfigure changes the node's configuration for its next start (for
// instance its Join): stop it first, then Restart it.
func (nd *Node) Reconfigure(f func(cfg *node.Config)) {
	nd.mu.Lock()
	defer nd.mu.Unlock()
	f(&nd.cfg)
}

// RestartMoved starts a stopped or killed node again on its data dir but on
// a new port, as a machine that comes back with another address: it keeps
// its identity and its place in the cluster.
func (nd *Node) RestartMoved(ctx context.Context) error {
	if nd.Running() {
		return fmt.Errorf("nodetest: %s is running", nd.name)
	}
	nd.mu.Lock()
	nd.addr = ""
	nd.mu.Unlock()
	return nd.start(ctx)
}

// Partition cuts the links between the groups (node names): raft, gossip
// streams and packets, forwarding. Nodes not named form a group of their
// own. Heal undoes it.
func (c *Cluster) Partition(groups ...[]string) {
	group := map[string]int{}
	for i, g := range groups {
		for _, name := range g {
			group[name] = i + 1
		}
	}
	nodes := c.Nodes()
	c.mu.Lock()
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b && group[a.name] != group[b.name] {
				c.blocked[[2]string{a.Addr(), b.Addr()}] = true
			}
		}
	}
	c.mu.Unlock()
	for _, a := range nodes {
		if n := a.Node(); n != nil {
			to := a.Addr()
			n.SetPacketFilter(func(from net.Addr) bool { return !c.isBlocked(from.String(), to) })
		}
		for _, b := range nodes {
			if group[a.name] != group[b.name] {
				c.cutConns(a.Addr(), b.Addr())
			}
		}
	}
}

// Heal restores every link.
func (c *Cluster) Heal() {
	c.mu.Lock()
	clear(c.blocked)
	c.mu.Unlock()
	for _, nd := range c.Nodes() {
		if n := nd.Node(); n != nil {
			n.SetPacketFilter(nil)
		}
	}
}

func (c *Cluster) isBlocked(from, to string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.blocked[[2]string{from, to}]
}

// dialer returns the node's Dial: refused across a partition, and tracked
// so that Partition and Kill can cut the connections already open.
func (c *Cluster) dialer(nd *Node) func(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		from := nd.Addr()
		if c.isBlocked(from, address) {
			return nil, fmt.Errorf("nodetest: link %s -> %s is cut", nd.name, address)
		}
		conn, err := d.DialContext(ctx, network, address)
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: conn, from: from, to: address, c: c}
		c.mu.Lock()
		c.conns[tc] = struct{}{}
		c.mu.Unlock()
		return tc, nil
	}
}

// cutConns closes the tracked connections between a and b (b empty: all
// of a's, either way).
func (c *Cluster) cutConns(a, b string) {
	c.mu.Lock()
	var cut []*trackedConn
	for tc := range c.conns {
		if (tc.from == a && (b == "" || tc.to == b)) || (tc.to == a && (b == "" || tc.from == b)) {
			cut = append(cut, tc)
		}
	}
	c.mu.Unlock()
	for _, tc := range cut {
		tc.Close()
	}
}

type trackedConn struct {
	net.Conn
	from, to string
	c        *Cluster
	once     sync.Once
}

func (tc *trackedConn) Close() error {
	tc.once.Do(func() {
		tc.c.mu.Lock()
		delete(tc.c.conns, tc)
		tc.c.mu.Unlock()
	})
	return tc.Conn.Close()
}

// poll checks cond every 20ms until it holds or ctx ends.
func poll(ctx context.Context, cond func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
