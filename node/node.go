// Package node runs one kvstore node: one TCP port split by the first byte
// of each connection between raft and the HTTP server (Connect, gRPC,
// gRPC-Web, health), raft over Badger, and the API on top. cmd/kvd is a thin
// shell around it; tests and programs that embed kvstore start nodes with
// Start.
package node

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"

	"google.golang.org/grpc"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	sockaddr "github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/api"
	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/membership"
	"github.com/kvstore/kvstore/node/tlsconf"
	"github.com/kvstore/kvstore/storage"
	"github.com/kvstore/kvstore/storage/badgerlog"
	"github.com/kvstore/kvstore/storage/diskspace"
	"github.com/kvstore/kvstore/storage/raftlog"
)

// Config describes a node. The zero value of every field but DataDir has a
// working default.
type Config struct {
	// DataDir holds the node's identity, raft log, key-value state and
	// snapshots.
	DataDir string
	// Listen is the address of the node's one port: TCP for the API and
	// raft and gossip streams, UDP on the same number for gossip packets.
	// Default 127.0.0.1:7379; port 0 picks a free port.
	Listen string
	// Advertise is the address other nodes and clients dial; default the
	// listen address, or with a wildcard listen address this host's
	// private address (see advertiseAddr).
	Advertise string
	// Name is the node id. Empty: the id stored in the data dir, or a new
	// random one on first start.
	Name string
	// Limits bound requests; zero fields take api.DefaultLimits.
	Limits api.Limits
	// RequestTimeout bounds requests that come without a deadline.
	RequestTimeout time.Duration
	// AuthTokenTTL is how long an authentication token works; 0 takes
	// api.DefaultAuthTokenTTL.
	AuthTokenTTL time.Duration
	// EtcdProgressNotify is how often an idle etcd watch created with
	// progress_notify hears its revision; 0 is etcd's 10 minutes.
	EtcdProgressNotify time.Duration
	// HeartbeatTimeout and ElectionTimeout tune raft; 0 takes
	// consensus.DefaultRaftTimeout (500ms).
	HeartbeatTimeout time.Duration
	ElectionTimeout  time.Duration
	// SnapshotThreshold is how many log entries since the last snapshot
	// start a new one; 0 takes DefaultSnapshotThreshold.
	SnapshotThreshold uint64
	// TrailingLogs is how many entries a snapshot leaves in the log for
	// followers that lag; 0 takes raft's default (10,240).
	TrailingLogs uint64
	// SnapshotInterval is how often raft checks whether to snapshot; 0
	// takes DefaultSnapshotInterval.
	SnapshotInterval time.Duration
	// Join lists seed addresses (host:port, or names that resolve to
	// several addresses) of nodes to gossip with. Empty: a lone node. Seeds
	// of another cluster than the one in DataDir refuse the node, and it
	// them (identity.go): it stays in its own cluster.
	Join []string
	// BootstrapExpect is how many servers start a new cluster together.
	// 0 or 1 with no Join: the node bootstraps alone. A node with raft
	// state never bootstraps again.
	BootstrapExpect int
	// MaxVoters caps the raft voters; the rest serve as non-voters.
	// Default 5.
	MaxVoters int
	// DeadAfter is how long a member stays dead before the leader removes
	// it. Default 30s.
	DeadAfter time.Duration
	// Retention is how much history the leader keeps before compacting
	// it automatically; the zero value keeps everything.
	Retention consensus.Retention
	// GossipKey encrypts gossip: 16, 24 or 32 bytes. Empty: plain. TLS
	// needs one: gossip packets travel over UDP, outside TLS.
	GossipKey []byte
	// TLS turns TLS on when it names a certificate (or AutoTLS): the port
	// serves TLS, peers must show a certificate from the peer CA, and
	// plaintext is refused (package tlsconf says who is trusted with
	// what).
	TLS tlsconf.Config
	// AllowPlaintextClients lets plaintext API connections in while TLS
	// is on; peers still need TLS.
	AllowPlaintextClients bool
	// FastGossip tunes failure detection for loopback and tests.
	FastGossip bool
	// ReconcileInterval is how often the leader reconciles raft with
	// gossip besides on every gossip event. Default 5s.
	ReconcileInterval time.Duration
	// Dial opens every outgoing connection (raft, gossip, forwarding);
	// tests wrap it to cut links. Nil: net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)

	// QuotaBytes is the space quota of the key-value state: past it the
	// node raises a NOSPACE alarm and the cluster refuses writes that add
	// data (consensus/quota.go). 0 takes DefaultQuotaBytes; a negative
	// value sets no quota.
	QuotaBytes int64
	// ConsistencyCheck is how often the leader compares the members'
	// states and raises a CORRUPT alarm on one that disagrees; 0 takes
	// DefaultConsistencyCheck, a negative value never checks.
	ConsistencyCheck time.Duration
	// DiskStat reads the data dir's filesystem for the disk guard; nil is
	// statfs(2). Tests fake a full disk with it.
	DiskStat diskspace.StatFunc
	// RaftLogFS is the file system of the raft log; nil is the operating
	// system's. Tests fail its writes and fsyncs with it.
	RaftLogFS raftlog.FS
	// BodyReadTimeout bounds how long one request message may take to
	// arrive once it started (the whole body of a unary request); waiting
	// for the next message of a stream is not bounded. 0 takes
	// api.DefaultBodyReadTimeout.
	BodyReadTimeout time.Duration

	// Pprof serves Go's profiles under /debug/pprof/ on the node's port.
	Pprof bool
	// NoMetrics turns the Prometheus metrics off (no /metrics, nothing
	// recorded): for measuring what they cost.
	NoMetrics bool

	// Version is reported by Status.
	Version string
	Logger  *slog.Logger

	// readHeaderTimeout and idleTimeout override DefaultReadHeaderTimeout
	// and DefaultIdleTimeout in tests.
	readHeaderTimeout, idleTimeout time.Duration
	// maxHTTP and maxPending override the Mux's caps in tests.
	maxHTTP, maxPending int
}

