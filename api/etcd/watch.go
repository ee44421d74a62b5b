package etcd

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
	"github.com/kvstore/kvstore/storage"
)

const (
	// maxWatchesPerStream bounds the watches one stream may hold.
	maxWatchesPerStream = 100_000
	// ctrlBuffer is how many requests the receiver may queue ahead of the
	// sender; past it the receiver waits, and the client's sends with it.
	ctrlBuffer = 256
	// pollRounds is how many Next calls one watch gets per turn before
	// the others get theirs.
	pollRounds = 4
)

// invalidWatchID answers a watch that could not be created and a progress
// request, as etcd's clientv3.InvalidWatchID.
const invalidWatchID = -1

var errClosing = status.Error(codes.Unavailable, "kvstore: the node is shutting down; resume the watch on another node")

type watchServer struct{ f *face }

var _ pb.WatchServer = watchServer{}

// done is a context that has ended: Next with it only takes what is there.
var done = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// watchStream is one Watch stream: a receiver goroutine hands requests to
// the sender goroutine (the handler's), which alone creates, polls, sends
// and cancels watches. Watchers only mark themselves ready.
type watchStream struct {
	f      *face
	stream pb.Watch_WatchServer
	ctx    context.Context
	ctrl   chan *pb.WatchRequest
	wakeCh chan struct{}

	mu    sync.Mutex
	ready []*watch // watches that may have something, under mu

	// requireLeader: the client asked (etcd's "hasleader" metadata) that
	// the stream end when this node knows no leader.
	requireLeader bool

	// The sender's own.
	watches  map[int64]*watch
	nextID   int64
	progress bool // a progress request waits for every watch to catch up
	spare    []*watch
}

// watch is one watch of a stream, kept small: a stream may hold tens of
// thousands.
type watch struct {
	s                                                 *watchStream
	w                                                 *storage.Watcher
	id                                                int64
	queued                                            atomic.Bool // in s.ready
	noPut, noDelete, prevKV, fragment, progressNotify bool
	// sent is set when the watch sent something since the last progress
	// tick.
	sent bool
	// moved is set once another raft group took the watched keys over;
	// stopMoved ends that wait.
	moved     atomic.Bool
	stopMoved func()
}

func (w *watch) wake() {
	if w.queued.Swap(true) {
		return
	}
	s := w.s
	s.mu.Lock()
	s.ready = append(s.ready, w)
	s.mu.Unlock()
	select {
	case s.wakeCh <- struct{}{}:
	default:
	}
}

func (ws watchServer) Watch(stream pb.Watch_WatchServer) error {
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	if c := ws.f.sv.Closing; c != nil {
		stop := context.AfterFunc(c, func() { cancel(errClosing) })
		defer stop()
	}
	s := &watchStream{
		f:       ws.f,
		stream:  stream,
		ctx:     ctx,
		ctrl:    make(chan *pb.WatchRequest, ctrlBuffer),
		wakeCh:  make(chan struct{}, 1),
		watches: make(map[int64]*watch),
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		v := md.Get(rpctypes.MetadataRequireLeaderKey)
		s.requireLeader = len(v) > 0 && v[0] == rpctypes.MetadataHasLeader
	}
	if s.requireLeader && !ws.f.hasLeader(ctx) {
		return rpctypes.ErrGRPCNoLeader
	}
	defer s.closeAll()
	go s.receive(cancel)
	err := s.send()
	if cause := context.Cause(ctx); errors.Is(cause, errClosing) {
		return errClosing
	}
	return err
}

// receive reads requests until the stream ends.
func (s *watchStream) receive(cancel context.CancelCauseFunc) {
	for {
		req, err := s.stream.Recv()
		if err != nil {
			cancel(err)
			return
		}
		select {
		case s.ctrl <- req:
		case <-s.ctx.Done():
			return
		}
	}
}

func (s *watchStream) closeAll() {
	for _, w := range s.watches {
		w.w.Close()
		if w.stopMoved != nil {
			w.stopMoved()
		}
	}
}

// errRangeMoved cancels a watch whose keys another raft group took over:
// the client watches again, from the next revision, where they are now.
var errRangeMoved = errors.New("kvstore: the watched keys moved to another raft group; watch again from the next revision")

