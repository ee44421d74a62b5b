package node

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/proto/kvstore/v1/kvstorev1connect"
)

// testConfig is a node on a free loopback port with fast raft timing.
func testConfig(dir string) Config {
	return Config{
		DataDir:          dir,
		Listen:           "127.0.0.1:0",
		HeartbeatTimeout: 100 * time.Millisecond,
		ElectionTimeout:  100 * time.Millisecond,
	}
}

// startNode starts a node with testConfig(dir) and waits until it serves.
func startNode(tb testing.TB, ctx context.Context, dir string) *Node {
	return startConfig(tb, ctx, testConfig(dir))
}

func startConfig(tb testing.TB, ctx context.Context, cfg Config) *Node {
	tb.Helper()
	n, err := Start(ctx, cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := n.WaitReady(ctx); err != nil {
		n.Close(ctx)
		tb.Fatal(err)
	}
	return n
}

func kvClient(n *Node) kvstorev1connect.KVServiceClient {
	return kvstorev1connect.NewKVServiceClient(http.DefaultClient, n.URL())
}

// TestReopenKeepsData writes, stops the node gracefully, starts a new one on
// the same data dir and reads everything back, with the same identity.
func TestReopenKeepsData(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()

	n := startNode(t, ctx, dir)
	id := n.ID()
	c := kvClient(n)
	var last int64
	for i := range 100 {
		resp, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))}))
		if err != nil {
			t.Fatal(err)
		}
		last = resp.Msg.GetHeader().GetRevision()
	}
	if _, err := c.Delete(ctx, connect.NewRequest(&kvstorev1.DeleteRequest{Key: []byte("k7")})); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}

	n2 := startNode(t, ctx, dir)
	defer n2.Close(context.Background())
	if n2.ID() != id {
		t.Fatalf("identity changed: %s, then %s", id, n2.ID())
	}
	c2 := kvClient(n2)
	resp, err := c2.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("k"), Prefix: true, CountOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.GetCount() != 99 {
		t.Fatalf("count after reopen = %d, want 99", resp.Msg.GetCount())
	}
	if rev := resp.Msg.GetHeader().GetRevision(); rev <= last {
		t.Fatalf("revision went back: %d after %d", rev, last)
	}
	got, err := c2.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k42")}))
	if err != nil || string(got.Msg.GetKv().GetValue()) != "42" {
		t.Fatalf("k42 after reopen: %v, %v", got, err)
	}
	// The past is still readable: k7 before its deletion.
	old, err := c2.Get(ctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k7"), Revision: last}))
	if err != nil || string(old.Msg.GetKv().GetValue()) != "7" {
		t.Fatalf("k7 at revision %d: %v, %v", last, old, err)
	}
}

// TestNameMismatchRefused: a data dir belongs to one node id.
func TestNameMismatchRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	n, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(ctx, Config{DataDir: dir, Listen: "127.0.0.1:0", Name: "b"}); err == nil {
		t.Fatal("a node started on another node's data dir")
	}
}

// TestSnapshotAndRestart makes raft snapshot and truncate its log, then
// restarts: the store must come back whole without replaying the dropped
// log.
func TestSnapshotAndRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	n := startNode(t, ctx, dir)
	c := kvClient(n)
	for i := range 300 {
		if _, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("s" + strconv.Itoa(i)), Value: []byte("x")})); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.replica.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	n2 := startNode(t, ctx, dir)
	defer n2.Close(context.Background())
	resp, err := kvClient(n2).Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("s"), Prefix: true, CountOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.GetCount() != 300 {
		t.Fatalf("count after snapshot and restart = %d, want 300", resp.Msg.GetCount())
	}
}