// Bounds on HTTP connections (HTTP/1.1 and h2c alike), as etcd's: a client
// that sends its request headers slowly, or keeps a connection open
// without using it, loses it.
const (
	// DefaultReadHeaderTimeout bounds the wait for a request's headers.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout bounds how long a connection waits for its next
	// request.
	DefaultIdleTimeout = 2 * time.Minute
	// MaxHeaderBytes bounds a request's headers (HTTP/1.1), and the header
	// list a client may send (HTTP/2 and gRPC, in SETTINGS).
	MaxHeaderBytes = 64 << 10
)

// DefaultListen is the address a node listens on when none is given.
const DefaultListen = "127.0.0.1:7379"

// DefaultSnapshotThreshold is how many log entries start a snapshot, and
// DefaultSnapshotInterval how often raft checks. A snapshot is a checkpoint
// of the store (a few fsyncs, no copy), so it can be taken often: the raft
// log stays short, which keeps a restart's replay quick. Raft keeps
// TrailingLogs entries after one for followers that lag.
const (
	DefaultSnapshotThreshold = 16384
	DefaultSnapshotInterval  = 5 * time.Second
)

// DefaultQuotaBytes is the default space quota of the key-value state:
// 8 GiB, etcd's recommended largest backend.
const DefaultQuotaBytes = 8 << 30

// DefaultConsistencyCheck is how often the leader compares the members'
// states: each check makes every member hash its whole state.
const DefaultConsistencyCheck = 10 * time.Minute

// Node is one running kvstore node.
type Node struct {
	id        string
	advertise string
	dataDir   string
	logger    *slog.Logger
	ident     *identity
	// metaMu serialises the updates of this node's gossip meta.
	metaMu sync.Mutex
	// keyMu serialises the gossip keyring's changes and their saving.
	keyMu sync.Mutex

	mux  *Mux
	udp  net.PacketConn
	http *http.Server
	grpc *grpc.Server
	// peerSrv serves the peer services, to other nodes alone.
	peerSrv *grpc.Server
	closing context.CancelFunc // ends watch streams
	replica *consensus.Replica
	gossip  *membership.Gossip
	trans   *membership.Transport
	raftNet *raft.NetworkTransport
	// groups carries the data groups' raft streams on the port;
	// dataGroups runs this node's replicas of data groups.
	groups     *groupStreams
	dataGroups *groupHost
	peers      *api.Peers
	cancel     context.CancelFunc // stops the background loops
	loops      sync.WaitGroup
	logs       *raftLog
	raftDir    string
	kv         *storage.KV
	metrics    *metrics // nil with Config.NoMetrics
	addrs      *raftAddrs
	disk       *diskspace.Guard
	done       chan struct{} // closed when the serve goroutines have returned
	boot       bootstrapState
	rec        *reconciler
}

