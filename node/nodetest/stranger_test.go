package nodetest_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
	"github.com/kvstore/kvstore/storage/raftlog"
)

const (
	// strangerTerm and strangerLog make a stranger's raft state win any
	// election it takes part in: a term far above a young cluster's, and a
	// longer log.
	strangerTerm = 1000
	strangerLog  = 20000
)

// strangerMsg is what a node logs, once, when the nodes it contacts belong
// to another cluster.
const strangerMsg = "this node belongs to another cluster than the nodes it contacts; not joining them"

// recorder is a slog handler that keeps the messages logged, and passes
// the records on to next.
type recorder struct {
	next slog.Handler
	mu   *sync.Mutex
	msgs *[]string
}

func newRecorder(next slog.Handler) recorder {
	return recorder{next: next, mu: new(sync.Mutex), msgs: new([]string)}
}

func (r recorder) Enabled(ctx context.Context, l slog.Level) bool { return true }

func (r recorder) Handle(ctx context.Context, rec slog.Record) error {
	r.mu.Lock()
	*r.msgs = append(*r.msgs, rec.Message)
	r.mu.Unlock()
	if r.next.Enabled(ctx, rec.Level) {
		return r.next.Handle(ctx, rec)
	}
	return nil
}

func (r recorder) WithAttrs(as []slog.Attr) slog.Handler {
	r.next = r.next.WithAttrs(as)
	return r
}

func (r recorder) WithGroup(name string) slog.Handler {
	r.next = r.next.WithGroup(name)
	return r
}

// count is how many times msg was logged.
func (r recorder) count(msg string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range *r.msgs {
		if m == msg {
			n++
		}
	}
	return n
}

// makeStranger writes the data dir of a node that was never in the
// cluster: node id name, a raft log of strangerLog entries in term
// strangerTerm whose configuration names the stranger and every node of the
// cluster at its address. With ownClusterID it also holds a cluster id of
// its own; without, it is a data dir from before cluster ids.
func makeStranger(t *testing.T, dir, name, addr string, cluster []*nodetest.Node, ownClusterID bool) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "node-id"), []byte(name+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ownClusterID {
		if err := os.WriteFile(filepath.Join(dir, "cluster-id"), []byte(randomHex(16)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := raftlog.Open(filepath.Join(dir, "raftlog"), raftlog.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	conf := raft.Configuration{Servers: []raft.Server{{ID: raft.ServerID(name), Address: raft.ServerAddress(addr), Suffrage: raft.Voter}}}
	for _, nd := range cluster {
		conf.Servers = append(conf.Servers, raft.Server{ID: raft.ServerID(nd.Name()), Address: raft.ServerAddress(nd.Addr()), Suffrage: raft.Voter})
	}
	logs := []*raft.Log{{Index: 1, Term: strangerTerm, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(conf)}}
	for i := uint64(2); i <= strangerLog; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: strangerTerm, Type: raft.LogNoop})
		if len(logs) == 1000 || i == strangerLog {
			if err := rs.StoreLogs(logs); err != nil {
				t.Fatal(err)
			}
			logs = logs[:0]
		}
	}
	if err := rs.SetUint64([]byte("CurrentTerm"), strangerTerm); err != nil {
		t.Fatal(err)
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// freeAddr returns a loopback address whose port was free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestStrangerWithHigherTerm starts, beside a cluster under write load, a
// node whose raft state comes from elsewhere: a term far above the
// cluster's, a longer log, and a configuration naming the cluster's nodes
// at their addresses, with the cluster's nodes as its seeds. It must never
// take part: the history stays linearizable and nothing acknowledged is
// lost, the cluster's term never reaches the stranger's, the stranger is
// never a member, and it says once what is wrong.
func TestStrangerWithHigherTerm(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ownID bool
	}{{"from before cluster ids", false}, {"of another cluster", true}} {
		t.Run(tc.name, func(t *testing.T) { testStranger(t, tc.ownID) })
	}
}

func testStranger(t *testing.T, ownID bool) {
	if testing.Short() {
		t.Skip("runs a cluster under load for several seconds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := nodetest.NewCluster(t, 3, nodetest.WithLogger(linLogger(t)))
	nodes := c.Nodes()
	dir := filepath.Join(t.TempDir(), "s1")
	addr := freeAddr(t)
	makeStranger(t, dir, "s1", addr, nodes, ownID)
	logs := newRecorder(linLogger(t).Handler())

	var stranger *node.Node
	linRun(t, ctx, c, func(rec *linRecorder, stop <-chan struct{}) {
		select {
		case <-time.After(linFirstFault):
		case <-stop:
			return
		}
		var err error
		stranger, err = node.Start(ctx, node.Config{
			DataDir:           dir,
			Listen:            addr,
			Join:              c.Endpoints(),
			HeartbeatTimeout:  time.Second,
			ElectionTimeout:   time.Second,
			FastGossip:        true,
			ReconcileInterval: 200 * time.Millisecond,
			Logger:            slog.New(logs).With("test_node", "s1"),
		})
		if err != nil {
			t.Errorf("start the stranger: %v", err)
			return
		}
		rec.fault("stranger s1 starts", rec.now())
		t.Cleanup(func() {
			cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer ccancel()
			stranger.Close(cctx)
		})
		<-stop
	})
	if stranger == nil {
		t.Fatal("the stranger never started")
	}
	for _, nd := range nodes {
		n := nd.Node()
		if term, _ := strconv.ParseUint(n.RaftStats()["term"], 10, 64); term >= strangerTerm {
			t.Errorf("%s is in term %d: the stranger's votes reached it", nd.Name(), term)
		}
		if ids := n.RaftMembers(); !slices.Equal(ids, []string{"n1", "n2", "n3"}) {
			t.Errorf("%s has members %v", nd.Name(), ids)
		}
	}
	// It did contact the cluster (with raft's pre-vote, its term does not
	// change while it cannot win), and says so once.
	if n := logs.count(strangerMsg); n != 1 {
		t.Errorf("the stranger logged %q %d times, want once", strangerMsg, n)
	}
	if id, _ := stranger.Leader(); id == "s1" {
		t.Errorf("the stranger leads its own configuration")
	}
}
