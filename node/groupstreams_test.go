package node

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/consensus"
	"github.com/kvstore/kvstore/node/tlsconf"
)

// groupNode is one node's port as far as the data groups' raft streams
// go: a Mux with the node's handshake, and its groupStreams, wired as
// buildTransport wires them.
type groupNode struct {
	*muxFixture
	id     string
	ident  *identity
	groups *groupStreams
	tls    *tlsconf.TLS
	addr   string
}

type groupNodeOpts struct {
	cluster string        // cluster id; "" idX
	tls     *tlsconf.TLS  // nil: plaintext
	maxConn int           // the path's cap; 0 maxGroupRaftConns
	timeout time.Duration // the Mux's HandshakeTimeout; 0 its default
}

func newGroupNode(t *testing.T, id string, o groupNodeOpts) *groupNode {
	t.Helper()
	ident, _ := testIdentity(t, id, cmp.Or(o.cluster, idX), true)
	n := &groupNode{id: id, ident: ident, tls: o.tls}
	n.muxFixture = newMuxFixture(t, func(m *Mux) {
		m.Handshake = acceptGroupHeader(ident.accept)
		m.HandshakeTimeout = o.timeout
		if o.tls != nil {
			m.TLS = o.tls.ServerConfig()
		}
		n.groups = newGroupStreams(m.Listener(MuxByteGroupRaft, cmp.Or(o.maxConn, maxGroupRaftConns)), ident.dialer(MuxByteGroupRaft, peerDial(o.tls, tlsconf.ALPNGroupRaft, nil)), slog.New(slog.DiscardHandler))
	})
	t.Cleanup(func() { n.groups.Close() })
	n.addr = n.m.Addr().String()
	return n
}