// gcInterval is how often the stores reclaim value log space.
const gcInterval = 10 * time.Minute

// collectGarbage runs value log GC on the key-value state until ctx ends.
func (n *Node) collectGarbage(ctx context.Context) {
	t := time.NewTicker(gcInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n.kv.RunGC()
		}
	}
}

// openDisk starts the guard of the data dir's free space and sizes the
// stores' files to its filesystem. It refuses to go on when there is not
// room for what Badger writes as it opens (storage.OpenSpace: the tables
// of the memtables left by the last run): a write that finds no block in
// those memory-mapped files would kill the process, and again at every
// start. With room for that the node starts, serves reads, and refuses
// writes for as long as its disk is short.
func openDisk(cfg Config, logger *slog.Logger) (*diskspace.Guard, storage.Sizing, error) {
	disk, err := diskspace.New(diskspace.Config{Dir: cfg.DataDir, Stat: cfg.DiskStat, Logger: logger})
	if err != nil {
		return nil, storage.Sizing{}, fmt.Errorf("node: %w", err)
	}
	disk.Run()
	sz := storage.SizingFor(disk.Total(), int64(cfg.Limits.MaxValueBytes))
	// A raft log still in Badger (oldRaftDir) is opened once to migrate.
	need := storage.OpenSpace(filepath.Join(cfg.DataDir, oldRaftDir), badgerlog.MemTable) +
		storage.OpenSpace(filepath.Join(cfg.DataDir, "kv"), sz.StateMemTable) + diskspace.MiB
	// What the filesystem has left for real writes: the promises of
	// sparse files are for later writes, which the guard admits.
	if st := disk.Status(); int64(st.Avail) < int64(need) {
		disk.Close()
		return nil, storage.Sizing{}, fmt.Errorf("node: no space to open the stores: data dir %s has %d MiB free, and opening needs %d MiB; free some space on its filesystem and start again",
			cfg.DataDir, st.Avail/diskspace.MiB, (need+diskspace.MiB-1)/diskspace.MiB)
	}
	return disk, sz, nil
}

// quotaBytes is Config.QuotaBytes as consensus takes it (0: none).
func quotaBytes(q int64) int64 {
	switch {
	case q == 0:
		return DefaultQuotaBytes
	case q < 0:
		return 0
	}
	return q
}

// QuotaBytes is the space quota of the node's key-value state; 0 for
// none.
func (n *Node) QuotaBytes() int64 { return n.replica.QuotaBytes() }

// StateBytes is the logical size of the node's key-value state, as the
// quota measures it (storage.KV.LogicalBytes).
func (n *Node) StateBytes() int64 { return n.replica.StateBytes() }

func consistencyCheck(d time.Duration) time.Duration {
	switch {
	case d < 0:
		return 0
	case d == 0:
		return DefaultConsistencyCheck
	}
	return d
}

// CheckConsistency runs the leader's consistency check now: it compares
// the members' states at one revision and raises a CORRUPT alarm on any
// that disagrees with the majority. Only the leader checks.
func (n *Node) CheckConsistency(ctx context.Context) (consensus.ConsistencyReport, error) {
	return n.replica.CheckConsistency(ctx)
}

func (n *Node) goLoop(f func()) {
	n.loops.Add(1)
	go func() {
		defer n.loops.Done()
		f()
	}()
}

// leaderWait is how long a request waits out an election: six times the
// longer of raft's two timeouts, so 3 s (api.DefaultLeaderWait) with their
// defaults. A follower notices a lost leader after one to two heartbeat
// timeouts, and a split vote costs one to two election timeouts more.
func leaderWait(heartbeat, election time.Duration) time.Duration {
	return 6 * max(orDuration(heartbeat, consensus.DefaultRaftTimeout), orDuration(election, consensus.DefaultRaftTimeout))
}

