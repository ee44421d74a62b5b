package node

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
)

// fakeRaft is a raftView.
type fakeRaft struct {
	state   bool
	servers []raft.Server
}

func (f fakeRaft) HasState() bool         { return f.state }
func (f fakeRaft) Servers() []raft.Server { return f.servers }

// logs keeps the messages of log records, by level.
type logs struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r)
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

// count is how many records at level carry msg.
func (l *logs) count(level slog.Level, msg string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.recs {
		if r.Level == level && r.Message == msg {
			n++
		}
	}
	return n
}

// testIdentity is a node's identity in a temp dir: cluster id clusterID
// ("" none), raft state or not, raft configuration servers.
func testIdentity(t *testing.T, nodeID, clusterID string, state bool, servers ...raft.Server) (*identity, *logs) {
	t.Helper()
	dir := t.TempDir()
	if clusterID != "" {
		if err := writeClusterID(dir, clusterID); err != nil {
			t.Fatal(err)
		}
	}
	l := &logs{}
	i, err := newIdentity(dir, nodeID, "127.0.0.1:1", slog.New(l))
	if err != nil {
		t.Fatal(err)
	}
	i.setRaft(fakeRaft{state: state, servers: servers})
	return i, l
}

var (
	idX = strings.Repeat("a", 32)
	idY = strings.Repeat("b", 32)
)

// TestAdmit goes through the rule by which nodes talk, and when a node
// takes another's cluster id.
func TestAdmit(t *testing.T) {
	member := raft.Server{ID: "m", Address: "10.0.0.2:7379"}
	for _, tc := range []struct {
		name      string
		local     string
		state     bool
		peer      peer
		adopt     bool
		ok        bool
		wantLocal string
	}{
		{"same cluster", idX, true, peer{clusterID: idX, nodeID: "p", hasState: true}, true, true, idX},
		{"other cluster", idX, true, peer{clusterID: idY, nodeID: "p", hasState: true}, true, false, idX},
		{"other cluster, neither has state", idX, false, peer{clusterID: idY, nodeID: "p"}, true, false, idX},
		{"fresh peer", idX, true, peer{nodeID: "p"}, true, true, idX},
		{"peer from before ids, not ours", idX, true, peer{nodeID: "p", addr: "10.0.0.9:7379", hasState: true}, true, false, idX},
		{"peer from before ids, ours", idX, true, peer{nodeID: "m", addr: "10.0.0.2:7379", hasState: true}, true, true, idX},
		{"ours by id, not by address", idX, true, peer{nodeID: "m", addr: "10.0.0.9:7379", hasState: true}, true, false, idX},
		{"fresh node adopts on raft", "", false, peer{clusterID: idX, nodeID: "p", hasState: true}, true, true, idX},
		{"fresh node does not adopt on gossip", "", false, peer{clusterID: idX, nodeID: "p", hasState: true}, false, true, ""},
		{"before ids, a stranger's id", "", true, peer{clusterID: idX, nodeID: "p", addr: "10.0.0.9:7379", hasState: true}, true, false, ""},
		{"before ids, a member's id", "", true, peer{clusterID: idX, nodeID: "m", addr: "10.0.0.2:7379", hasState: true}, true, true, idX},
		{"neither has an id, both state, stranger", "", true, peer{nodeID: "p", addr: "10.0.0.9:7379", hasState: true}, true, false, ""},
		{"neither has an id, both state, member", "", true, peer{nodeID: "m", addr: "10.0.0.2:7379", hasState: true}, true, true, ""},
		{"neither has an id, peer fresh", "", true, peer{nodeID: "p"}, true, true, ""},
		{"neither has an id, we are fresh", "", false, peer{nodeID: "p", hasState: true}, true, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			i, _ := testIdentity(t, "self", tc.local, tc.state, member)
			err := i.admit(tc.peer, tc.adopt)
			if (err == nil) != tc.ok {
				t.Fatalf("admit = %v, want ok %v", err, tc.ok)
			}
			var oc interface{ OtherCluster() bool }
			if err != nil && (!errors.As(err, &oc) || !oc.OtherCluster()) {
				t.Fatalf("refusal %v does not say it is of another cluster", err)
			}
			if got := i.ID(); got != tc.wantLocal {
				t.Fatalf("cluster id %q after, want %q", got, tc.wantLocal)
			}
			if stored, err := readClusterID(i.dir); err != nil || stored != tc.wantLocal {
				t.Fatalf("stored cluster id %q (%v), want %q", stored, err, tc.wantLocal)
			}
		})
	}
}

// serveHandshakes accepts on a loopback port and runs i's side of the
// handshake for path on each connection; accepted connections go to the
// returned channel.
func serveHandshakes(t *testing.T, i *identity, path byte) (string, <-chan net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan net.Conn, 16)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				var b [1]byte
				if _, err := c.Read(b[:]); err != nil || b[0] != path {
					c.Close()
					return
				}
				pc, err := i.accept(c, path)
				if err != nil {
					c.Close()
					return
				}
				out <- pc
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		close(out)
		for c := range out {
			c.Close()
		}
	})
	return ln.Addr().String(), out
}

