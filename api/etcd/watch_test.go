package etcd_test

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/metadata"

	"github.com/kvstore/kvstore/node"
	"github.com/kvstore/kvstore/node/nodetest"
)

// watcher is one Watch stream and what it received.
type watcher struct {
	t      testing.TB
	ctx    context.Context
	stream pb.Watch_WatchClient
	in     chan *pb.WatchResponse
}

func openWatch(t testing.TB, ctx context.Context, e clients) *watcher {
	t.Helper()
	stream, err := e.watch.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{t: t, ctx: ctx, stream: stream, in: make(chan *pb.WatchResponse, 1024)}
	go func() {
		defer close(w.in)
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case w.in <- resp:
			case <-ctx.Done():
				return
			}
		}
	}()
	return w
}

func (w *watcher) send(req *pb.WatchRequest) {
	w.t.Helper()
	if err := w.stream.Send(req); err != nil {
		w.t.Fatal(err)
	}
}

func (w *watcher) create(c *pb.WatchCreateRequest) int64 {
	w.t.Helper()
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: c}})
	resp := w.next()
	if !resp.Created || resp.Canceled {
		w.t.Fatalf("create %v: %v", c, resp)
	}
	return resp.WatchId
}

func (w *watcher) next() *pb.WatchResponse {
	w.t.Helper()
	select {
	case resp, ok := <-w.in:
		if !ok {
			w.t.Fatal("watch stream ended")
		}
		return resp
	case <-w.ctx.Done():
		w.t.Fatal("no watch response before the deadline")
	}
	return nil
}

// quiet checks that nothing arrives while a progress request goes round.
func (w *watcher) quiet() *pb.WatchResponse {
	w.t.Helper()
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}})
	resp := w.next()
	if resp.WatchId != -1 || len(resp.Events) > 0 || resp.Created || resp.Canceled {
		w.t.Fatalf("want the progress response, got %v", resp)
	}
	return resp
}

