package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	peerv1 "github.com/kvstore/kvstore/proto/kvstore/peer/v1"
	kvstorev1 "github.com/kvstore/kvstore/proto/kvstore/v1"
)

// Writes that reach a follower go on to the leader over one long-lived
// forward stream per leader, on a connection of its own (forwardconn.go):
// each write is sent as soon as it arrives, batched only with the writes
// that arrived while the last message was being sent, and each answer
// comes back as soon as its own write is applied, so the leader's raft
// sees every client's write at once and batches them into its log
// appends. This is the only way writes are forwarded in batches; other
// writes go to the leader's KV service as forwarded calls (peers.go).
const (
	// forwardMaxWrites and forwardMaxBytes bound one message.
	forwardMaxWrites = 256
	forwardMaxBytes  = 1 << 20
	// forwardMaxItemBytes: larger writes go to the leader's KV service as
	// calls of their own.
	forwardMaxItemBytes = 64 << 10
	// forwardReadMaxBytes is the leader's read limit for one message.
	forwardReadMaxBytes = 2*forwardMaxBytes + forwardMaxItemBytes
	// forwardIdle closes a stream that carried nothing for this long.
	forwardIdle = 30 * time.Second
	// forwardStreamInflight bounds the writes of one stream that the
	// leader works on at once; past it, it stops reading the stream.
	forwardStreamInflight = 4096
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
	// unsent: the write never left this node, so it can be sent again
	// (to whichever node leads by then).
	unsent bool
}

// forwarder carries writes to the leader at one address over one stream,
// opened when the first write comes and closed after forwardIdle without
// any.
type forwarder struct {
	p    *Peers
	addr string
	wake chan struct{} // cap 1: the queue grew
	idle time.Duration // forwardIdle; tests shorten it

	mu      sync.Mutex
	queue   []*fwdItem          // not sent yet
	pending map[uint64]*fwdItem // sent on the open stream, not answered yet
	nextID  uint64
	running bool // run is serving the queue
}

func (p *Peers) forwarder(addr string) *forwarder {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, ok := p.fwd[addr]
	if !ok {
		f = &forwarder{
			p:       p,
			addr:    addr,
			wake:    make(chan struct{}, 1),
			idle:    forwardIdle,
			pending: make(map[uint64]*fwdItem),
		}
		p.fwd[addr] = f
	}
	return f
}

// ForwardedWrites is how many writes this node has forwarded to the
// leader since it started.
func (p *Peers) ForwardedWrites() uint64 { return p.forwarded.Load() }