// TestRebuildAfterReboot: a store that was open when the machine went down
// may have lost writes above its last checkpoint in any order, so the node
// rolls it back to the checkpoint and replays the raft log after it.
func TestRebuildAfterReboot(t *testing.T) {
	if _, err := os.Stat("/proc/sys/kernel/random/boot_id"); err != nil {
		t.Skip("no boot id on this system: reboots are not detected")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	var logs syncBuffer
	cfg := testConfig(dir)
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n := startConfig(t, ctx, cfg)
	c := kvClient(n)
	put := func(i int) int64 {
		resp, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("r" + strconv.Itoa(i)), Value: []byte(strconv.Itoa(i))}))
		if err != nil {
			t.Fatal(err)
		}
		return resp.Msg.GetHeader().GetRevision()
	}
	for i := range 200 {
		put(i)
	}
	if err := n.replica.Raft().Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	checkpoint, err := os.ReadFile(filepath.Join(dir, "kv", "CHECKPOINT"))
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := 200; i < 250; i++ { // only in the log
		last = put(i)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// What a store left open by an earlier boot looks like, its last
	// checkpoint the snapshot's: what it holds above may be torn.
	if err := os.WriteFile(filepath.Join(dir, "kv", "UNCLEAN"), []byte("an-earlier-boot"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kv", "CHECKPOINT"), checkpoint, 0o644); err != nil {
		t.Fatal(err)
	}

	n2 := startConfig(t, ctx, cfg)
	defer n2.Close(context.Background())
	if !strings.Contains(logs.String(), "rolling it back to its last checkpoint") {
		t.Fatalf("the store was not rolled back; log:\n%s", logs.String())
	}
	c2 := kvClient(n2)
	resp, err := c2.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("r"), Prefix: true}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Msg.GetKvs()) != 250 {
		t.Fatalf("%d keys after the rebuild, want 250", len(resp.Msg.GetKvs()))
	}
	for _, kv := range resp.Msg.GetKvs() {
		if string(kv.GetKey()) != "r"+string(kv.GetValue()) {
			t.Fatalf("key %q holds %q", kv.GetKey(), kv.GetValue())
		}
	}
	if rev := resp.Msg.GetHeader().GetRevision(); rev < last {
		t.Fatalf("revision went back: %d after %d", rev, last)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestConcurrentWritesAllLand checks concurrent puts each get their own
// revision and all are readable.
func TestConcurrentWritesAllLand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(t, ctx, t.TempDir())
	defer n.Close(context.Background())
	c := kvClient(n)
	var wg sync.WaitGroup
	revs := make(chan int64, 400)
	errs := make(chan error, 400)
	for w := range 8 {
		wg.Go(func() {
			for i := range 50 {
				resp, err := c.Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("c" + strconv.Itoa(w) + "-" + strconv.Itoa(i)), Value: []byte("v")}))
				if err != nil {
					errs <- err
					return
				}
				revs <- resp.Msg.GetHeader().GetRevision()
			}
		})
	}
	wg.Wait()
	close(revs)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	seen := map[int64]bool{}
	for r := range revs {
		if seen[r] {
			t.Fatalf("two puts acknowledged at revision %d", r)
		}
		seen[r] = true
	}
	resp, err := c.Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("c"), Prefix: true, CountOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Msg.GetCount() != 400 {
		t.Fatalf("count = %d, want 400", resp.Msg.GetCount())
	}
}