func orInt(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

func orDuration(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// listen binds the node's one port: TCP, and UDP on the same number. With
// port 0 the TCP port is picked first; if its number is taken for UDP, it
// tries again.
func listen(ctx context.Context, addr string) (net.Listener, net.PacketConn, error) {
	var lc net.ListenConfig
	for try := 0; ; try++ {
		ln, err := lc.Listen(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("node: listen: %w", err)
		}
		host, _, _ := net.SplitHostPort(addr)
		port := ln.Addr().(*net.TCPAddr).Port
		udp, err := lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err == nil {
			return ln, udp, nil
		}
		ln.Close()
		if _, p, _ := net.SplitHostPort(addr); p != "0" || try >= 10 {
			return nil, nil, fmt.Errorf("node: listen udp: %w", err)
		}
	}
}

// otherSeeds drops this node's own addresses from the seeds.
func otherSeeds(seeds []string, self ...string) []string {
	var out []string
	for _, s := range seeds {
		if s != "" && !slices.Contains(self, s) {
			out = append(out, s)
		}
	}
	return out
}

// caughtUp asks node id how far it has applied, where gossip finds it
// (else at addr, its address in raft's configuration).
func (n *Node) caughtUp(ctx context.Context, id, addr string, index uint64) bool {
	applied, err := n.peers.Applied(ctx, id, n.addrs.addrOf(id, addr))
	return err == nil && applied+caughtUpSlack >= index
}

// syncMeta keeps this node's gossip meta in step with its raft state and
// cluster id, so that no other node counts it for a new bootstrap, and
// others know its cluster.
//
// It polls for raft state only until the node has it and announced it:
// raft state is never lost while the node runs, and a cluster id change
// signals ident.changed, so a node at rest is not woken for nothing.
func (n *Node) syncMeta(ctx context.Context) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	poll := t.C
	for {
		n.metaMu.Lock()
		meta := n.gossip.Local().Meta
		want := meta
		want.HasRaftState = meta.HasRaftState || n.replica.HasState()
		want.ClusterID = n.ident.ID()
		announced := true
		if want != meta {
			if err := n.gossip.SetMeta(ctx, want); err != nil {
				n.logger.Warn("gossip: announce raft state and cluster id", "error", err)
				announced = false
			}
		}
		n.metaMu.Unlock()
		switch {
		case announced && want.HasRaftState:
			t.Stop()
			poll = nil
		case poll == nil:
			t.Reset(200 * time.Millisecond)
			poll = t.C
		}
		select {
		case <-ctx.Done():
			return
		case <-poll:
		case <-n.ident.changed:
		}
	}
}

// deriveClusterID names a cluster from before cluster ids, on its leader:
// once the leader has applied its predecessors' entries, if none named the
// cluster, it proposes an id through the log.
func (n *Node) deriveClusterID(ctx context.Context) error {
	if err := n.replica.Raft().Barrier(10 * time.Second).Error(); err != nil {
		return fmt.Errorf("apply the log first: %w", err)
	}
	if n.ident.ID() != "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n.logger.Info("naming a cluster from before cluster ids")
	return n.replica.ProposeClusterID(ctx, newClusterID())
}

// loadID returns the node's id: the one in <data-dir>/node-id, created on
// first start from name or at random. A name that disagrees with the stored
// id is refused: the data belongs to another node.
func loadID(dir, name string) (string, error) {
	path := filepath.Join(dir, "node-id")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		stored := strings.TrimSpace(string(b))
		if name != "" && name != stored {
			return "", fmt.Errorf("node: --name %q but the data dir %s belongs to node %q", name, dir, stored)
		}
		return stored, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("node: read node id: %w", err)
	}
	id := name
	if id == "" {
		var r [6]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", fmt.Errorf("node: new node id: %w", err)
		}
		id = "kvd-" + hex.EncodeToString(r[:])
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("node: write node id: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("node: write node id: %w", err)
	}
	return id, nil
}