// do queues w and waits for its result or ctx.
func (f *forwarder) do(ctx context.Context, w *peerv1.ForwardedWrite) fwdDone {
	if f.p.dialForward == nil {
		return fwdDone{err: connect.NewError(connect.CodeInternal, errors.New("this node cannot forward writes: PeerOptions.DialForward is nil"))}
	}
	f.p.forwarded.Add(1)
	it := &fwdItem{w: w, size: proto.Size(w), done: make(chan fwdDone, 1)}
	if dl, ok := ctx.Deadline(); ok {
		it.deadline = dl
	}
	f.mu.Lock()
	if !f.running {
		if !f.p.startStream() {
			f.mu.Unlock()
			return fwdDone{err: connect.NewError(connect.CodeUnavailable, errors.New("the node is shutting down")), unsent: true}
		}
		f.running = true
		go func() {
			defer f.p.streams.Done()
			f.run()
		}()
	}
	f.queue = append(f.queue, it)
	f.mu.Unlock()
	select {
	case f.wake <- struct{}{}:
	default:
	}
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

// run opens streams while writes wait for one.
func (f *forwarder) run() {
	for {
		err := shared(f.stream())
		f.mu.Lock()
		if err != nil {
			for id, it := range f.pending {
				delete(f.pending, id)
				it.done <- fwdDone{err: err}
			}
			for _, it := range f.queue {
				it.done <- fwdDone{err: err, unsent: true}
			}
			f.queue = nil
		}
		if len(f.queue) == 0 {
			f.running = false
			f.mu.Unlock()
			return
		}
		f.mu.Unlock()
	}
}

// stream serves the queue over one stream until it has been idle for
// f.idle (nil) or fails.
func (f *forwarder) stream() error {
	ctx, cancel := context.WithCancel(f.p.closed)
	defer cancel()
	st, err := dialForwardConn(ctx, f.p.dialForward, f.addr)
	if err != nil {
		return err
	}
	// End our side on every way out, before cancel closes the connection,
	// so that the leader answers what it read.
	defer func() { _ = st.CloseRequest() }()
	received := make(chan error, 1)
	go func() { received <- f.receive(st) }()
	// failed ends the stream and returns why, once the receiver is done.
	failed := func(err error) error {
		if errors.Is(err, io.EOF) {
			// Send says only that the stream ended; Receive says why.
			err = <-received
		} else {
			_ = st.CloseRequest() // see above
			cancel()
			<-received
		}
		if err == nil || errors.Is(err, io.EOF) {
			err = connect.NewError(connect.CodeUnavailable, errors.New("the leader ended the forward stream"))
		}
		return err
	}
	idle := time.NewTimer(f.idle)
	defer idle.Stop()
	for {
		// Let the handlers that are ready to queue a write do so first:
		// one message for several writes costs one write(2) instead of
		// several, on both nodes.
		runtime.Gosched()
		if msg := f.take(); msg != nil {
			if err := st.Send(msg); err != nil {
				return failed(err)
			}
			idle.Reset(f.idle)
			continue
		}
		select {
		case <-f.wake:
		case <-ctx.Done(): // the node is shutting down (Peers.Close)
			return failed(ctx.Err())
		case err := <-received:
			received <- err
			return failed(io.EOF)
		case <-idle.C:
			f.mu.Lock()
			quiet := len(f.pending) == 0 && len(f.queue) == 0
			f.mu.Unlock()
			if !quiet {
				idle.Reset(f.idle)
				continue
			}
			_ = st.CloseRequest()
			if err := <-received; err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			return nil
		}
	}
}

// take moves the writes at the head of the queue to pending and returns
// them as one message, or nil when the queue is empty.
func (f *forwarder) take() *peerv1.ForwardStreamRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	var msg *peerv1.ForwardStreamRequest
	size := 0
	for len(f.queue) > 0 && (msg == nil || len(msg.Writes) < forwardMaxWrites && size+f.queue[0].size <= forwardMaxBytes) {
		it := f.queue[0]
		f.queue[0] = nil
		f.queue = f.queue[1:]
		if !it.deadline.IsZero() {
			left := it.deadline.Sub(now)
			if left <= 0 {
				// Its caller gave up already; the leader need not try.
				it.done <- fwdDone{err: connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)}
				continue
			}
			// The leader's time starts when it reads the write.
			it.w.TimeoutMs = max(1, left.Milliseconds())
		}
		if msg == nil {
			msg = &peerv1.ForwardStreamRequest{}
		}
		f.nextID++
		f.pending[f.nextID] = it
		msg.Writes = append(msg.Writes, &peerv1.StreamedWrite{Id: f.nextID, Write: it.w})
		size += it.size
	}
	if len(f.queue) == 0 {
		f.queue = nil // let the backing array go
	}
	return msg
}