// TestPprof: profiles are served only when asked for.
func TestPprof(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, on := range []bool{false, true} {
		n, err := Start(ctx, Config{DataDir: t.TempDir(), Listen: "127.0.0.1:0", Pprof: on})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(n.URL() + "/debug/pprof/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := map[bool]int{false: http.StatusNotFound, true: http.StatusOK}[on]; resp.StatusCode != want {
			t.Errorf("pprof %v: status %d, want %d", on, resp.StatusCode, want)
		}
		if err := n.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestForwardConnection: the node's port takes writes forwarded on a
// connection marked by the forward byte (what a follower sends to its
// leader) and applies them.
func TestForwardConnection(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n := startNode(t, ctx, t.TempDir())
	defer n.Close(ctx)

	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	// The handshake: this test speaks as a node of the same cluster.
	if err := writeHello(conn, []byte{MuxByteForward}, &peerv1.PeerHello{ClusterId: n.ClusterID(), NodeId: "test", Address: "127.0.0.1:1", HasRaftState: true}); err != nil {
		t.Fatal(err)
	}
	if h, err := readHello(conn); err != nil || h.GetRefusal() != "" {
		t.Fatalf("handshake answered %v, %v", h, err)
	}
	r := bufio.NewReader(conn)
	req, err := proto.Marshal(&peerv1.ForwardStreamRequest{Writes: []*peerv1.StreamedWrite{{Id: 7, Write: &peerv1.ForwardedWrite{
		Write: &peerv1.ForwardedWrite_Put{Put: &kvstorev1.PutRequest{Key: []byte("fwd"), Value: []byte("v")}},
	}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(append(binary.AppendUvarint(nil, uint64(len(req))), req...)); err != nil {
		t.Fatal(err)
	}
	size, err := binary.ReadUvarint(r)
	if err != nil {
		t.Fatalf("no answer to the write: %v", err)
	}
	buf := make([]byte, size)
	if _, err := io.ReadFull(r, buf); err != nil {
		t.Fatal(err)
	}
	var resp peerv1.ForwardStreamResponse
	if err := proto.Unmarshal(buf, &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.GetResults()) != 1 || resp.GetResults()[0].GetId() != 7 || resp.GetResults()[0].GetResult().GetPut() == nil {
		t.Fatalf("answer %v, want the put's result for write 7", &resp)
	}
	got, err := kvClient(n).Range(ctx, connect.NewRequest(&kvstorev1.RangeRequest{Key: []byte("fwd")}))
	if err != nil {
		t.Fatal(err)
	}
	if kvs := got.Msg.GetKvs(); len(kvs) != 1 || string(kvs[0].GetValue()) != "v" {
		t.Fatalf("after the forwarded put, fwd holds %v", kvs)
	}
}

// TestWildcardListenAdvertisesInterfaceAddress: a node listening on
// 0.0.0.0 with no --advertise advertises an address of this host that
// others can dial (the private one go-sockaddr picks, as Consul does), not
// loopback; --advertise still wins.
func TestWildcardListenAdvertisesInterfaceAddress(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want, err := interfaceIP()
	if err != nil {
		t.Fatal(err)
	}
	if want == nil {
		t.Skip("no interface of this host has a private or public address")
	}
	if want.IsLoopback() || want.IsLinkLocalUnicast() {
		t.Fatalf("interfaceIP() = %s, want neither loopback nor link-local", want)
	}
	cfg := testConfig(t.TempDir())
	cfg.Listen = "0.0.0.0:0"
	n := startConfig(t, ctx, cfg)
	defer n.Close(context.Background())
	host, _, err := net.SplitHostPort(n.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if !net.ParseIP(host).Equal(want) {
		t.Fatalf("advertised %s, want host %s", n.Addr(), want)
	}
	if _, err := kvClient(n).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
		t.Fatalf("put through the advertised address %s: %v", n.Addr(), err)
	}
	if err := n.Close(ctx); err != nil {
		t.Fatal(err)
	}

	cfg.Advertise = "127.0.0.1:7"
	a, err := advertiseAddr(cfg.Advertise, &net.TCPAddr{IP: net.IPv4zero, Port: 9}, slog.New(slog.DiscardHandler))
	if err != nil || a.String() != "127.0.0.1:7" {
		t.Fatalf("with --advertise: %v, %v; want 127.0.0.1:7", a, err)
	}
}

// TestClusterComesBackOnSwappedAddresses stops a three-node cluster and
// starts every node again on another node's old address, as containers
// restarted together get their addresses back in another order. Raft's
// configuration still names the old addresses; the nodes must dial each
// other where gossip finds them, elect a leader and serve the data.
// Dialling the configuration's addresses, a candidate asked itself for
// the vote of the node whose address it now had, and no leader lasted: the
// cluster of five containers never came back from a power cut.
func TestClusterComesBackOnSwappedAddresses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const n = 3
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	dirs := make([]string, n)
	for i := range dirs {
		dirs[i] = t.TempDir()
	}
	startAll := func(listen func(i int) string) []*Node {
		nodes := make([]*Node, n)
		errs := make(chan error, n)
		for i := range n {
			go func() {
				cfg := testConfig(dirs[i])
				cfg.Name = "n" + strconv.Itoa(i)
				cfg.Listen = listen(i)
				cfg.Join = addrs
				cfg.BootstrapExpect = n
				cfg.FastGossip = true
				cfg.HeartbeatTimeout, cfg.ElectionTimeout = 500*time.Millisecond, 500*time.Millisecond
				cfg.ReconcileInterval = 200 * time.Millisecond
				nd, err := Start(ctx, cfg)
				nodes[i] = nd
				errs <- err
			}()
		}
		for range n {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		for _, nd := range nodes {
			t.Cleanup(func() { nd.Close(context.Background()) })
		}
		return nodes
	}

	nodes := startAll(func(i int) string { return addrs[i] })
	for _, nd := range nodes {
		if err := nd.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := kvClient(nodes[0]).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k"), Value: []byte("v")})); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		if err := nd.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}

	// Node i comes back on the old address of node i+1.
	nodes = startAll(func(i int) string { return addrs[(i+1)%n] })
	for _, nd := range nodes {
		for {
			gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
			got, err := kvClient(nd).Get(gctx, connect.NewRequest(&kvstorev1.GetRequest{Key: []byte("k")}))
			gcancel()
			if err == nil && string(got.Msg.GetKv().GetValue()) == "v" {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%s after the addresses were swapped: %v, %v", nd.ID(), got, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if _, err := kvClient(nodes[1]).Put(ctx, connect.NewRequest(&kvstorev1.PutRequest{Key: []byte("k2"), Value: []byte("v")})); err != nil {
		t.Fatalf("a write after the addresses were swapped: %v", err)
	}
}