// createDir creates dir and its missing parents, and returns the topmost
// directory it created ("" when dir existed), so that a failed start can
// remove what it made.
func createDir(dir string) (string, error) {
	created := ""
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			break
		}
		created = p
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return created, nil
}

// advertiseAddr resolves the address other nodes dial. A wildcard listen
// address cannot be dialled: without --advertise the node advertises its
// own private address (the first RFC 6890 address of the interface with
// the default route, as Consul does), else its public one; loopback only
// when it has neither, with a warning.
func advertiseAddr(advertise string, bound *net.TCPAddr, logger *slog.Logger) (*net.TCPAddr, error) {
	if advertise != "" {
		a, err := net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			return nil, fmt.Errorf("node: advertise address %q: %w", advertise, err)
		}
		if a.IP == nil || a.IP.IsUnspecified() || a.Port == 0 {
			return nil, fmt.Errorf("node: advertise address %q must name a host and a port", advertise)
		}
		return a, nil
	}
	a := *bound
	if !a.IP.IsUnspecified() {
		return &a, nil
	}
	ip, err := interfaceIP()
	if err != nil {
		return nil, fmt.Errorf("node: listening on %s without --advertise: %w; set --advertise", bound, err)
	}
	if ip == nil {
		a.IP = net.IPv4(127, 0, 0, 1)
		logger.Warn("listening on a wildcard address without --advertise, and no interface has a private or public address; advertising loopback, which other hosts cannot reach", "advertise", a.String())
		return &a, nil
	}
	a.IP = ip
	return &a, nil
}

// logReady says once, at INFO, when the node first can serve requests.
func (n *Node) logReady(ctx context.Context) {
	if err := n.WaitReady(ctx); err != nil {
		return
	}
	leader, addr := n.replica.Leader()
	n.logger.Info("ready: serving requests", "leader", leader, "leader_addr", addr)
}

// interfaceIP is the address a node listening on a wildcard advertises:
// the private address go-sockaddr picks, else the public one; nil if none.
func interfaceIP() (net.IP, error) {
	for _, get := range []func() (string, error){sockaddr.GetPrivateIP, sockaddr.GetPublicIP} {
		s, err := get()
		if err != nil {
			return nil, fmt.Errorf("find this host's address: %w", err)
		}
		if s == "" {
			continue
		}
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("find this host's address: %q is not an IP address", s)
		}
		return ip, nil
	}
	return nil, nil
}

// ID is the node's id.
func (n *Node) ID() string { return n.id }

// Addr is the node's advertised address, host:port.
func (n *Node) Addr() string { return n.advertise }

// URL is the base URL of the node's API.
func (n *Node) URL() string { return "http://" + n.advertise }

// Ready returns why the node cannot serve requests yet, or nil.
func (n *Node) Ready() error { return nodeStore{Store: n.replica, boot: &n.boot}.Ready() }

// WaitReady waits until the node can serve requests.
func (n *Node) WaitReady(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	for {
		err := n.Ready()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not ready: %w (%w)", n.id, ctx.Err(), err)
		case <-t.C:
		}
	}
}

// Close stops the node at once, without leaving the cluster (the others
// see it fail): the HTTP server finishes the requests in flight (until ctx
// ends), raft and gossip shut down, and the stores are closed. Use Leave
// first for a graceful exit.
func (n *Node) Close(ctx context.Context) error {
	var errs []error
	// Refuse new connections first, so that clients fail over at once
	// (a refused dial is safe to retry anywhere), then let the requests in
	// flight finish. Raft's transport goes first, so that it takes the
	// closing of its listener for the shutdown it is.
	n.raftNet.Close()
	// The data groups' replicas close their transports before their
	// listeners go (groupStreams); none starts after this.
	if err := n.dataGroups.close(); err != nil {
		errs = append(errs, fmt.Errorf("data groups: %w", err))
	}
	n.groups.Close()
	if err := n.mux.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close listener: %w", err))
	}
	n.closing()
	grpcDone := make(chan struct{})
	go func() {
		n.grpc.GracefulStop()
		n.peerSrv.GracefulStop()
		close(grpcDone)
	}()
	if err := n.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
		n.http.Close()
	}
	select {
	case <-grpcDone:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("grpc shutdown: %w", ctx.Err()))
		n.grpc.Stop()
		n.peerSrv.Stop()
		<-grpcDone
	}
	n.cancel()
	n.loops.Wait()
	if err := n.gossip.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("gossip shutdown: %w", err))
	}
	if err := n.replica.Shutdown(); err != nil {
		errs = append(errs, err)
	}
	n.peers.Close()
	n.udp.Close()
	<-n.done
	n.disk.Close()
	if err := n.kv.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := n.logs.Close(); err != nil {
		errs = append(errs, err)
	}
	n.logger.Info("node stopped")
	return errors.Join(errs...)
}