// dialGroup opens group id's stream from n to the node at addr, bounded by
// the test's deadline.
func (n *groupNode) dialGroup(t *testing.T, id uint64, addr string) net.Conn {
	t.Helper()
	c, err := n.groups.Dial(id)(n.ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial group %d at %s: %v", id, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if dl, ok := n.ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c
}

// rawGroupConn opens a group path's connection from n to addr, past the
// handshake and before any header.
func (n *groupNode) rawGroupConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := n.ident.dialer(MuxByteGroupRaft, peerDial(n.tls, tlsconf.ALPNGroupRaft, nil))(n.ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial the group path at %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	if dl, ok := n.ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	return c
}

// testTLS is a node's TLS with a node certificate for 127.0.0.1 from a CA
// of its own; every node given it trusts the others.
func testTLS(t *testing.T) *tlsconf.TLS {
	t.Helper()
	ca, err := tlsconf.NewCA("test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := ca.Issue(tlsconf.Request{Kind: tlsconf.Node, Name: "node", Hosts: []string{"127.0.0.1"}, ValidFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files := map[string][]byte{"cert.pem": cert, "key.pem": key, "ca.pem": ca.CertPEM()}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tl, err := tlsconf.New(tlsconf.Config{CertFile: filepath.Join(dir, "cert.pem"), KeyFile: filepath.Join(dir, "key.pem"), TrustedCAFile: filepath.Join(dir, "ca.pem")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tl
}

// withAndWithoutTLS runs f in a plaintext subtest and a TLS one.
func withAndWithoutTLS(t *testing.T, f func(t *testing.T, tl *tlsconf.TLS)) {
	t.Run("plaintext", func(t *testing.T) { f(t, nil) })
	t.Run("tls", func(t *testing.T) { f(t, testTLS(t)) })
}

// TestGroupStreamsRouteByGroup: a stream dialed for group 7 reaches group
// 7's listener, group 8's reaches group 8's, each knowing who dialed, and
// both carry bytes both ways untouched.
func TestGroupStreamsRouteByGroup(t *testing.T) {
	withAndWithoutTLS(t, func(t *testing.T, tl *tlsconf.TLS) {
		a := newGroupNode(t, "a", groupNodeOpts{tls: tl})
		b := newGroupNode(t, "b", groupNodeOpts{tls: tl})
		l7, l8 := b.groups.Listener(7), b.groups.Listener(8)

		// The dialer names the node it means, as raft's addresses do.
		c7 := a.dialGroup(t, 7, string(raftTarget(b.addr, "b")))
		writeStr(t, c7, "seven")
		in7 := b.accept(t, l7)
		if got := readN(t, in7, 5); got != "seven" {
			t.Fatalf("group 7's listener read %q", got)
		}
		if got := peerIDOf(in7); got != "a" {
			t.Fatalf("group 7's stream is from %q, want a", got)
		}
		writeStr(t, in7, "ack7")
		if got := readN(t, c7, 4); got != "ack7" {
			t.Fatalf("group 7's dialer read %q", got)
		}

		c8 := a.dialGroup(t, 8, b.addr)
		writeStr(t, c8, "eight")
		// Group 8's first stream is the one dialed for it: group 7's did
		// not go there.
		if got := readN(t, b.accept(t, l8), 5); got != "eight" {
			t.Fatalf("group 8's listener read %q", got)
		}
		if n := b.m.open(MuxByteGroupRaft); n != 2 {
			t.Fatalf("%d group streams open, want 2", n)
		}

		// Meant for another node at that address: refused.
		var wrong *wrongNodeError
		if _, err := a.groups.Dial(7)(a.ctx, "tcp", string(raftTarget(b.addr, "c"))); !errors.As(err, &wrong) {
			t.Fatalf("dial meant for node c at b's address: %v, want a wrong node error", err)
		}
	})
}

// TestGroupStreamsUnknownGroupClosed: a stream for a group with no
// listener is closed at once, as is one for a group whose listener was
// closed; closing a listener closes the streams it handed out and lets the
// group register again.
func TestGroupStreamsUnknownGroupClosed(t *testing.T) {
	a := newGroupNode(t, "a", groupNodeOpts{})
	b := newGroupNode(t, "b", groupNodeOpts{})
	l7 := b.groups.Listener(7)

	expectClosedByPeer(t, a.dialGroup(t, 9, b.addr))

	l9 := b.groups.Listener(9)
	c9 := a.dialGroup(t, 9, b.addr)
	in9 := b.accept(t, l9)
	writeStr(t, c9, "x")
	readN(t, in9, 1)
	l9.Close()
	expectClosedByPeer(t, c9)
	if _, err := l9.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a closed group listener: %v", err)
	}
	expectClosedByPeer(t, a.dialGroup(t, 9, b.addr))
	b.waitFor(t, "the closed streams give their places back", func() bool { return b.m.open(MuxByteGroupRaft) == 0 })

	// Registered again: served again. Group 7 was served throughout.
	l9 = b.groups.Listener(9)
	c9 = a.dialGroup(t, 9, b.addr)
	writeStr(t, c9, "y")
	if got := readN(t, b.accept(t, l9), 1); got != "y" {
		t.Fatalf("group 9's listener read %q", got)
	}
	writeStr(t, a.dialGroup(t, 7, b.addr), "z")
	if got := readN(t, b.accept(t, l7), 1); got != "z" {
		t.Fatalf("group 7's listener read %q", got)
	}

	// After Close, listeners come closed and the streams are closed.
	b.groups.Close()
	expectClosedByPeer(t, c9)
	if _, err := b.groups.Listener(10).Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept on a listener made after Close: %v", err)
	}
}

// TestGroupStreamsListenerMisuse: group 0 (the meta group's) and a group
// registered twice are programmer errors.
func TestGroupStreamsListenerMisuse(t *testing.T) {
	b := newGroupNode(t, "b", groupNodeOpts{})
	b.groups.Listener(3)
	for _, id := range []uint64{0, 3} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Listener(%d) did not panic", id)
				}
			}()
			b.groups.Listener(id)
		}()
	}
	if _, err := b.groups.Dial(0)(b.ctx, "tcp", b.addr); err == nil {
		t.Fatal("dialed group 0 on the data groups' path")
	}
}

