package api

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	"github.com/kvstore/kvstore/proto/kvstore/peer/v1/peerv1connect"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Writes that reach a follower go on to the leader in batches: a follower
// queues them per leader and keeps at most forwardInflight batch calls
// in flight, so a write waits only while that many calls are out, and
// the writes that came in meanwhile go together in the next call. One
// call per write cost the leader an HTTP/2 request, a handler and a
// flushed response each, about as much CPU as the write itself.
const (
	forwardInflight = 2
	// forwardMaxWrites and forwardMaxBytes bound one batch.
	forwardMaxWrites = 256
	forwardMaxBytes  = 1 << 20
	// forwardMaxItemBytes: larger writes are forwarded alone, the old way.
	forwardMaxItemBytes = 64 << 10
	// forwardReadMaxBytes is the leader's read limit for a batch.
	forwardReadMaxBytes = 2*forwardMaxBytes + forwardMaxItemBytes
)

// fwdItem is one write waiting in a forwarder's queue.
type fwdItem struct {
	w        *peerv1.ForwardedWrite
	size     int
	deadline time.Time // zero: none
	done     chan fwdDone
}

type fwdDone struct {
	res *peerv1.ForwardResult
	err error
	// legacy: the leader does not know the batch call; forward the write
	// on its own.
	legacy bool
}

// forwarder batches writes for the leader at one address.
type forwarder struct {
	p      *Peers
	addr   string
	client peerv1connect.PeerWriteServiceClient

	mu       sync.Mutex
	queue    []*fwdItem
	inflight int
}

func (p *Peers) forwarder(addr string) *forwarder {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, ok := p.fwd[addr]
	if !ok {
		f = &forwarder{
			p:    p,
			addr: addr,
			client: peerv1connect.NewPeerWriteServiceClient(p.hc, "http://"+addr,
				connect.WithGRPC(), connect.WithSendMaxBytes(forwardReadMaxBytes), connect.WithReadMaxBytes(64<<20)),
		}
		p.fwd[addr] = f
	}
	return f
}

// do queues w and waits for its result or ctx.
func (f *forwarder) do(ctx context.Context, w *peerv1.ForwardedWrite) fwdDone {
	it := &fwdItem{w: w, size: proto.Size(w), done: make(chan fwdDone, 1)}
	if dl, ok := ctx.Deadline(); ok {
		it.deadline = dl
		w.TimeoutMs = max(1, time.Until(dl).Milliseconds())
	}
	f.mu.Lock()
	f.queue = append(f.queue, it)
	if f.inflight < forwardInflight {
		f.inflight++
		go f.run()
	}
	f.mu.Unlock()
	select {
	case d := <-it.done:
		return d
	case <-ctx.Done():
		// The write may still be applied, as with any timeout: say so
		// with the code of a timeout, never one that invites a retry.
		code := connect.CodeDeadlineExceeded
		if errors.Is(ctx.Err(), context.Canceled) {
			code = connect.CodeCanceled
		}
		return fwdDone{err: connect.NewError(code, ctx.Err())}
	}
}