// TestHandshakeAdopts: a fresh node opened a raft connection by a node of
// a cluster takes its id, on disk, before it answers; the dialer gets a
// connection that knows who answered.
func TestHandshakeAdopts(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leader, _ := testIdentity(t, "leader", idX, true)
	fresh, _ := testIdentity(t, "fresh", "", false)
	addr, accepted := serveHandshakes(t, fresh, MuxByteRaft)
	conn, err := leader.dialer(MuxByteRaft, nil)(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if id, err := readClusterID(fresh.dir); err != nil || id != idX {
		t.Fatalf("after the handshake the fresh node stores %q (%v), want %s", id, err, idX)
	}
	if pc, ok := conn.(*peerConn); !ok || pc.PeerID() != "fresh" {
		t.Fatalf("dialed connection %T %+v", conn, conn)
	}
	in := <-accepted
	if pc, ok := in.(*peerConn); !ok || pc.PeerID() != "leader" || pc.peer.clusterID != idX {
		t.Fatalf("accepted connection %T %+v", in, in)
	}
	// The connection is past the handshake: bytes go through untouched.
	if _, err := conn.Write([]byte("raft")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	in.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := in.Read(buf); err != nil || string(buf) != "raft" {
		t.Fatalf("read %q, %v", buf, err)
	}

	// Taken: another cluster's node is refused from now on.
	other, _ := testIdentity(t, "other", idY, true)
	if _, err := other.dialer(MuxByteRaft, nil)(ctx, "tcp", addr); err == nil {
		t.Fatal("a node that took cluster X's id accepted a raft connection from cluster Y")
	}
}

// TestHandshakeRefusesOtherCluster: nodes of two clusters refuse each
// other on every path; the dialer says once, clearly, that it belongs to
// another cluster, and the node dialed warns once, not on every attempt.
func TestHandshakeRefusesOtherCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, path := range []byte{MuxByteRaft, MuxByteGroupRaft, MuxByteGossip, MuxByteForward} {
		t.Run(pathName(path), func(t *testing.T) {
			a, alogs := testIdentity(t, "a", idX, true)
			b, blogs := testIdentity(t, "b", idY, true)
			addr, accepted := serveHandshakes(t, b, path)
			for range 3 {
				_, err := a.dialer(path, nil)(ctx, "tcp", addr)
				var oc interface{ OtherCluster() bool }
				if !errors.As(err, &oc) || !oc.OtherCluster() || !strings.Contains(err.Error(), idY) {
					t.Fatalf("dial to another cluster: %v", err)
				}
			}
			select {
			case c := <-accepted:
				t.Fatalf("the node of cluster Y handed over a connection from X: %v", c.RemoteAddr())
			default:
			}
			if n := alogs.count(slog.LevelError, strangerMsg); n != 1 {
				t.Errorf("the dialer logged %q %d times, want once", strangerMsg, n)
			}
			if n := blogs.count(slog.LevelWarn, refusedMsg); n != 1 {
				t.Errorf("the node dialed logged %q %d times, want once", refusedMsg, n)
			}
			if a.ID() != idX || b.ID() != idY {
				t.Errorf("cluster ids changed: %s, %s", a.ID(), b.ID())
			}
		})
	}
}

// TestHandshakeGarbage: what is not a handshake is refused, and a dialer
// whose peer does not answer one gives up at its context's deadline.
func TestHandshakeGarbage(t *testing.T) {
	i, _ := testIdentity(t, "n", idX, true)
	for name, in := range map[string][]byte{
		"too long":       {0xff, 0xff, 0x01},
		"not protobuf":   {3, 0xff, 0xff, 0xff},
		"cut short":      {10, 1, 2},
		"nothing at all": nil,
	} {
		a, b := net.Pipe()
		go func() {
			a.Write(in)
			a.Close()
		}()
		if _, err := i.accept(b, MuxByteRaft); err == nil {
			t.Errorf("%s: accepted", name)
		}
		b.Close()
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			// Silent until the dialer gives up and closes.
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := i.dialer(MuxByteRaft, nil)(ctx, "tcp", ln.Addr().String()); err == nil {
		t.Fatal("a silent peer passed the handshake")
	}
}

// TestHelloFrame: a hello survives its frame, and nothing past the frame
// is read.
func TestHelloFrame(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	want := &peerv1.PeerHello{ClusterId: idX, NodeId: "n1", Address: "10.0.0.1:7379", HasRaftState: true}
	go func() {
		writeHello(a, []byte{MuxByteRaft}, want)
		a.Write([]byte("next"))
	}()
	var first [1]byte
	if _, err := b.Read(first[:]); err != nil || first[0] != MuxByteRaft {
		t.Fatalf("first byte %x, %v", first, err)
	}
	got, err := readHello(b)
	if err != nil || got.GetClusterId() != idX || got.GetNodeId() != "n1" || got.GetAddress() != "10.0.0.1:7379" || !got.GetHasRaftState() {
		t.Fatalf("readHello = %v, %v", got, err)
	}
	rest := make([]byte, 4)
	if _, err := b.Read(rest); err != nil || string(rest) != "next" {
		t.Fatalf("after the frame: %q, %v", rest, err)
	}
}

// TestClusterIDFile: the id is stored durably and read back; a damaged
// file is an error, not a missing id.
func TestClusterIDFile(t *testing.T) {
	dir := t.TempDir()
	if id, err := readClusterID(dir); err != nil || id != "" {
		t.Fatalf("no file: %q, %v", id, err)
	}
	if err := writeClusterID(dir, idX); err != nil {
		t.Fatal(err)
	}
	if id, err := readClusterID(dir); err != nil || id != idX {
		t.Fatalf("read back %q, %v", id, err)
	}
	if _, err := os.Stat(filepath.Join(dir, clusterIDFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, clusterIDFile), []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readClusterID(dir); err == nil {
		t.Fatal("a damaged cluster-id file read as fine")
	}
	i, _ := testIdentity(t, "n", idX, true)
	if err := i.set(idY, "test"); err == nil || i.ID() != idX {
		t.Fatalf("set another id: %v, id now %s", err, i.ID())
	}
}

// TestHandshakeRefusesWrongNode: raft dials a server by its address, with
// its id attached (raftTarget). A node at that address with another id
// refuses, and does not take the dialer's cluster id; the dialer refuses an
// answer from another node too. Without it, after containers restarted
// with each other's addresses, votes and appends meant for one node were
// answered by another and counted as the first's: two leaders committed
// different entries (the container failure suite lost 13 acknowledged
// writes).
func TestHandshakeRefusesWrongNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	leader, _ := testIdentity(t, "leader", idX, true)
	b, _ := testIdentity(t, "b", idX, true)
	addr, accepted := serveHandshakes(t, b, MuxByteRaft)
	_, err := leader.dialer(MuxByteRaft, nil)(ctx, "tcp", string(raftTarget(addr, "c")))
	var wrong *wrongNodeError
	if !errors.As(err, &wrong) || !strings.Contains(err.Error(), "not c") {
		t.Fatalf("dial of node c at b's address: %v, want a wrong-node error", err)
	}
	select {
	case c := <-accepted:
		t.Fatalf("b handed over a connection meant for c: %v", c.RemoteAddr())
	default:
	}
	conn, err := leader.dialer(MuxByteRaft, nil)(ctx, "tcp", string(raftTarget(addr, "b")))
	if err != nil {
		t.Fatalf("dial of node b at its address: %v", err)
	}
	conn.Close()
	<-accepted

	// A fresh node at an address meant for another node takes no id.
	fresh, _ := testIdentity(t, "fresh", "", false)
	faddr, _ := serveHandshakes(t, fresh, MuxByteRaft)
	if _, err := leader.dialer(MuxByteRaft, nil)(ctx, "tcp", string(raftTarget(faddr, "c"))); !errors.As(err, &wrong) {
		t.Fatalf("dial of node c at a fresh node's address: %v, want a wrong-node error", err)
	}
	if id := fresh.ID(); id != "" {
		t.Fatalf("a fresh node dialed for another node took cluster id %q", id)
	}
}

func TestSplitTarget(t *testing.T) {
	for _, tc := range []struct{ in, addr, id string }{
		{"10.0.0.1:7379/n1", "10.0.0.1:7379", "n1"},
		{"[::1]:7379/kvd-0a1b", "[::1]:7379", "kvd-0a1b"},
		{"10.0.0.1:7379", "10.0.0.1:7379", ""},
	} {
		if addr, id := splitTarget(tc.in); addr != tc.addr || id != tc.id {
			t.Errorf("splitTarget(%q) = %q, %q; want %q, %q", tc.in, addr, id, tc.addr, tc.id)
		}
	}
	if got := raftTarget("10.0.0.1:7379", "n1"); got != "10.0.0.1:7379/n1" {
		t.Errorf("raftTarget = %q", got)
	}
}

// TestHandshakeRefusesMalformedClusterID: a fresh node does not adopt, on
// the raft path, a cluster id that is not one: it could not read it back
// when it restarts. FuzzHandshake found that it did.
func TestHandshakeRefusesMalformedClusterID(t *testing.T) {
	for _, bad := range []string{"0000000000000000000000A000000000", "x", strings.Repeat("a", 33), "../" + idX} {
		i, _ := testIdentity(t, "self", "", false)
		var in bytes.Buffer
		if err := writeHello(&in, nil, &peerv1.PeerHello{ClusterId: bad, NodeId: "p", Address: "10.0.0.9:7379"}); err != nil {
			t.Fatal(err)
		}
		a, b := net.Pipe()
		go func() {
			a.Write(in.Bytes())
			io.Copy(io.Discard, a)
		}()
		_, err := i.accept(b, MuxByteRaft)
		a.Close()
		b.Close()
		if err == nil {
			t.Errorf("%q: accepted", bad)
		}
		if id := i.ID(); id != "" {
			t.Errorf("%q: the node took %q as its cluster id", bad, id)
		}
		if id, err := readClusterID(i.dir); id != "" || err != nil {
			t.Errorf("%q: the node stored %q (%v)", bad, id, err)
		}
	}
}