// TestGroupStreamsBadHeader: a stream whose header is not a group's (group
// 0, a uvarint past 64 bits or 10 bytes, a header cut short, none) is
// closed, within the handshake's deadline for those that stall, and never
// reaches a listener; the node goes on serving.
func TestGroupStreamsBadHeader(t *testing.T) {
	withAndWithoutTLS(t, func(t *testing.T, tl *tlsconf.TLS) {
		a := newGroupNode(t, "a", groupNodeOpts{tls: tl})
		b := newGroupNode(t, "b", groupNodeOpts{tls: tl, timeout: 300 * time.Millisecond})
		l1 := b.groups.Listener(1)
		accepted := acceptAsync(l1)
		for _, tc := range []struct {
			name   string
			header []byte
		}{
			{"group 0", []byte{0}},
			{"eleven bytes", bytes.Repeat([]byte{0xff}, 11)},
			{"past 64 bits", append(bytes.Repeat([]byte{0xff}, 9), 0x7f)},
			{"cut short", []byte{0x81}},
			{"none", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := a.rawGroupConn(t, b.addr)
				if len(tc.header) > 0 {
					if _, err := c.Write(tc.header); err != nil {
						t.Fatal(err)
					}
				}
				expectClosedByPeer(t, c)
			})
		}
		b.waitFor(t, "no stream pending or open", func() bool { return b.m.pending() == 0 && b.m.open(MuxByteGroupRaft) == 0 })
		select {
		case r := <-accepted:
			t.Fatalf("a bad header reached group 1's listener: %v %v", r.c, r.err)
		default:
		}
		c := a.dialGroup(t, 1, b.addr)
		writeStr(t, c, "ok")
		select {
		case r := <-accepted:
			if r.err != nil {
				t.Fatal(r.err)
			}
			defer r.c.Close()
			if got := readN(t, r.c, 2); got != "ok" {
				t.Fatalf("group 1's listener read %q", got)
			}
		case <-b.ctx.Done():
			t.Fatal("a good stream after bad ones was not accepted")
		}
	})
}

// TestGroupStreamsCap: past the node's cap on group streams, new ones are
// closed at once; a closed one gives its place back.
func TestGroupStreamsCap(t *testing.T) {
	a := newGroupNode(t, "a", groupNodeOpts{})
	b := newGroupNode(t, "b", groupNodeOpts{maxConn: 1})
	l := b.groups.Listener(5)
	first := a.dialGroup(t, 5, b.addr)
	in := b.accept(t, l)
	expectClosedByPeer(t, a.dialGroup(t, 5, b.addr))
	writeStr(t, first, "x")
	readN(t, in, 1)
	in.Close()
	b.waitFor(t, "the place given back", func() bool { return b.m.open(MuxByteGroupRaft) == 0 })
	writeStr(t, a.dialGroup(t, 5, b.addr), "y")
	if got := readN(t, b.accept(t, l), 1); got != "y" {
		t.Fatalf("read %q", got)
	}
}