// Leave exits the cluster gracefully, before Close: a leader hands its
// office to another voter first; the node marks itself leaving in gossip, so
// that the leader removes it from the raft configuration (it waits for
// that, until ctx ends); then it leaves gossip. The cluster keeps serving
// throughout. A lone node has nobody to leave: Leave does nothing.
func (n *Node) Leave(ctx context.Context) error {
	r := n.replica.Raft()
	f := r.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	others := 0
	for _, s := range f.Configuration().Servers {
		if string(s.ID) != n.id {
			others++
		}
	}
	// A node that hears from another leader is in a cluster even when
	// the configuration has not reached it yet (it just joined).
	if leader, _ := n.replica.Leader(); others == 0 && (leader == "" || leader == n.id) {
		return nil
	}
	if err := n.handOver(r); err != nil {
		return err
	}
	n.metaMu.Lock()
	meta := n.gossip.Local().Meta
	meta.Leaving = true
	err := n.gossip.SetMeta(ctx, meta)
	n.metaMu.Unlock()
	if err != nil {
		return fmt.Errorf("leave: announce: %w", err)
	}
	// Announced first, so that nodes leaving at once move their groups to
	// nodes that stay.
	n.dataGroups.drain(ctx)
	// Wait for the leader to remove us, but not for a leader that is gone:
	// when a whole cluster is stopped at once, the last nodes have no
	// quorum left to remove them.
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var leaderless time.Time
	// In a healthy cluster the leader removes us within a second of seeing
	// the leaving flag; when the whole cluster stops at once, leaders come
	// and go and none may get to it.
	giveUp := time.Now().Add(leaveRemoveWait)
wait:
	for n.inConfiguration(ctx) {
		if r.State() == raft.Leader {
			// Elected while waiting (the others lost their leader): a
			// leader never removes itself for leaving, so hand over again.
			if err := n.handOver(r); err != nil {
				n.logger.Warn("leave: elected while leaving and could not hand over; leaving gossip only", "error", err)
				break wait
			}
		}
		if id, _ := n.replica.Leader(); id == "" || id == n.id {
			if leaderless.IsZero() {
				leaderless = time.Now()
			} else if time.Since(leaderless) > leaveNoLeaderWait {
				n.logger.Warn("leave: no leader to remove this node; leaving gossip only")
				break wait
			}
		} else {
			leaderless = time.Time{}
		}
		if time.Now().After(giveUp) {
			n.logger.Warn("leave: not removed in time; leaving gossip only", "waited", leaveRemoveWait)
			break wait
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("leave: the leader did not remove this node: %w", ctx.Err())
		case <-t.C:
		}
	}
	if err := n.gossip.Leave(ctx); err != nil {
		return fmt.Errorf("leave: gossip: %w", err)
	}
	n.logger.Info("left the cluster")
	return nil
}

// handOver, on a leaving leader, transfers leadership, or when no voter
// takes it removes this node from the configuration itself.
func (n *Node) handOver(r *raft.Raft) error {
	if r.State() != raft.Leader {
		return nil
	}
	if err := r.LeadershipTransfer().Error(); err != nil {
		n.logger.Warn("leave: leadership transfer failed; removing ourselves as leader", "error", err)
		if err := r.RemoveServer(raft.ServerID(n.id), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("leave: remove self: %w", err)
		}
	}
	return nil
}