func (s *watchStream) send() error {
	tick := time.NewTicker(s.f.opts.ProgressNotifyInterval)
	defer tick.Stop()
	var leaderTick <-chan time.Time
	if s.requireLeader {
		t := time.NewTicker(s.f.opts.LeaderCheck)
		defer t.Stop()
		leaderTick = t.C
	}
	for {
		var err error
		select {
		case <-s.ctx.Done():
			return nil
		case <-leaderTick:
			if !s.f.hasLeader(s.ctx) {
				return rpctypes.ErrGRPCNoLeader
			}
		case req := <-s.ctrl:
			err = s.handle(req)
		case <-s.wakeCh:
			err = s.poll()
		case <-tick.C:
			err = s.progressNotify()
		}
		if err == nil && s.progress {
			err = s.tryProgress()
		}
		if err != nil {
			return err
		}
	}
}

func (s *watchStream) handle(req *pb.WatchRequest) error {
	switch r := req.RequestUnion.(type) {
	case *pb.WatchRequest_CreateRequest:
		return s.create(r.CreateRequest)
	case *pb.WatchRequest_CancelRequest:
		w, ok := s.watches[r.CancelRequest.GetWatchId()]
		if !ok {
			return nil // as etcd: nothing to say
		}
		s.drop(w)
		return s.stream.Send(&pb.WatchResponse{Header: s.f.now(s.ctx), WatchId: w.id, Canceled: true})
	case *pb.WatchRequest_ProgressRequest:
		s.progress = true
	}
	return nil
}

func (s *watchStream) drop(w *watch) {
	delete(s.watches, w.id)
	w.w.Close()
	if w.stopMoved != nil {
		w.stopMoved()
	}
}

func (s *watchStream) create(c *pb.WatchCreateRequest) error {
	if c == nil {
		return nil
	}
	key, end := c.Key, c.RangeEnd
	if len(key) == 0 {
		key = []byte{0} // as etcd: the smallest key
	}
	req := &kvstorev1.WatchRequest{Key: key, RangeEnd: end, StartRevision: c.StartRevision, PrevKv: c.PrevKv}
	w := &watch{s: s, prevKV: c.PrevKv, fragment: c.Fragment, progressNotify: c.ProgressNotify}
	for _, f := range c.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			w.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			w.noDelete = true
		}
	}
	refuse := func(reason string) error {
		return s.stream.Send(&pb.WatchResponse{Header: s.f.now(s.ctx), WatchId: invalidWatchID, Created: true, Canceled: true, CancelReason: reason})
	}
	if err := s.f.sv.CheckWatch(s.ctx, req); err != nil {
		return refuse(status.Convert(etcdError(err)).Message())
	}
	if len(s.watches) >= maxWatchesPerStream {
		return refuse("kvstore: too many watches on one stream; open another stream")
	}
	id := c.WatchId
	if id != 0 {
		if _, used := s.watches[id]; used || id < 0 {
			return refuse("mvcc: duplicate watch ID provided on the WatchStream")
		}
	} else {
		for {
			id = s.nextID
			s.nextID++
			if _, used := s.watches[id]; !used {
				break
			}
		}
	}
	w.id = id
	ws, err := s.f.sv.WatchStore(req)
	if err != nil {
		return refuse(status.Convert(etcdError(err)).Message())
	}
	sw, err := ws.Watch(storage.WatchSpec{
		Key: key, End: end, StartRev: uint64(max(c.StartRevision, 0)), PrevKV: c.PrevKv, Wake: w.wake,
	})
	var cerr *storage.CompactedError
	if errors.As(err, &cerr) {
		// As etcd: created, then cancelled with the compacted revision.
		if err := s.stream.Send(&pb.WatchResponse{Header: s.f.now(s.ctx), WatchId: id, Created: true}); err != nil {
			return err
		}
		return s.stream.Send(&pb.WatchResponse{Header: s.f.now(s.ctx), WatchId: id, Canceled: true, CompactRevision: int64(cerr.Compacted)})
	}
	if err != nil {
		return refuse(status.Convert(etcdError(err)).Message())
	}
	w.w = sw
	w.stopMoved = s.f.sv.OnMove(req, func() {
		w.moved.Store(true)
		w.wake()
	})
	s.watches[id] = w
	h := s.f.header(sw.StartedAt())
	if c.StartRevision > 0 {
		h = s.f.now(s.ctx)
	}
	if err := s.stream.Send(&pb.WatchResponse{Header: h, WatchId: id, Created: true}); err != nil {
		return err
	}
	if c.StartRevision > 0 {
		w.wake() // history to catch up on
	}
	return nil
}