// TestGroupStreamsAdmission: the group path admits by the raft path's rule:
// a node of another cluster is refused, and a node with no cluster id yet
// takes the dialer's.
func TestGroupStreamsAdmission(t *testing.T) {
	a := newGroupNode(t, "a", groupNodeOpts{})
	other := newGroupNode(t, "o", groupNodeOpts{cluster: idY})
	other.groups.Listener(1)
	var oc *otherClusterError
	if _, err := a.groups.Dial(1)(a.ctx, "tcp", other.addr); !errors.As(err, &oc) {
		t.Fatalf("dial a node of another cluster: %v, want refused", err)
	}

	fresh, _ := testIdentity(t, "fresh", "", false)
	addr, accepted := serveHandshakes(t, fresh, MuxByteGroupRaft)
	c, err := a.ident.dialer(MuxByteGroupRaft, nil)(a.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	(<-accepted).Close()
	if id, err := readClusterID(fresh.dir); err != nil || id != idX {
		t.Fatalf("a fresh node dialed on the group path stores %q (%v), want %s", id, err, idX)
	}
}

// TestGroupStreamsTLSPathsDoNotCross: with TLS, the group path's byte
// needs the group path's protocol and the meta raft path's byte the meta
// raft path's.
func TestGroupStreamsTLSPathsDoNotCross(t *testing.T) {
	tl := testTLS(t)
	a := newGroupNode(t, "a", groupNodeOpts{tls: tl})
	var raftL net.Listener
	b := &groupNode{id: "b", tls: tl}
	b.ident, _ = testIdentity(t, "b", idX, true)
	b.muxFixture = newMuxFixture(t, func(m *Mux) {
		m.Handshake = acceptGroupHeader(b.ident.accept)
		m.TLS = tl.ServerConfig()
		raftL = m.Listener(MuxByteRaft, maxRaftConns)
		b.groups = newGroupStreams(m.Listener(MuxByteGroupRaft, maxGroupRaftConns), nil, nil)
	})
	t.Cleanup(func() { b.groups.Close() })
	b.groups.Listener(1)
	addr := b.m.Addr().String()
	for _, tc := range []struct {
		path byte
		alpn string
	}{{MuxByteGroupRaft, tlsconf.ALPNRaft}, {MuxByteRaft, tlsconf.ALPNGroupRaft}} {
		if c, err := a.ident.dialer(tc.path, peerDial(tl, tc.alpn, nil))(a.ctx, "tcp", addr); err == nil {
			c.Close()
			t.Fatalf("path %s over protocol %s: admitted", pathName(tc.path), tc.alpn)
		}
	}
	// The meta path still works beside it.
	c, err := a.ident.dialer(MuxByteRaft, peerDial(tl, tlsconf.ALPNRaft, nil))(a.ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	writeStr(t, c, "m")
	if got := readN(t, b.accept(t, raftL), 1); got != "m" {
		t.Fatalf("meta raft listener read %q", got)
	}
}

// logFSM keeps the entries it applied.
type logFSM struct {
	mu      sync.Mutex
	entries []string
}

func (f *logFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries = append(f.entries, string(l.Data))
	return nil
}

func (f *logFSM) applied() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries)
}

func (f *logFSM) Snapshot() (raft.FSMSnapshot, error) { return nopSnapshot{}, nil }
func (f *logFSM) Restore(rc io.ReadCloser) error      { return rc.Close() }

type nopSnapshot struct{}

func (nopSnapshot) Persist(sink raft.SnapshotSink) error { return sink.Close() }
func (nopSnapshot) Release()                             {}

// testRaftAddrs resolves servers to their address with the id attached, as
// raftAddrs does, and this node's to its address alone.
type testRaftAddrs struct {
	self  raft.ServerID
	addrs map[raft.ServerID]string
}

func (a testRaftAddrs) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	addr, ok := a.addrs[id]
	switch {
	case !ok:
		return "", fmt.Errorf("no address for %s", id)
	case id == a.self:
		return raft.ServerAddress(addr), nil
	}
	return raftTarget(addr, string(id)), nil
}