func evString(evs []*mvccpb.Event) string {
	var out []string
	for _, ev := range evs {
		s := fmt.Sprintf("%s %s=%s", ev.Type, ev.Kv.Key, ev.Kv.Value)
		if ev.PrevKv != nil {
			s += " prev " + string(ev.PrevKv.Value)
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

func TestWatch(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t)
	first := put(t, ctx, e.kv, "a", "0").Header.Revision
	w := openWatch(t, ctx, e)
	wa := w.create(&pb.WatchCreateRequest{Key: []byte("a")})
	wp := w.create(&pb.WatchCreateRequest{Key: []byte("p"), RangeEnd: []byte("q"), PrevKv: true})
	wd := w.create(&pb.WatchCreateRequest{Key: []byte{0}, RangeEnd: []byte{0}, Filters: []pb.WatchCreateRequest_FilterType{pb.WatchCreateRequest_NOPUT}})
	if wa == wp || wp == wd || wa == wd {
		t.Fatalf("ids %d %d %d", wa, wp, wd)
	}
	put(t, ctx, e.kv, "a", "1")
	put(t, ctx, e.kv, "p1", "x")
	put(t, ctx, e.kv, "p1", "y")
	if _, err := e.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("p1")}); err != nil {
		t.Fatal(err)
	}
	got := map[int64][]string{}
	var lastRev int64
	for len(got[wa])+len(got[wp])+len(got[wd]) < 5 {
		resp := w.next()
		if resp.Header.Revision < lastRev {
			t.Fatalf("header revision went back: %v", resp)
		}
		lastRev = resp.Header.Revision
		for _, ev := range resp.Events {
			got[resp.WatchId] = append(got[resp.WatchId], evString([]*mvccpb.Event{ev}))
		}
	}
	want := map[int64]string{
		wa: "PUT a=1",
		wp: "PUT p1=x | PUT p1=y prev x | DELETE p1= prev y",
		wd: "DELETE p1=",
	}
	for id, evs := range want {
		if s := strings.Join(got[id], " | "); s != evs {
			t.Fatalf("watch %d: %q, want %q", id, s, evs)
		}
	}
	if p := w.quiet(); p.Header.Revision < lastRev {
		t.Fatalf("progress at %d, before the last event %d", p.Header.Revision, lastRev)
	}

	// Cancel: answered, and the watch hears no more.
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CancelRequest{CancelRequest: &pb.WatchCancelRequest{WatchId: wa}}})
	if resp := w.next(); resp.WatchId != wa || !resp.Canceled {
		t.Fatalf("cancel: %v", resp)
	}
	put(t, ctx, e.kv, "a", "2")
	w.quiet()

	// From a past revision, with the history first.
	wh := w.create(&pb.WatchCreateRequest{Key: []byte("a"), StartRevision: first, PrevKv: true})
	var hist []string
	for len(hist) < 3 {
		resp := w.next()
		if resp.WatchId != wh {
			t.Fatalf("%v", resp)
		}
		for _, ev := range resp.Events {
			hist = append(hist, evString([]*mvccpb.Event{ev}))
		}
	}
	if s := strings.Join(hist, " | "); s != "PUT a=0 | PUT a=1 prev 0 | PUT a=2 prev 1" {
		t.Fatalf("history %q", s)
	}

	// A watch id of the client's choosing, once.
	if id := w.create(&pb.WatchCreateRequest{Key: []byte("x"), WatchId: 100}); id != 100 {
		t.Fatalf("id %d", id)
	}
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("y"), WatchId: 100}}})
	if resp := w.next(); !resp.Created || !resp.Canceled || resp.WatchId != -1 || resp.CancelReason == "" {
		t.Fatalf("duplicate id: %v", resp)
	}

	// Below the compacted revision: created, then cancelled with it.
	last := put(t, ctx, e.kv, "a", "3").Header.Revision
	if resp := w.next(); resp.WatchId != wh || evString(resp.Events) != "PUT a=3 prev 2" {
		t.Fatalf("%v", resp)
	}
	if _, err := e.kv.Compact(ctx, &pb.CompactionRequest{Revision: last}); err != nil {
		t.Fatal(err)
	}
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("a"), StartRevision: first}}})
	created := w.next()
	if !created.Created || created.Canceled {
		t.Fatalf("%v", created)
	}
	if resp := w.next(); resp.WatchId != created.WatchId || !resp.Canceled || resp.CompactRevision != last {
		t.Fatalf("compacted: %v", resp)
	}
	// An invalid watch is refused on its own; the stream goes on.
	w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("b"), RangeEnd: []byte("a")}}})
	if resp := w.next(); !resp.Created || !resp.Canceled || resp.CancelReason == "" {
		t.Fatalf("bad range: %v", resp)
	}
	w.quiet()
}

// Events over the request limit go out in fragments when asked.
func TestWatchFragment(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t, nodetest.WithConfig(func(_ string, cfg *node.Config) {
		cfg.Limits.MaxRequestBytes = 64 << 10
		cfg.Limits.MaxValueBytes = 16 << 10
	}))
	big := strings.Repeat("v", 15<<10)
	for i := range 10 {
		put(t, ctx, e.kv, fmt.Sprintf("f%d", i), big)
	}
	w := openWatch(t, ctx, e)
	frag := w.create(&pb.WatchCreateRequest{Key: []byte("f"), RangeEnd: []byte("g"), PrevKv: true, Fragment: true})
	whole := w.create(&pb.WatchCreateRequest{Key: []byte("f"), RangeEnd: []byte("g"), PrevKv: true})
	if _, err := e.kv.DeleteRange(ctx, &pb.DeleteRangeRequest{Key: []byte("f"), RangeEnd: []byte("g")}); err != nil {
		t.Fatal(err)
	}
	var parts, fragEvents, wholeEvents int
	for fragEvents < 10 || wholeEvents < 10 {
		resp := w.next()
		switch resp.WatchId {
		case frag:
			parts++
			fragEvents += len(resp.Events)
			if resp.Fragment != (fragEvents < 10) {
				t.Fatalf("part %d with %d events so far: fragment %v", parts, fragEvents, resp.Fragment)
			}
			if resp.Size() > 64<<10+16<<10 {
				t.Fatalf("a fragment of %d bytes", resp.Size())
			}
		case whole:
			wholeEvents += len(resp.Events)
			if resp.Fragment {
				t.Fatal("fragment without asking")
			}
		}
	}
	if parts < 3 || fragEvents != 10 || wholeEvents != 10 {
		t.Fatalf("%d parts, %d and %d events", parts, fragEvents, wholeEvents)
	}
}