// poll takes what the ready watches have and sends it.
func (s *watchStream) poll() error {
	s.mu.Lock()
	batch := s.ready
	s.ready = s.spare[:0]
	s.mu.Unlock()
	defer func() { s.spare = batch[:0] }()
	for _, w := range batch {
		w.queued.Store(false)
		if s.watches[w.id] != w {
			continue // cancelled meanwhile
		}
		if err := s.pollOne(w); err != nil {
			return err
		}
	}
	return nil
}

func (s *watchStream) pollOne(w *watch) error {
	for range pollRounds {
		if err := w.w.Err(); err != nil {
			return s.ended(w, err)
		}
		if w.moved.Load() {
			return s.ended(w, errRangeMoved)
		}
		evs, covered, err := w.w.Next(done)
		if errors.Is(err, context.Canceled) {
			return nil // nothing more for now
		}
		if err != nil {
			return s.ended(w, err)
		}
		if err := s.sendEvents(w, evs, covered); err != nil {
			return err
		}
	}
	w.wake() // more may wait: after the others
	return nil
}

// ended answers a watch the store cancelled.
func (s *watchStream) ended(w *watch, err error) error {
	s.drop(w)
	resp := &pb.WatchResponse{Header: s.f.now(s.ctx), WatchId: w.id, Canceled: true}
	var cerr *storage.CompactedError
	if errors.As(err, &cerr) {
		resp.CompactRevision = int64(cerr.Compacted)
	} else {
		resp.CancelReason = err.Error()
	}
	return s.stream.Send(resp)
}

func (s *watchStream) sendEvents(w *watch, evs []storage.Event, covered uint64) error {
	resp := &pb.WatchResponse{Header: s.f.header(covered), WatchId: w.id}
	for i := range evs {
		e := &evs[i]
		ev := &mvccpb.Event{Kv: kvOf(e.KV)}
		switch e.Type {
		case storage.EventPut:
			if w.noPut {
				continue
			}
			ev.Type = mvccpb.PUT
		case storage.EventDelete:
			if w.noDelete {
				continue
			}
			ev.Type = mvccpb.DELETE
		default:
			continue
		}
		if w.prevKV && e.HasPrev {
			ev.PrevKv = kvOf(e.Prev)
		}
		resp.Events = append(resp.Events, ev)
	}
	if len(resp.Events) == 0 {
		return nil
	}
	w.sent = true
	limit := s.f.sv.Limits.MaxRequestBytes
	if !w.fragment || resp.Size() <= limit {
		return s.stream.Send(resp)
	}
	// As etcd: events split over responses of at most the request limit
	// (one event at least), all but the last marked fragment.
	evsAll := resp.Events
	for len(evsAll) > 0 {
		part := &pb.WatchResponse{Header: resp.Header, WatchId: w.id}
		size := 0
		n := 0
		for n < len(evsAll) && (n == 0 || size+evsAll[n].Size() <= limit) {
			size += evsAll[n].Size()
			n++
		}
		part.Events, evsAll = evsAll[:n], evsAll[n:]
		part.Fragment = len(evsAll) > 0
		if err := s.stream.Send(part); err != nil {
			return err
		}
	}
	return nil
}

func kvOf(kv storage.KeyValue) *mvccpb.KeyValue {
	return &mvccpb.KeyValue{Key: kv.Key, Value: kv.Value, CreateRevision: kv.CreateRevision, ModRevision: kv.ModRevision, Version: kv.Version, Lease: kv.Lease}
}

// tryProgress answers a progress request once every watch has sent all it
// has: then the revision it names is one all of them have reached.
func (s *watchStream) tryProgress() error {
	rev := uint64(0)
	for _, w := range s.watches {
		r, ok := w.w.Progress()
		if !ok {
			return nil // some watch has more to send first: it is ready
		}
		if rev == 0 || r < rev {
			rev = r
		}
	}
	s.progress = false
	h := s.f.now(s.ctx)
	if len(s.watches) > 0 {
		h = s.f.header(rev)
	}
	return s.stream.Send(&pb.WatchResponse{Header: h, WatchId: invalidWatchID})
}

// progressNotify tells each idle watch created with progress_notify the
// revision it has reached.
func (s *watchStream) progressNotify() error {
	for _, w := range s.watches {
		if !w.progressNotify {
			continue
		}
		if w.sent {
			w.sent = false
			continue
		}
		if rev, ok := w.w.Progress(); ok {
			if err := s.stream.Send(&pb.WatchResponse{Header: s.f.header(rev), WatchId: w.id}); err != nil {
				return err
			}
		}
	}
	return nil
}