// TestGroupRaftTwoGroups runs two raft groups between three nodes, each
// group's transport on its own group streams of the nodes' ports: both
// elect a leader and commit an entry on every replica, and neither sees
// the other's.
func TestGroupRaftTwoGroups(t *testing.T) {
	ids := []string{"n1", "n2", "n3"}
	nodes := make([]*groupNode, len(ids))
	addrs := map[raft.ServerID]string{}
	var servers []raft.Server
	for i, id := range ids {
		nodes[i] = newGroupNode(t, id, groupNodeOpts{})
		addrs[raft.ServerID(id)] = nodes[i].addr
		servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(nodes[i].addr)})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	groups := []uint64{7, 8}
	rafts := map[uint64][]*raft.Raft{}
	fsms := map[uint64][]*logFSM{}
	for _, gid := range groups {
		for _, n := range nodes {
			conf := raft.DefaultConfig()
			conf.LocalID = raft.ServerID(n.id)
			conf.HeartbeatTimeout = 300 * time.Millisecond
			conf.ElectionTimeout = 300 * time.Millisecond
			conf.LeaderLeaseTimeout = 150 * time.Millisecond
			conf.CommitTimeout = 20 * time.Millisecond
			conf.Logger = hclog.NewNullLogger()
			layer := consensus.NewStreamLayer(n.groups.Listener(gid), n.m.Addr(), n.groups.Dial(gid))
			trans := newRaftTransport(layer, testRaftAddrs{self: conf.LocalID, addrs: addrs}, slog.New(slog.DiscardHandler))
			fsm := new(logFSM)
			r, err := raft.NewRaft(conf, fsm, raft.NewInmemStore(), raft.NewInmemStore(), raft.NewInmemSnapshotStore(), trans)
			if err != nil {
				t.Fatalf("group %d on %s: %v", gid, n.id, err)
			}
			// Cleanups run newest first: raft, then its transport and
			// pooled streams, before the node's group streams and Mux.
			t.Cleanup(func() {
				trans.CloseStreams()
				trans.Close()
			})
			t.Cleanup(func() {
				if err := r.Shutdown().Error(); err != nil {
					t.Errorf("shut group %d on %s down: %v", gid, n.id, err)
				}
			})
			if err := r.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
				t.Fatalf("bootstrap group %d on %s: %v", gid, n.id, err)
			}
			rafts[gid] = append(rafts[gid], r)
			fsms[gid] = append(fsms[gid], fsm)
		}
	}

	leaderOf := func(gid uint64) *raft.Raft {
		for ctx.Err() == nil {
			for _, r := range rafts[gid] {
				if r.State() == raft.Leader {
					return r
				}
			}
			time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
		}
		t.Fatalf("group %d elected no leader: %v", gid, ctx.Err())
		return nil
	}
	for _, gid := range groups {
		entry := fmt.Sprintf("entry of group %d", gid)
		if err := leaderOf(gid).Apply([]byte(entry), 10*time.Second).Error(); err != nil {
			t.Fatalf("group %d: apply: %v", gid, err)
		}
	}
	for _, gid := range groups {
		want := []string{fmt.Sprintf("entry of group %d", gid)}
		for i, f := range fsms[gid] {
			for !slices.Equal(f.applied(), want) {
				if ctx.Err() != nil {
					t.Fatalf("group %d on %s applied %q, want %q", gid, ids[i], f.applied(), want)
				}
				time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
			}
		}
	}
}

// TestGroupStreamsOnStartedNode: a started node serves the group path on
// its port (here to itself), and Close closes its groups' listeners.
func TestGroupStreamsOnStartedNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := startNode(t, ctx, t.TempDir())
	closed := false
	defer func() {
		if !closed {
			n.Close(context.Background())
		}
	}()
	dl, _ := ctx.Deadline()
	l := n.groups.Listener(4)
	c, err := n.groups.Dial(4)(ctx, "tcp", string(raftTarget(n.advertise, n.id)))
	if err != nil {
		t.Fatalf("dial group 4: %v", err)
	}
	defer c.Close()
	c.SetDeadline(dl)
	writeStr(t, c, "g4")
	var in net.Conn
	select {
	case r := <-acceptAsync(l):
		if r.err != nil {
			t.Fatal(r.err)
		}
		in = r.c
	case <-ctx.Done():
		t.Fatal("group 4's stream not accepted")
	}
	defer in.Close()
	in.SetDeadline(dl)
	if got := readN(t, in, 2); got != "g4" {
		t.Fatalf("read %q", got)
	}
	closed = true
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after the node closed: %v", err)
	}
	expectClosedByPeer(t, c)
}

// FuzzGroupHeader: any bytes either make a group header (a uvarint of at
// most 10 bytes naming a group other than 0, of which nothing past it is
// read) or an error, never a panic.
func FuzzGroupHeader(f *testing.F) {
	f.Add([]byte{7})
	f.Add([]byte{0})
	f.Add(binary.AppendUvarint(nil, math.MaxUint64))
	f.Add(bytes.Repeat([]byte{0xff}, 11))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		id, err := readGroupHeader(r)
		want, n := binary.Uvarint(in)
		switch {
		case n <= 0 || want == 0:
			if err == nil {
				t.Fatalf("%x: read group %d, want an error", in, id)
			}
		case err != nil || id != want:
			t.Fatalf("%x: read group %d, %v; want %d", in, id, err, want)
		case r.Len() != len(in)-n:
			t.Fatalf("%x: read %d bytes, the header is %d", in, len(in)-r.Len(), n)
		}
	})
}