func TestWatchProgressNotify(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	_, e := one(t, nodetest.WithConfig(func(_ string, cfg *node.Config) { cfg.EtcdProgressNotify = 100 * time.Millisecond }))
	rev := put(t, ctx, e.kv, "n", "1").Header.Revision
	w := openWatch(t, ctx, e)
	id := w.create(&pb.WatchCreateRequest{Key: []byte("n"), ProgressNotify: true})
	w.create(&pb.WatchCreateRequest{Key: []byte("m")}) // no progress_notify: hears nothing
	resp := w.next()
	if resp.WatchId != id || len(resp.Events) != 0 || resp.Header.Revision < rev {
		t.Fatalf("%v", resp)
	}
}

// Memory per watch, 10,000 watches on one stream (both ends in this
// process: the figure includes the client's share, which is small).
func TestWatchMemoryPerWatch(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 10,000 watches")
	}
	const n = 10_000
	ctx := testCtx(t, 2*time.Minute)
	_, e := one(t)
	put(t, ctx, e.kv, "w", "0")
	w := openWatch(t, ctx, e)
	w.create(&pb.WatchCreateRequest{Key: []byte("warmup")})
	before := heap()
	for i := range n {
		w.send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte(fmt.Sprintf("w%05d", i))}}})
	}
	for range n {
		if resp := w.next(); !resp.Created || resp.Canceled {
			t.Fatalf("%v", resp)
		}
	}
	after := heap()
	per := float64(after-before) / n
	t.Logf("%d watches on one stream: %.0f bytes of heap per watch", n, per)
	// Every watch still works.
	put(t, ctx, e.kv, "w09999", "x")
	if resp := w.next(); evString(resp.Events) != "PUT w09999=x" {
		t.Fatalf("%v", resp)
	}
	if per > 4096 {
		t.Fatalf("%.0f bytes per watch; the stream's watches share one path and took about 1.3 KiB", per)
	}
}

func heap() int64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// A watch stream opened with etcd's require-leader metadata (Kubernetes
// opens its watches so) ends with "no leader" once its node is cut off
// from the others, so that the client moves to another member; one without
// it stays open.
func TestWatchRequireLeader(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	c := nodetest.NewCluster(t, 3)
	leader := c.Leader(ctx)
	if err := c.WaitMembers(ctx, 3); err != nil {
		t.Fatal(err)
	}
	var cut *nodetest.Node
	var others []string
	for _, nd := range c.Nodes() {
		if cut == nil && nd != leader {
			cut = nd
		} else {
			others = append(others, nd.Name())
		}
	}
	e := dial(t, cut.Addr())
	open := func(md bool) pb.Watch_WatchClient {
		wctx := ctx
		if md {
			wctx = metadata.AppendToOutgoingContext(ctx, rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)
		}
		stream, err := e.watch.Watch(wctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("x")}}}); err != nil {
			t.Fatal(err)
		}
		if resp, err := stream.Recv(); err != nil || !resp.Created {
			t.Fatalf("%v %v", resp, err)
		}
		return stream
	}
	required, plain := open(true), open(false)
	c.Partition([]string{cut.Name()}, others)
	defer c.Heal()
	_, err := required.Recv()
	wantErr(t, err, rpctypes.ErrGRPCNoLeader)
	// The other stream is still open: a progress request is answered.
	if err := plain.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := plain.Recv(); err != nil || resp.WatchId != -1 {
		t.Fatalf("%v %v", resp, err)
	}
}