// run sends batches until the queue is empty.
func (f *forwarder) run() {
	for {
		f.mu.Lock()
		if len(f.queue) == 0 {
			f.inflight--
			f.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(f.queue) && n < forwardMaxWrites && (n == 0 || size+f.queue[n].size <= forwardMaxBytes) {
			size += f.queue[n].size
			n++
		}
		batch := make([]*fwdItem, n)
		copy(batch, f.queue)
		f.queue = f.queue[n:]
		if len(f.queue) == 0 {
			f.queue = nil // let the backing array go
		}
		f.mu.Unlock()
		f.send(batch)
	}
}

func (f *forwarder) send(batch []*fwdItem) {
	var deadline time.Time
	req := &peerv1.ForwardRequest{Writes: make([]*peerv1.ForwardedWrite, len(batch))}
	for i, it := range batch {
		req.Writes[i] = it.w
		if it.deadline.IsZero() {
			deadline = time.Now().Add(time.Minute)
		} else if it.deadline.After(deadline) {
			deadline = it.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	creq := connect.NewRequest(req)
	creq.Header().Set(forwardedHeader, f.p.self)
	resp, err := f.client.Forward(ctx, creq)
	if err == nil && len(resp.Msg.GetResults()) != len(batch) {
		err = fmt.Errorf("leader answered %d results for %d writes", len(resp.Msg.GetResults()), len(batch))
	}
	for i, it := range batch {
		switch {
		case err == nil:
			it.done <- fwdDone{res: resp.Msg.GetResults()[i]}
		case connect.CodeOf(err) == connect.CodeUnimplemented:
			it.done <- fwdDone{legacy: true}
		default:
			it.done <- fwdDone{err: err}
		}
	}
}

// batchable returns msg as a forwarded write when it goes in a batch: puts
// that want no previous value (their response is small) and are not big.
func batchable(msg any) (*peerv1.ForwardedWrite, bool) {
	put, ok := msg.(*kvstorev1.PutRequest)
	if !ok || put.GetPrevKv() || len(put.GetKey())+len(put.GetValue()) > forwardMaxItemBytes {
		return nil, false
	}
	return &peerv1.ForwardedWrite{Write: &peerv1.ForwardedWrite_Put{Put: put}}, true
}

// forwardErr is what a follower answers for a write the leader failed:
// the leader's code, message and metadata, saying it came through us.
func forwardErr(id, addr string, err error) error {
	var out *connect.Error
	if ce := new(connect.Error); errors.As(err, &ce) {
		out = connect.NewError(ce.Code(), fmt.Errorf("forwarded to the leader %s: %s", id, ce.Message()))
		for k, v := range ce.Meta() {
			out.Meta()[k] = v
		}
	} else {
		out = connect.NewError(connect.CodeUnavailable, fmt.Errorf("forward to the leader %s at %s: %w", id, addr, err))
	}
	// Fix: a leader that cannot even be dialed never saw the write: it died
	// or is going, and an election will name another. This answered
	// Unavailable at once, so for the second after a leader crash every
	// write through a follower failed. Saying "not the leader" makes the
	// request wait for the next leader (awaitLeader), and tells clients it
	// is safe to send again.
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		out.Meta().Set(notLeaderMeta, "1")
	}
	return out
}

// resultErr turns a ForwardError back into a Connect error.
func resultErr(fe *peerv1.ForwardError) *connect.Error {
	ce := connect.NewError(connect.Code(fe.GetCode()), errors.New(fe.GetMessage()))
	for _, m := range fe.GetMeta() {
		for _, v := range m.GetValues() {
			ce.Meta().Add(m.GetKey(), v)
		}
	}
	return ce
}

// peerWriteService is the leader's side of forwarded batches: each write
// runs through the KV service as a forwarded request, all at once, so that
// raft puts them in shared log appends.
type peerWriteService struct {
	kv *kvService
}

func (p *peerWriteService) Forward(ctx context.Context, creq *connect.Request[peerv1.ForwardRequest]) (*connect.Response[peerv1.ForwardResponse], error) {
	by := creq.Header().Get(forwardedHeader)
	if by == "" {
		by = "unknown"
	}
	writes := creq.Msg.GetWrites()
	results := make([]*peerv1.ForwardResult, len(writes))
	var wg sync.WaitGroup
	for i, w := range writes {
		wg.Go(func() { results[i] = p.apply(ctx, by, w) })
	}
	wg.Wait()
	return connect.NewResponse(&peerv1.ForwardResponse{Results: results}), nil
}

func (p *peerWriteService) apply(ctx context.Context, by string, w *peerv1.ForwardedWrite) *peerv1.ForwardResult {
	if ms := w.GetTimeoutMs(); ms > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond)
		defer cancel()
	}
	var res peerv1.ForwardResult
	var err error
	switch x := w.GetWrite().(type) {
	case *peerv1.ForwardedWrite_Put:
		var resp *connect.Response[kvstorev1.PutResponse]
		if resp, err = p.kv.Put(ctx, forwardedReq(x.Put, by)); err == nil {
			res.Result = &peerv1.ForwardResult_Put{Put: resp.Msg}
		}
	case *peerv1.ForwardedWrite_Delete:
		var resp *connect.Response[kvstorev1.DeleteResponse]
		if resp, err = p.kv.Delete(ctx, forwardedReq(x.Delete, by)); err == nil {
			res.Result = &peerv1.ForwardResult_Delete{Delete: resp.Msg}
		}
	case *peerv1.ForwardedWrite_Txn:
		var resp *connect.Response[kvstorev1.TxnResponse]
		if resp, err = p.kv.Txn(ctx, forwardedReq(x.Txn, by)); err == nil {
			res.Result = &peerv1.ForwardResult_Txn{Txn: resp.Msg}
		}
	default:
		err = connect.NewError(connect.CodeInvalidArgument, errors.New("forwarded write: no write"))
	}
	if err != nil {
		ce := new(connect.Error)
		if !errors.As(err, &ce) {
			ce = connect.NewError(connect.CodeUnknown, err)
		}
		fe := &peerv1.ForwardError{Code: uint32(ce.Code()), Message: ce.Message()}
		for k, vs := range ce.Meta() {
			fe.Meta = append(fe.Meta, &peerv1.ForwardErrorMeta{Key: k, Values: vs})
		}
		res.Result = &peerv1.ForwardResult_Error{Error: fe}
	}
	return &res
}

func forwardedReq[T any](msg *T, by string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set(forwardedHeader, by)
	return r
}