// leaveNoLeaderWait is how long Leave waits for a leader to appear, and
// leaveRemoveWait how long in all for the leader to remove this node.
const (
	leaveNoLeaderWait = 3 * time.Second
	leaveRemoveWait   = 5 * time.Second
)

// inConfiguration tells whether this node is still in the raft
// configuration, as the leader knows it: a removed follower may never hear
// of its own removal.
func (n *Node) inConfiguration(ctx context.Context) bool {
	if _, addr := n.replica.Leader(); addr != "" && addr != n.advertise {
		// Briefly: a leader that is itself shutting down may not answer.
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		ids, err := n.peers.Members(cctx, addr)
		cancel()
		if err == nil {
			return slices.Contains(ids, n.id)
		}
	}
	f := n.replica.Raft().GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == n.id {
			return true
		}
	}
	return false
}

// Leader returns the leader's id and address as this node knows them.
func (n *Node) Leader() (id, addr string) { return n.replica.Leader() }

// ClusterID is the id of the cluster this node belongs to; empty while it
// has none.
func (n *Node) ClusterID() string { return n.ident.ID() }

// GossipMembers returns the ids of the nodes gossip knows, alive or not,
// this one included, sorted.
func (n *Node) GossipMembers() []string {
	var ids []string
	for _, m := range n.gossip.Members() {
		ids = append(ids, m.ID)
	}
	return ids
}

// RaftMembers returns the ids in this node's raft configuration.
func (n *Node) RaftMembers() []string {
	f := n.replica.Raft().GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		ids = append(ids, string(s.ID))
	}
	slices.Sort(ids)
	return ids
}

// SetPacketFilter drops gossip packets for which keep returns false; nil
// keeps all. Tests use it to cut links.
func (n *Node) SetPacketFilter(keep func(from net.Addr) bool) { n.trans.SetPacketFilter(keep) }

// RaftStats returns raft's own counters (last_snapshot_index, ...), for
// tests and debugging.
func (n *Node) RaftStats() map[string]string { return n.replica.Raft().Stats() }

// withPprof adds Go's profiles under /debug/pprof/ in front of h.
func withPprof(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", h)
	return mux
}

// newRaftTransport returns raft's transport over stream, with pipelined
// replication off (MaxRPCsInFlight 1: one append in flight per follower).
// hashicorp/raft v1.8.0's pipeline can deadlock: when a follower answers an
// append with Success=false, the pipeline's decoder stops reading, and a
// send already chosen by the replication loop then waits forever on the
// pipeline's unbuffered channels. That replication goroutine never ends:
// the follower gets heartbeats but no entries until the leader restarts,
// and raft.Shutdown on the leader hangs. Without the pipeline raft
// replicates with one call at a time, which batches whatever came in
// meanwhile into the next append.
func newRaftTransport(stream raft.StreamLayer, addrs raft.ServerAddressProvider, logger *slog.Logger) *raft.NetworkTransport {
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:                stream,
		ServerAddressProvider: addrs,
		MaxPool:               3,
		MaxRPCsInFlight:       1,
		Timeout:               10 * time.Second,
		Logger:                consensus.NewHCLogger(logger, "raft-net", hclog.Warn),
	})
}

// idleConns tracks the HTTP connections net/http holds between requests,
// so that at the connection cap the oldest can make room (Mux.EvictIdle).
type idleConns struct {
	mu    sync.Mutex
	since map[net.Conn]time.Time
}

// track is http.Server.ConnState.
func (ic *idleConns) track(c net.Conn, s http.ConnState) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	if s == http.StateIdle {
		ic.since[c] = time.Now()
	} else {
		delete(ic.since, c)
	}
}

// evictOldest closes the connection idle the longest; net/http closes
// the rest of it, and the connection gives back its place under the cap
// (limitedConn). A client that sends a request on it just then sees it
// closed, as when IdleTimeout closes it, and retries.
func (ic *idleConns) evictOldest() bool {
	ic.mu.Lock()
	var oldest net.Conn
	var at time.Time
	for c, t := range ic.since {
		if oldest == nil || t.Before(at) {
			oldest, at = c, t
		}
	}
	delete(ic.since, oldest)
	ic.mu.Unlock()
	if oldest == nil {
		return false
	}
	oldest.Close()
	return true
}