// receive hands each result on st to its write until st ends.
func (f *forwarder) receive(st *connStream) error {
	for {
		msg, err := st.Receive()
		if err != nil {
			return err
		}
		f.mu.Lock()
		for _, r := range msg.GetResults() {
			if it, ok := f.pending[r.GetId()]; ok {
				delete(f.pending, r.GetId())
				it.done <- fwdDone{res: r.GetResult()}
			}
		}
		f.mu.Unlock()
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
	markUndialed(out, err)
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

// peerWriteService is the leader's side of forwarded writes: each write
// runs through the KV service as a forwarded request, all at once, so that
// raft puts them in shared log appends.
type peerWriteService struct {
	kv *kvService
	// timeout bounds a streamed write that came with none: the stream
	// itself has no deadline.
	timeout time.Duration
	// closing ends the streams when the node shuts down (nil: never), as
	// it ends watches: a stream never ends by itself while writes come,
	// and the servers' graceful stops wait for every stream.
	closing context.Context
}

// serveStream applies each write read from recv at once, and sends each
// result as soon as it is ready, with those ready at the same time
// (ForwardServer carries them). When the follower closes its side, the
// writes already read are finished and answered before the stream ends.
func (p *peerWriteService) serveStream(ctx context.Context, by string,
	recv func() (*peerv1.ForwardStreamRequest, error), send func(*peerv1.ForwardStreamResponse) error,
) error {
	if by == "" {
		by = "unknown"
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	results := make(chan *peerv1.StreamedResult, forwardMaxWrites)
	sent := make(chan error, 1)
	go func() { sent <- sendResults(results, send, cancel) }()

	// recv blocks until the follower sends or ends the stream: read in a
	// goroutine of its own, so that a shutdown can end the stream too.
	msgs := make(chan *peerv1.ForwardStreamRequest)
	recvErr := make(chan error, 1)
	go func() {
		for {
			msg, err := recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case msgs <- msg:
			case <-ctx.Done():
				return
			}
		}
	}()
	var closing <-chan struct{}
	if p.closing != nil {
		closing = p.closing.Done()
	}

	sem := make(chan struct{}, forwardStreamInflight)
	var wg sync.WaitGroup
	var err error
read:
	for {
		var msg *peerv1.ForwardStreamRequest
		select {
		case msg = <-msgs:
		case err = <-recvErr:
			break read
		case <-closing:
			// Answer the writes already read, then end the stream: the
			// follower sends the others to the next leader.
			err = io.EOF
			break read
		case <-ctx.Done(): // a send failed
			err = ctx.Err()
			break read
		}
		for _, w := range msg.GetWrites() {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				err = ctx.Err()
				break read
			}
			wg.Go(func() {
				defer func() { <-sem }()
				fw := w.GetWrite()
				if fw.GetTimeoutMs() <= 0 {
					fw.TimeoutMs = max(1, p.timeout.Milliseconds())
				}
				r := &peerv1.StreamedResult{Id: w.GetId(), Result: p.apply(ctx, by, fw)}
				select {
				case results <- r:
				case <-ctx.Done():
				}
			})
		}
	}
	if !errors.Is(err, io.EOF) {
		// The stream broke: the follower fails its writes itself.
		cancel()
	}
	wg.Wait()
	close(results)
	if serr := <-sent; serr != nil {
		return serr
	}
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// sendResults sends results, as many per message as are ready, until the
// channel closes or a send fails (then cancel stops the writers).
func sendResults(results <-chan *peerv1.StreamedResult, send func(*peerv1.ForwardStreamResponse) error, cancel context.CancelFunc) error {
	for r := range results {
		// As in forwarder.stream: the writes of one raft batch finish
		// together; let them all queue their results first.
		runtime.Gosched()
		msg := &peerv1.ForwardStreamResponse{Results: []*peerv1.StreamedResult{r}}
	more:
		for len(msg.Results) < forwardMaxWrites {
			select {
			case r, ok := <-results:
				if !ok {
					break more
				}
				msg.Results = append(msg.Results, r)
			default:
				break more
			}
		}
		if err := send(msg); err != nil {
			cancel()
			for range results {
			}
			return err
		}
	}
	return nil
}

// apply carries out one forwarded write. It came on the forward path,
// which only nodes of the cluster reach (its handshake, and with TLS a
// peer certificate): the caller is a peer, and the client it forwards for
// is checked again by the handlers (w.User).
func (p *peerWriteService) apply(ctx context.Context, by string, w *peerv1.ForwardedWrite) *peerv1.ForwardResult {
	ctx = withCaller(ctx, caller{peer: true})
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
		if resp, err = p.kv.Put(ctx, forwardedReq(x.Put, by, w.GetUser())); err == nil {
			res.Result = &peerv1.ForwardResult_Put{Put: resp.Msg}
		}
	case *peerv1.ForwardedWrite_Delete:
		var resp *connect.Response[kvstorev1.DeleteResponse]
		if resp, err = p.kv.Delete(ctx, forwardedReq(x.Delete, by, w.GetUser())); err == nil {
			res.Result = &peerv1.ForwardResult_Delete{Delete: resp.Msg}
		}
	case *peerv1.ForwardedWrite_Txn:
		var resp *connect.Response[kvstorev1.TxnResponse]
		if resp, err = p.kv.Txn(ctx, forwardedReq(x.Txn, by, w.GetUser())); err == nil {
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

func forwardedReq[T any](msg *T, by, user string) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set(forwardedHeader, by)
	if user != "" {
		r.Header().Set(forwardedUserHeader, user)
	}
	return r
}
